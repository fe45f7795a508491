"""Continual fine-tuning with rehearsal (no Dagster here).

By default every model is trained from the base model: a clean lineage, no drift compounding over rounds. Continual
mode (``init_from="previous"``) instead starts from the previous fine-tune's merged weights and, against the
compounding forgetting that brings, mixes "rehearsal" rows into the new training set: a seeded sample of the
conversations the previous model was trained on. It is only allowed with rehearsal (``rehearsal_fraction > 0``).

- The previous model directory must be self-contained: ``lineage.json`` naming the base model's content hash (it
  must be the current base model's), the same chat template as the base model, and ``train_rows.parquet`` with the
  messages of every row it was trained on (split ``train`` or ``rehearsal``) beside their provenance.
- Rehearsal size: ``round(rehearsal_fraction * new training rows)`` (at least 1), capped at what is available.
  Candidates are the previous model's trained conversations (not the rows it dropped as too long), once each, minus
  every conversation_id present in the new data set (train: it would be seen twice; validation: it would leak into
  the held-out loss). Each candidate is ranked by BLAKE2b of ``(seed, conversation_id)`` and the lowest ranks are
  taken: the sample depends only on the seed and the ids, not on row order, and a larger fraction gives a superset.
- Rehearsal rows keep their provenance columns (shard, row_index, generator, task) with ``split = "rehearsal"``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from assets.common.data.config import config_dict
from assets.common.models.chat_template import read_chat_template, template_difference
from training.dataset import (
    REHEARSAL_SPLIT,
    REQUIRED_ROW_COLUMNS,
    TRAIN_ROW_COLUMNS,
    TRAIN_ROWS_FILE,
    TRAINED,
    TRAINED_SPLITS,
)

LINEAGE_FILE = "lineage.json"
RETRAINED_FROM_BASE = "base_model"  # lineage `retrained_from` of a model trained from the base model


class ContinualError(ValueError):
    """Continual mode cannot run as configured; the message names the file or field and what to change."""


@dataclass(frozen=True)
class ContinualConfig:
    init_from: Literal["base", "previous"] = "base"
    rehearsal_fraction: float = 0.0  # rehearsal rows per new training row (continual mode only)
    seed: int = 0  # rehearsal sampling seed

    def __post_init__(self) -> None:
        if self.init_from not in ("base", "previous"):
            raise ContinualError(f"init_from={self.init_from!r}: expected 'base' (retrain from the base model) or "
                                 "'previous' (continual mode: start from the previous fine-tune)")
        if not (math.isfinite(self.rehearsal_fraction) and self.rehearsal_fraction >= 0):
            raise ContinualError(f"rehearsal_fraction={self.rehearsal_fraction}: expected a number >= 0 "
                                 "(rehearsal rows per new training row, e.g. 0.25)")
        if self.continual and self.rehearsal_fraction == 0:
            raise ContinualError("continual mode needs rehearsal: init_from='previous' requires rehearsal_fraction > 0 "
                                 "(e.g. 0.25: one previous training conversation per four new ones); or set "
                                 "init_from='base' to retrain from the base model")
        if not self.continual and self.rehearsal_fraction > 0:
            raise ContinualError(f"rehearsal_fraction={self.rehearsal_fraction} only applies in continual mode: set "
                                 "init_from='previous', or rehearsal_fraction=0 to retrain from the base model")

    @property
    def continual(self) -> bool:
        return self.init_from == "previous"

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self)


@dataclass(frozen=True)
class PreviousModel:
    path: Path
    lineage: dict[str, Any]
    content_hash: str  # of its defining files (weights, config, tokenizer, template), as in sft_model's metadata
    train_rows: pl.DataFrame  # train_rows.parquet: every row it saw, with messages

    @property
    def dagster_run_id(self) -> str | None:
        return self.lineage.get("dagster_run_id")


@dataclass(frozen=True)
class Rehearsal:
    rows: pl.DataFrame  # the selected rows, split = "rehearsal", provenance columns kept
    stats: dict[str, Any]


@dataclass(frozen=True)
class StartingPoint:
    """Where a training run starts and what it adds to the data."""

    model_path: Path  # weights to start from: the base model or the previous fine-tune
    retrained_from: str | dict[str, Any]  # lineage entry: "base_model" or a dict (continual mode or its fallback)
    previous: PreviousModel | None = None
    rehearsal: Rehearsal | None = None

    @property
    def rehearsal_rows(self) -> pl.DataFrame | None:
        return self.rehearsal.rows if self.rehearsal else None


def load_previous_model(model_dir: str | Path, base_content_hash: str,
                        base_chat_template: str | None = None) -> PreviousModel:
    """Validate a previous model directory for continual training from it; raise ContinualError naming the file."""
    from assets.common.models.integrity import model_content_hash

    path = Path(model_dir)
    if not path.is_dir():
        raise ContinualError(f"{path}: the previous model directory does not exist; restore it, or set "
                             "init_from='base' to retrain from the base model")
    lineage_path = path / LINEAGE_FILE
    try:
        lineage = json.loads(lineage_path.read_text())
    except FileNotFoundError:
        raise ContinualError(f"{lineage_path}: missing; continual mode needs the previous model's lineage "
                             "(a model directory written by training.train)") from None
    except (OSError, ValueError) as error:
        raise ContinualError(f"{lineage_path}: unreadable ({error})") from error
    previous_base = (lineage.get("base_model") or {}).get("content_hash")
    if previous_base is None:
        raise ContinualError(f"{lineage_path}: no field base_model.content_hash, so it cannot be shown to be a "
                             "fine-tune of the current base model; retrain from the base model (init_from='base')")
    if previous_base != base_content_hash:
        raise ContinualError(f"{lineage_path}: base_model.content_hash is {previous_base}, but the current base "
                             f"model's is {base_content_hash}: the previous model was fine-tuned from another base "
                             "model; retrain from the base model (init_from='base')")
    if not (path / "config.json").exists():
        raise ContinualError(f"{path / 'config.json'}: missing; the previous model directory has no merged weights")
    difference = base_chat_template is not None and template_difference(read_chat_template(path),
                                                                          base_chat_template)
    if difference:
        at, previous, base = difference
        raise ContinualError(f"{path}: its chat template (chat_template.jinja) differs from the base model's, first "
                             f"at character {at}: {previous!r} vs the base's {base!r}; continual training must keep "
                             "the base model's template byte for byte: retrain from the base model "
                             "(init_from='base')")
    rows_path = path / TRAIN_ROWS_FILE
    if not rows_path.exists():
        raise ContinualError(f"{rows_path}: missing; continual mode rehearses the previous model's training rows "
                             "from it")
    rows = pl.read_parquet(rows_path)
    missing = [c for c in REQUIRED_ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ContinualError(f"{rows_path}: no column(s) {missing} (columns: {rows.columns}); a model trained before "
                             "model directories kept their messages cannot be rehearsed: retrain once from the base "
                             "model (init_from='base')")
    return PreviousModel(path=path, lineage=lineage, content_hash=model_content_hash(path), train_rows=rows)


def rehearsal_size(fraction: float, new_train_rows: int) -> int:
    """Rows requested: ``fraction`` x the new training rows, rounded half up, at least 1 when both are positive."""
    if fraction <= 0 or new_train_rows <= 0:
        return 0
    return max(1, math.floor(fraction * new_train_rows + 0.5))


def _rank(seed: int, conversation_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{conversation_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def select_rehearsal(previous_rows: pl.DataFrame, new_conversation_ids: Iterable[str], new_train_rows: int,
                     fraction: float, seed: int) -> Rehearsal:
    """A seeded sample of the previous model's trained conversations that are not in the new data set."""
    trained = previous_rows.filter(pl.col("split").is_in(TRAINED_SPLITS))
    if "status" in trained.columns:  # rows the previous run dropped (too long) were not trained on
        trained = trained.filter(pl.col("status") == TRAINED)
    trained = trained.unique("conversation_id", keep="first", maintain_order=True)
    new_ids = pl.Series(sorted(set(new_conversation_ids)), dtype=pl.Utf8)
    candidates = trained.filter(~pl.col("conversation_id").is_in(new_ids))
    requested = rehearsal_size(fraction, new_train_rows)
    ranks = pl.Series("_rank", [_rank(seed, cid) for cid in candidates["conversation_id"]], dtype=pl.UInt64)
    ranked = candidates.with_columns(ranks).sort(["_rank", "conversation_id"])
    selected = (ranked.head(requested).drop("_rank").sort("conversation_id")
                .select([c for c in TRAIN_ROW_COLUMNS if c in ranked.columns])
                .with_columns(pl.lit(REHEARSAL_SPLIT).alias("split")))
    stats = {
        "rows": selected.height,
        "fraction": fraction,
        "seed": seed,
        "new_train_rows": new_train_rows,
        "requested": requested,
        "previous_trained_rows": trained.height,
        "excluded_in_new_data": trained.height - candidates.height,
        "available": candidates.height,
    }
    return Rehearsal(rows=selected, stats=stats)


