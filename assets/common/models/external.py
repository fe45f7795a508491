"""Content hashes of the graph's external inputs (a local model directory, a user's eval or SFT file or saved
dataset), for observing them: the hash is recomputed only when a defining file's size or modification time changed,
so observing a multi-GB model directory every few minutes costs a few ``stat`` calls. No Dagster here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from assets.common.data.storage import sha256_file
from assets.common.models.integrity import MODEL_FILE_PATTERNS, model_content_hash


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def defining_files(path: Path) -> list[Path]:
    """The files whose bytes define ``path``: a model directory's weights, config, tokenizer and template; every file
    of another directory (e.g. a `datasets` folder written by save_to_disk); a file itself."""
    if _is_model_dir(path):
        return sorted({p for pattern in MODEL_FILE_PATTERNS for p in path.glob(pattern) if p.is_file()})
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _directory_hash(path: Path) -> str:
    """SHA-256 over (relative path, SHA-256) of every file of a directory that is not a model directory."""
    digest = hashlib.sha256()
    for file in defining_files(path):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


def stat_signature(path: Path) -> list[list]:
    return [[file.relative_to(path).as_posix() if path.is_dir() else file.name, file.stat().st_size,
             file.stat().st_mtime_ns] for file in defining_files(path)]


def content_hash(path: str | Path, cache_dir: Path) -> str:
    """SHA-256 of a model directory (``model_content_hash``) or a file, reusing the cached value while no defining
    file's size or modification time changed. Raises FileNotFoundError naming the path when it does not exist."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: external input not found (check the path in your profile, SFT_PROFILE)")
    signature = stat_signature(path)
    cache = cache_dir / f"{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("signature") == signature:
            return cached["content_hash"]
    value = (model_content_hash(path) if _is_model_dir(path) else _directory_hash(path) if path.is_dir()
             else sha256_file(path))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"path": str(path), "signature": signature, "content_hash": value}))
    tmp.replace(cache)
    return value


def combined_hash(hashes: dict[str, str]) -> str:
    """One version for several inputs: SHA-256 over their (path, hash) pairs in sorted order."""
    return hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()
