"""The base model an evaluation compares the candidate with (no Dagster here): the one the candidate was trained
from, as its ``lineage.json`` records it (``base_model.path`` and ``base_model.content_hash``), not whatever the
``base_model`` asset holds now. The directory is re-hashed: a base that is gone or changed since training fails the
evaluation with an error naming the file and what to do, rather than comparing the model with another base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from assets.common.models import model_content_hash


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
    if not Path(path).is_dir():
        raise BaseModelError(f"{lineage_path}: base_model.path {path} does not exist: the base this model was "
                             f"trained from is gone and the model cannot be compared with it. Restore that "
                             f"directory, or: {retrain}")
    actual = model_content_hash(path)
    if actual != recorded:
        raise BaseModelError(f"{path}: content hash {actual} differs from base_model.content_hash {recorded} in "
                             f"{lineage_path}: the base model's directory changed since this model was trained. "
                             f"Restore it, or: {retrain}")
    if current is None:
        relation = "none"
    elif current.get("content_hash") == recorded:
        relation = "same"
    else:
        relation = (f"differs: the current base_model is {current.get('path')} (content hash "
                    f"{current.get('content_hash')}); the lineage's base is evaluated")
    return {"model_dir": str(path), "content_hash": recorded, "source": f"{lineage_path} base_model",
            "current_base_model": relation}
