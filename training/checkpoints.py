"""Checkpoints and resume (no Dagster here).

Checkpoints go to ``<out>/../.<out name>.checkpoints`` (deleted after success). A killed run, started again with the
same base model, data and config, resumes from its last complete checkpoint; checkpoints made by a different run
(another config, data or base model: see ``fingerprint.json`` there) are discarded, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assets.common.data.storage import write_json_atomic
from training.config import TrainConfig

FINGERPRINT_FILE = "fingerprint.json"


def checkpoint_dir(output_dir: Path) -> Path:
    """Where the checkpoints of the run writing ``output_dir`` go: a hidden directory beside it."""
    return output_dir.parent / f".{output_dir.name}.checkpoints"


def step_of(checkpoint: str | None) -> int | None:
    """The step of a checkpoint directory name (checkpoint-<step>); the directory itself is deleted after training."""
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None


def run_fingerprint(model_path: Path, config: TrainConfig, base_model_hash: str | None, train_ds: Any,
                    eval_ds: Any) -> str:
    """What a checkpoint must have been made with to be resumed: the starting weights, the base model, the config and
    the tokenized data (which covers the conversations, the tokenizer and the chat template)."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": str(model_path.resolve()), "model_hash": base_model_hash,
                         "config": config.to_dict()}, sort_keys=True, default=str).encode("utf-8"))
    for split, dataset in (("train", train_ds), ("validation", eval_ds)):
        h.update(f"|{split}:{len(dataset)}".encode())
        if len(dataset) == 0:
            continue
        for column in ("input_ids", "assistant_masks"):  # every length, then every value: the same digest
            chunks = dataset.data.column(column).chunks  # however the column is chunked (tokenize_rows: by rows)
            for chunk in chunks:
                h.update(chunk.value_lengths().to_numpy(zero_copy_only=False).astype("int64", copy=False).tobytes())
            for chunk in chunks:
                h.update(chunk.flatten().to_numpy(zero_copy_only=False).astype("int64", copy=False).tobytes())
    return h.hexdigest()


def last_checkpoint(checkpoints: Path, fingerprint: str, log: Callable[[str], None]) -> str | None:
    """The last complete checkpoint of this same run in ``checkpoints``, if any; prepares the directory.

    Checkpoints of another run (no or another fingerprint) are discarded. A checkpoint without a readable
    ``trainer_state.json`` (the Trainer writes it last) was cut short by a kill: it is discarded too."""
    marker = checkpoints / FINGERPRINT_FILE
    if checkpoints.is_dir():
        try:
            same_run = json.loads(marker.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError, TypeError):
            same_run = False
        if not same_run:
            log(f"discarding checkpoints in {checkpoints}: made with another base model, config or data")
            shutil.rmtree(checkpoints)
    if not checkpoints.is_dir():
        checkpoints.mkdir(parents=True)
        write_json_atomic({"fingerprint": fingerprint}, marker)
        return None
    steps = sorted((int(p.name.rsplit("-", 1)[1]), p) for p in checkpoints.glob("checkpoint-*")
                   if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit())
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log(f"discarding incomplete checkpoint {path}")
            shutil.rmtree(path)
    return None
