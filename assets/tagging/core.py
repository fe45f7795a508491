"""Tagging: every row gets a task category, judge labels, languages and a refusal flag; rows are filtered on those
labels by named rules; the labels and the kept set's diversity are reported (no Dagster here).

``tag_rows`` adds to a conversation table:

* the judge's columns (:data:`assets.tagging.judge.JUDGE_COLUMNS`) and its provenance (``judge_model``,
  ``judge_model_hash``, ``judge_prompt``, ``judge_prompt_hash``);
* ``task`` (the category the mixture samples by) and ``task_source``: the judge's category where its answer parsed
  (``judge``), else the fallback regex tagger's (``fallback``; every row when no judge ran);
* ``instruction_language`` and ``response_language`` (:mod:`assets.common.text.language`);
* ``refusal_phrase`` (the phrase rule's match, :mod:`assets.tagging.refusal`) and ``refusal``: the judge said so or
  the phrase rule matched. Flagged, not dropped.

``tag_and_filter`` then splits the tagged rows by the label rules (:mod:`assets.tagging.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from assets.common.data.rules import RuleSplit
from assets.common.data.taxonomy import TASKS, first_instruction, task_expr
from assets.common.text.language import language_columns
from assets.tagging.config import TaggingConfig
from assets.tagging.judge import JUDGE_COLUMNS, PARSED, SCORES
from assets.tagging.labels import filter_on_labels
from assets.tagging.refusal import refusal_phrase_expr

PROVENANCE_COLUMNS = ("judge_model", "judge_model_hash", "judge_prompt", "judge_prompt_hash")
TAG_COLUMNS = ("task", "task_source", "instruction_language", "response_language", "refusal_phrase", "refusal")


@dataclass(frozen=True)
class JudgeProvenance:
    model: str | None = None
    model_hash: str | None = None
    prompt: str | None = None
    prompt_hash: str | None = None


def tag_rows(df: pl.DataFrame, judge_labels: pl.DataFrame, provenance: JudgeProvenance,
             cfg: TaggingConfig = TaggingConfig()) -> pl.DataFrame:
    """``df`` with the judge's labels (one row per row of ``df``, same order) and every tag column."""
    if judge_labels.height != df.height:
        raise ValueError(f"tag_rows: {judge_labels.height} judge labels for {df.height} rows")
    check_untagged(df)
    parsed = pl.col("judge_status") == PARSED
    tagged = pl.concat([df.drop("task", strict=False), judge_labels.select(list(JUDGE_COLUMNS)),
                        language_columns(df, cfg.min_letters, cfg.language_detector)], how="horizontal")
    provenance_values = dict(zip(PROVENANCE_COLUMNS, (provenance.model, provenance.model_hash, provenance.prompt,
                                                      provenance.prompt_hash), strict=True))
    return tagged.with_columns(
        *(pl.lit(v, pl.Utf8).alias(k) for k, v in provenance_values.items()),
        pl.when(parsed).then(pl.col("judge_category")).otherwise(task_expr(first_instruction())).alias("task"),
        pl.when(parsed).then(pl.lit("judge")).otherwise(pl.lit("fallback")).alias("task_source"),
        refusal_phrase_expr().alias("refusal_phrase"),
    ).with_columns(
        (pl.col("judge_refusal").fill_null(False) | pl.col("refusal_phrase").is_not_null()).alias("refusal"))


def check_untagged(df: pl.DataFrame) -> None:
    clash = [c for c in (*JUDGE_COLUMNS, *PROVENANCE_COLUMNS, *TAG_COLUMNS) if c in df.columns and c != "task"]
    if clash:
        raise ValueError(f"tag_rows: the input already has tagging columns {clash}; tag the untagged table")


def tag_and_filter(df: pl.DataFrame, judge_labels: pl.DataFrame, provenance: JudgeProvenance,
                   cfg: TaggingConfig = TaggingConfig()) -> tuple[pl.DataFrame, RuleSplit]:
    """(every tagged row, its split by the label rules)."""
    tagged = tag_rows(df, judge_labels, provenance, cfg)
    return tagged, filter_on_labels(tagged, cfg)


def _shares(series: pl.Series) -> dict[str, dict[str, float]]:
    counts = series.cast(pl.Utf8).fill_null("(none)").value_counts().sort(series.name or "", descending=False)
    total = max(series.len(), 1)
    return {str(k): {"rows": int(n), "share": round(n / total, 4)} for k, n in counts.iter_rows()}


def label_distributions(tagged: pl.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Rows and share per value of each label: task, judge category, scores, languages, tagger, judge status."""
    columns = ["task", "task_source", "judge_status", "judge_category", *SCORES, "instruction_language",
               "response_language"]
    return {name: _shares(tagged[name]) for name in columns}


def refusal_rates(tagged: pl.DataFrame) -> list[dict[str, Any]]:
    """Per task (and overall, first): rows, refusals by the judge, by the phrase rule, either, and the rate."""
    def row(frame: pl.DataFrame, task: str) -> dict[str, Any]:
        flagged = int(frame["refusal"].sum())
        return {"task": task, "rows": frame.height, "judge": int(frame["judge_refusal"].fill_null(False).sum()),
                "phrase": int(frame["refusal_phrase"].is_not_null().sum()), "flagged": flagged,
                "rate": round(flagged / frame.height, 4) if frame.height else 0.0}

    order = {t: i for i, t in enumerate(TASKS)}
    tasks = sorted(tagged["task"].unique().to_list(), key=lambda t: (order.get(t, len(order)), t))
    return [row(tagged, "(all)"), *(row(tagged.filter(pl.col("task") == t), t) for t in tasks)]


def per_category(tagged: pl.DataFrame, kept: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows in and out of the label rules per task."""
    rows_in = dict(tagged.group_by("task").len().iter_rows())
    rows_out = dict(kept.group_by("task").len().iter_rows()) if kept.height else {}
    order = {t: i for i, t in enumerate(TASKS)}
    return [{"task": t, "rows_in": rows_in[t], "rows_out": rows_out.get(t, 0)}
            for t in sorted(rows_in, key=lambda t: (order.get(t, len(order)), t))]