def starting_point(config: ContinualConfig, base_path: str | Path, base_content_hash: str,
                   previous_dir: str | Path | None, new_conversation_ids: Iterable[str], new_train_rows: int,
                   no_previous_reason: str = "no previous model") -> StartingPoint:
    """The weights to start from and the rehearsal rows to add, with the lineage entry that records both.

    Base mode: the base model, ``retrained_from = "base_model"``. Continual mode without a previous model (the first
    run): the base model too, with the reason recorded. Otherwise: the previous model, validated against the base."""
    base_path = Path(base_path)
    if not config.continual:
        return StartingPoint(model_path=base_path, retrained_from=RETRAINED_FROM_BASE)
    if previous_dir is None:
        return StartingPoint(model_path=base_path, retrained_from={
            "mode": "base", "init_from": config.init_from, "model": RETRAINED_FROM_BASE,
            "reason": f"{no_previous_reason}: trained from the base model",
        })
    previous = load_previous_model(previous_dir, base_content_hash, read_chat_template(base_path))
    rehearsal = select_rehearsal(previous.train_rows, new_conversation_ids, new_train_rows,
                                 config.rehearsal_fraction, config.seed)
    return StartingPoint(
        model_path=previous.path,
        retrained_from={
            "mode": "continual",
            "init_from": config.init_from,
            "previous_model_dir": str(previous.path),
            "previous_model_content_hash": previous.content_hash,
            "previous_model_name": previous.lineage.get("model_name"),
            "previous_dagster_run_id": previous.dagster_run_id,
            "previous_lineage_path": str(previous.path / LINEAGE_FILE),
            "rehearsal": rehearsal.stats,
        },
        previous=previous,
        rehearsal=rehearsal,
    )


def describe_start(retrained_from: str | dict[str, Any] | None) -> str:
    """One sentence for the model card."""
    if not isinstance(retrained_from, dict):
        return "Trained from the base model (not from a previous fine-tune)."
    if retrained_from.get("mode") != "continual":
        return f"Trained from the base model: continual mode was requested, but {retrained_from.get('reason')}."
    rehearsal = retrained_from["rehearsal"]
    return (f"Continual fine-tune: started from the previous model `{retrained_from['previous_model_dir']}` "
            f"(content hash `{retrained_from['previous_model_content_hash']}`, Dagster run "
            f"`{retrained_from.get('previous_dagster_run_id')}`), with {rehearsal['rows']} rehearsal conversations "
            f"from its training set (fraction {rehearsal['fraction']} of {rehearsal['new_train_rows']} new rows, "
            f"seed {rehearsal['seed']}; split `rehearsal` in train_rows.parquet).")
