"""Selection of the training pool by the student's difficulty score, with a diversity floor (no Dagster here).

``select: {by: ifd, keep: 0.5}`` keeps, within each (source, task) of the train pool, the ``round(keep x rows)`` rows
of highest IFD (Li et al. 2024: the rows whose answers the instruction helps the student least, yet still helps),
after dropping every row at ``IFD >= max_ifd`` (1: the answer is no easier with its instruction than without) and
every row without a score. Rows are taken in descending IFD (ties by the split's seeded hash, then id); a row whose
instruction (its first user message) is at cosine ``>= diversity_threshold`` to an instruction already selected in
its (source, task) is skipped, and the next one is tried, so a category of near-identical rows gives fewer rows
rather than copies (the manifest counts each skip and names the row it was too close to). The threshold defaults to
the embedding model's paraphrase threshold (a rephrasing of a selected row is not selected again).

Selection runs on the train pool after the split (the validation rows do not move with it: models trained on
differently selected data are validated on the same rows), and before the plan: the shares are then planned over the
selected rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from assets.common.text.embeddings import DEFAULT_MODEL, MODELS, Embeddings
from assets.mixture.split import HASH, ORDER, half_up

SELECTED_BY = "mix_selected_by"
Embed = Callable[[Sequence[str]], Embeddings]
_GROUP = ("source", "task")
_EXAMPLES = 20


@dataclass(frozen=True)
class SelectionConfig:
    """by: the score ("ifd"). keep: share of each (source, task)'s train-pool rows to keep. max_ifd: rows at or above
    are dropped (1 = the paper's rule). diversity: skip a row too close to one already selected. diversity_threshold:
    the cosine at which it is too close (unset: the embedding model's paraphrase threshold; needed for a local model
    directory). embedding_model: a registered embedding model or a local sentence-transformers directory."""

    by: Literal["ifd"] = "ifd"
    keep: float = 0.5
    max_ifd: float = 1.0
    diversity: bool = True
    diversity_threshold: float | None = None
    embedding_model: str = DEFAULT_MODEL

    def __post_init__(self) -> None:
        if self.by != "ifd":
            raise ValueError(f"select.by must be 'ifd', got {self.by!r}")
        if not 0 < self.keep <= 1:
            raise ValueError(f"select.keep must be a share in (0, 1], got {self.keep}")
        if self.diversity_threshold is not None and not -1 <= self.diversity_threshold <= 1:
            raise ValueError(f"select.diversity_threshold must be a cosine in [-1, 1], got {self.diversity_threshold}")
        if self.diversity and self.diversity_threshold is None and self.embedding_model not in MODELS:
            raise ValueError(f"select.embedding_model {self.embedding_model!r} is not a registered model "
                             f"({sorted(MODELS)}): set select.diversity_threshold for it")

    @property
    def threshold(self) -> float | None:
        """The cosine at which a row is too close to a selected one (None: no diversity floor)."""
        if not self.diversity:
            return None
        if self.diversity_threshold is not None:
            return self.diversity_threshold
        return MODELS[self.embedding_model].threshold


def check_scores(df: pl.DataFrame) -> None:
    """Selection by IFD needs the scores: the columns joined from instruction_difficulty, with some rows scored."""
    if "ifd" not in df.columns or "ifd_status" not in df.columns:
        raise ValueError("sft_mixture: select.by 'ifd' needs the instruction_difficulty table: materialize "
                         "instruction_difficulty (enabled: true) before sft_mixture, or remove select")
    if df.height and not (df["ifd_status"] == "scored").any():
        statuses = sorted({str(s) for s in df["ifd_status"].unique().to_list()})
        raise ValueError(f"sft_mixture: select.by 'ifd' but no row has an IFD score (ifd_status {statuses}); set "
                         "instruction_difficulty's enabled: true and re-materialize it, or remove select")


def _instruction(messages: list[dict]) -> str:
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def _too_close(embedded: Embeddings, candidate: int, chosen: list[int], threshold: float) -> tuple[int, float] | None:
    """The chosen row (position) closest to ``candidate`` when at ``threshold`` or above, with the cosine."""
    if not chosen:
        return None
    bounds = np.append(embedded.starts(), embedded.owner.size)
    mine = embedded.vectors[bounds[candidate]:bounds[candidate + 1]]
    best, best_score = -1, -2.0
    for other in chosen:
        score = float((mine @ embedded.vectors[bounds[other]:bounds[other + 1]].T).max())
        if score > best_score:
            best, best_score = other, score
    return (best, best_score) if best_score >= threshold else None


def _pick(group: pl.DataFrame, quota: int, embedded: Embeddings | None, threshold: float | None,
          skips: list[dict]) -> list[int]:
    """Positions (in ``group``, ranked by IFD) of the selected rows."""
    chosen: list[int] = []
    ids = group["conversation_id"].to_list()
    for position in range(group.height):
        if len(chosen) >= quota:
            break
        if embedded is not None and threshold is not None:
            close = _too_close(embedded, position, chosen, threshold)
            if close is not None:
                skips.append({"conversation_id": ids[position], "too_close_to": ids[close[0]],
                              "cosine": round(close[1], 6)})
                continue
        chosen.append(position)
    return chosen


def select_pool(train_pool: pl.DataFrame, cfg: SelectionConfig, embed: Embed | None) -> tuple[pl.DataFrame, dict]:
    """The selected train-pool rows (see the module docstring) and the selection's report for the manifest."""
    threshold = cfg.threshold
    if threshold is not None and embed is None:
        raise ValueError("select: the diversity floor needs an embedding function (or set select.diversity: false)")
    scored = pl.col("ifd_status") == "scored"
    ranked = train_pool.with_columns(pl.col("ifd_status").fill_null("missing")).sort(
        [*_GROUP, "ifd", HASH, "conversation_id", ORDER], descending=[False, False, True, False, False, False],
        nulls_last=True)
    kept, per_group, skips, model_hash = [], [], [], None
    for key, group in ranked.group_by(list(_GROUP), maintain_order=True):
        eligible = group.filter(scored & (pl.col("ifd") < cfg.max_ifd))
        quota = half_up(cfg.keep * group.height)
        embedded = None
        if threshold is not None and eligible.height:
            embedded = embed([_instruction(m) for m in eligible["messages"].to_list()])
            model_hash = embedded.model_hash
        found: list[dict] = []
        chosen = _pick(eligible, quota, embedded, threshold, found)
        kept.append(eligible[chosen])
        skips += found
        per_group.append({"source": key[0], "task": key[1], "rows": group.height,
                          "scored": int(group.select(scored.sum()).item()),
                          "dropped_ifd_at_least_max": int(group.filter(scored & (pl.col("ifd") >= cfg.max_ifd)).height),
                          "not_scored": int(group.filter(~scored).height), "quota": quota,
                          "skipped_by_diversity": len(found), "selected": len(chosen),
                          "min_selected_ifd": float(eligible[chosen]["ifd"].min()) if chosen else None})
    selected = pl.concat(kept) if kept else ranked.head(0)
    report = _report(cfg, threshold, model_hash, per_group, skips)
    return selected.with_columns(pl.lit(cfg.by).alias(SELECTED_BY)), report


def _report(cfg: SelectionConfig, threshold: float | None, model_hash: str | None, per_group: list[dict],
            skips: list[dict]) -> dict[str, Any]:
    totals = {k: sum(g[k] for g in per_group) for k in ("rows", "scored", "dropped_ifd_at_least_max", "not_scored",
                                                        "skipped_by_diversity", "selected")}
    return {"by": cfg.by, "keep": cfg.keep, "max_ifd": cfg.max_ifd, "diversity_threshold": threshold,
            "embedding_model": cfg.embedding_model if threshold is not None else None,
            "embedding_model_hash": model_hash, "scope": "train pool, within each (source, task)",
            "totals": totals, "per_group": per_group, "diversity_skips": skips[:_EXAMPLES]}
