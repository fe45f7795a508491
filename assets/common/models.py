"""Model-directory helpers shared by every stage and by training (no Dagster here)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from assets.common.storage import sha256_file

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
