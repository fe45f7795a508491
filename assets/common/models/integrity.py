"""Model-directory helpers shared by every stage and by training (no Dagster here)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from assets.common.data.storage import sha256_file

# Files whose bytes define a model: weights, config, tokenizer, chat template.
MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)



def model_content_hash(model_dir: str | Path) -> str:
    """SHA-256 over the defining files of a model directory (names and bytes, sorted)."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    files = sorted({p for pattern in MODEL_FILE_PATTERNS for p in root.glob(pattern) if p.is_file()})
    for file in files:
        digest.update(file.name.encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


class ModelChangedError(ValueError):
    """A model directory's files no longer hash to what was recorded when it was written."""


def verified_model_dir(model_dir: str | Path, expected_hash: str, recorded_by: str) -> Path:
    """``model_dir``, re-hashed (:func:`model_content_hash`) and found to hold the model ``recorded_by`` (e.g. the
    promoted-model pointer, a materialization) says it holds, ``expected_hash``. How every reader of a recorded model
    directory (continual training, promotion, evaluation) checks it before use; raises naming both hashes."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelChangedError(f"{path}: the model directory {recorded_by} names does not exist (content hash "
                                f"{expected_hash} expected). Restore it, or train and promote a new model.")
    found = model_content_hash(path)
    if found != expected_hash:
        raise ModelChangedError(
            f"{path}: content hash {found}, but {recorded_by} records {expected_hash}: the directory's files were "
            "changed after it was written (model directories are never rewritten), so it is not the model that was "
            "checked. Do not use it: restore the directory from a copy, or re-materialize sft_model (a new directory) "
            "and let it be evaluated and promoted.")
    return path
