"""Atomic, content-addressed file I/O shared by every stage (no Dagster here).

Every artifact is written to a temporary file beside its destination and renamed into place, so a crash
never leaves a half-written file where a reader would find it, and an existing file is only replaced by a
complete one. Versions and directories (:func:`write_directory`) are never replaced at all. A data version is
the SHA-256 of the bytes written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_dir(path: str | os.PathLike, pattern: str = "*") -> str:
    """Hash of every file under ``path`` matching ``pattern``: names and bytes, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_target(path: Path) -> tuple[int, str]:
    """A temp file beside ``path`` (same filesystem, so the rename is atomic) with normal file permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _umask_mode())
    return fd, tmp


def _replace(tmp: str, path: Path) -> None:
    os.replace(tmp, path)
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable before anyone is told the file exists."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _parquet_temp(df: pl.DataFrame, path: Path) -> str:
    """``df`` written and synced to a temp file beside ``path``. Statistics and compression are fixed so the same
    frame always gives the same bytes."""
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        df.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_parquet_atomic(df: pl.DataFrame, path: str | os.PathLike) -> str:
    """Write ``df`` to ``path`` via temp file + rename; return the SHA-256 of the written bytes."""
    path = Path(path)
    tmp = _parquet_temp(df, path)
    try:
        content_hash = sha256_file(tmp)
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return content_hash


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> str:
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def write_json_atomic(obj: Any, path: str | os.PathLike) -> str:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline), written atomically."""
    return write_bytes_atomic(_json_bytes(obj), path)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


VERSION_CHARS = 16  # hex digits of the SHA-256 in a version's file name
CURRENT = "CURRENT"  # in every table/json folder: the file name of the current version


def _publish_version(tmp: str, folder: Path, suffix: str, pointer: str) -> tuple[Path, str]:
    """Move a complete temp file to ``folder/<sha[:16]><suffix>`` (never overwriting: identical bytes already there
    are kept) and point ``folder/<pointer>`` at it; both steps are atomic renames."""
    content_hash = sha256_file(tmp)
    path = folder / f"{content_hash[:VERSION_CHARS]}{suffix}"
    if path.exists():
        Path(tmp).unlink()
    else:
        _replace(tmp, path)
    write_bytes_atomic(f"{path.name}\n".encode(), folder / pointer)
    return path, content_hash


def write_parquet_versioned(df: pl.DataFrame, folder: str | os.PathLike, pointer: str) -> tuple[Path, str]:
    """Write ``df`` as an immutable, content-addressed version in ``folder`` and make it current.

    Returns the version's path and SHA-256. Older versions stay where they are (a model's lineage may name them).
    """
    folder = Path(folder)
    tmp = _parquet_temp(df, folder / "version.parquet")
    try:
        return _publish_version(tmp, folder, ".parquet", pointer)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_versioned(obj: Any, folder: str | os.PathLike, pointer: str) -> tuple[Path, str]:
    """Deterministic JSON (as :func:`write_json_atomic`) as an immutable version in ``folder``, made current."""
    folder = Path(folder)
    fd, tmp = _atomic_target(folder / "version.json")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_json_bytes(obj))
            handle.flush()
            os.fsync(handle.fileno())
        return _publish_version(tmp, folder, ".json", pointer)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_directory(out_dir: str | os.PathLike, fill: Callable[[Path], None], identity: Callable[[Path], str]) -> Path:
    """Assemble a directory with ``fill(tmp)`` in a temporary directory beside ``out_dir``, publish it with one atomic
    rename, and return where it was published. An existing directory is never written into, deleted or replaced (a
    lineage file or the promoted-model pointer may name it, with its hash):

    - ``out_dir`` absent: the new directory becomes ``out_dir``;
    - ``out_dir`` present with the same ``identity`` (e.g. a model's content hash): it is kept as it is and the new
      one discarded;
    - else the new directory goes to ``<out_dir>-<identity[:16]>``, named after its content (same two rules).

    A failure or a kill before the rename leaves every existing directory as it was and at most a hidden
    ``.<name>.*`` temporary directory beside it (a failure removes it)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fill(tmp)
        make_tree_readable(tmp)
        return _publish_directory(tmp, out_dir, identity)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # (already gone when it was published)


@contextmanager
def directory_written_whole(out_dir: str | os.PathLike) -> Iterator[Path]:
    """:func:`write_directory` as a ``with`` block, for a caller that names ``out_dir`` after its content: the block
    assembles the yielded temporary directory, which is then published at ``out_dir`` by one rename, or dropped when
    ``out_dir`` already holds the same files (:func:`sha256_dir`). Never replaced: other files under that name raise
    ``FileExistsError`` and leave it as it is."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        make_tree_readable(tmp)
        if not _published_at(tmp, out_dir, sha256_dir(tmp), sha256_dir):
            raise FileExistsError(f"{out_dir}: exists with other files than the ones written for it; it is kept as "
                                  "it is. Move it away if it is damaged, and write it again.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish_directory(tmp: Path, out_dir: Path, identity: Callable[[Path], str]) -> Path:
    new = identity(tmp)
    named = out_dir.with_name(f"{out_dir.name}-{new[:VERSION_CHARS]}")
    for target in (out_dir, named):
        if _published_at(tmp, target, new, identity):
            return target
    raise FileExistsError(f"{named}: exists, but its content does not match its name ({new[:VERSION_CHARS]}): it "
                          f"was changed after it was written. Move it away (do not delete it if a lineage or the "
                          f"promoted model names it) and write {out_dir} again.")


def _published_at(tmp: Path, target: Path, new: str, identity: Callable[[Path], str]) -> bool:
    """Whether ``target`` now holds what ``tmp`` holds (identity ``new``): renamed there if it did not exist, or
    already there; False when another directory is there (left as it is)."""
    if not target.exists():
        try:
            os.rename(tmp, target)  # fails when another writer has just published a (non-empty) target
        except OSError:
            if not target.exists():
                raise
        else:
            _sync_dir(target.parent)
            return True
    return identity(target) == new


def make_tree_readable(root: str | os.PathLike) -> None:
    """mkdtemp and some writers (safetensors) create owner-only files; artifacts here are meant to be shared."""
    root = Path(root)
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def read_parquet(path: str | os.PathLike) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such Parquet file. Materialize the upstream asset first "
            "(or check the storage root in the `storage` resource)."
        )
    return pl.read_parquet(path)
