"""The base model an evaluation compares the candidate with (no Dagster here): the one the candidate was trained
from, as its ``lineage.json`` records it (``base_model.path`` and ``base_model.content_hash``), not whatever the
``base_model`` asset holds now. The directory is re-hashed: a base that is gone or changed since training fails the
evaluation with an error naming the file and what to do, rather than comparing the model with another base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from assets.common.models.integrity import ModelChangedError, verified_model_dir


class BaseModelError(ValueError):
    """The candidate's base model cannot be evaluated as recorded; the message names the file and the fix."""


def lineage_base(tuned_dir: str | Path, current: dict[str, Any] | None) -> dict[str, Any]:
    """The base recorded in ``tuned_dir/lineage.json``, verified by its content hash: ``model_dir``,
    ``content_hash``, ``source`` and ``current_base_model`` (how the current ``base_model`` manifest ``current``
    compares: "same", "differs: ..." or "none")."""
    lineage_path = Path(tuned_dir) / "lineage.json"
    retrain = "Retrain sft_model on the current base_model."
    try:
        base = json.loads(lineage_path.read_text(encoding="utf-8")).get("base_model") or {}
    except (OSError, ValueError) as error:
        raise BaseModelError(f"{lineage_path}: unreadable ({error}); the evaluation needs the base model the "
                             f"candidate was trained from, which its lineage names. {retrain}") from error
    path, recorded = base.get("path"), base.get("content_hash")
    if not path or not recorded:
        raise BaseModelError(f"{lineage_path}: no base_model.path and base_model.content_hash, so the base model "
                             f"this model was trained from is unknown. {retrain}")
    try:
        verified_model_dir(path, recorded, f"base_model.content_hash in {lineage_path}")
    except ModelChangedError as error:
        raise BaseModelError(f"{error} This is the base the candidate was trained from, so it cannot be compared "
                             f"with another one. Restore that directory, or: {retrain}") from None
    if current is None:
        relation = "none"
    elif current.get("content_hash") == recorded:
        relation = "same"
    else:
        relation = (f"differs: the current base_model is {current.get('path')} (content hash "
                    f"{current.get('content_hash')}); the lineage's base is evaluated")
    return {"model_dir": str(path), "content_hash": recorded, "source": f"{lineage_path} base_model",
            "current_base_model": relation}
