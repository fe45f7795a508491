"""Filtering on labels: languages, judge scores and difficulty, each a named rule (no Dagster here).

A registry like the quality rules' (``assets/filtering``): :data:`LABEL_RULES`, name -> function, in order; a
rejected row carries the first rule it fails, with a detail. Adding a rule is one function of ``(rows, config)``
returning ``(row, detail)`` of the failing rows, plus one line in the registry. Every threshold is off by default:
the labels are computed and reported either way. A row without a judge label (``unparsed``, or no judge) passes
the score rules (it has nothing to compare) unless ``reject_unparsed``; an ``und`` (undetermined) language passes
the language rule, and so does the response of a ``translation`` row (it is in the target language by design).
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from assets.common.data.rules import ROW, RuleSplit, index_rows, no_failures, split_by_rules
from assets.common.text.language import UNDETERMINED
from assets.tagging.config import TaggingConfig
from assets.tagging.judge import UNPARSED


def _failing(rows: pl.DataFrame, detail: pl.Expr) -> pl.DataFrame:
    return rows.select(ROW, detail.alias("detail")).filter(pl.col("detail").is_not_null())


def _unparsed_rule(rows: pl.DataFrame, cfg: TaggingConfig) -> pl.DataFrame:
    if not cfg.reject_unparsed:
        return no_failures(rows)
    return _failing(rows, pl.when(pl.col("judge_status") == UNPARSED).then(
        pl.format("judge answer unparsed: {}", pl.col("judge_error"))))


def _language_rule(rows: pl.DataFrame, cfg: TaggingConfig) -> pl.DataFrame:
    if cfg.allowed_languages is None:
        return no_failures(rows)
    allowed = [*cfg.allowed_languages, UNDETERMINED]
    shown = ", ".join(cfg.allowed_languages)
    detail = pl.when(~pl.col("instruction_language").is_in(allowed)).then(
        pl.format(f"instruction language '{{}}' not in [{shown}]", pl.col("instruction_language"))
    ).when(~pl.col("response_language").is_in(allowed) & (pl.col("task") != "translation")).then(
        pl.format(f"response language '{{}}' not in [{shown}]", pl.col("response_language")))
    return _failing(rows, detail)


def _minimum(name: str, bound: int | None) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def rule(rows: pl.DataFrame) -> pl.DataFrame:
        if bound is None:
            return no_failures(rows)
        return _failing(rows, pl.when(pl.col(name) < bound).then(pl.format(f"{name} {{}} < min {bound}", pl.col(name))))
    return rule


def _instruction_quality_rule(rows: pl.DataFrame, cfg: TaggingConfig) -> pl.DataFrame:
    return _minimum("instruction_quality", cfg.min_instruction_quality)(rows)


def _response_quality_rule(rows: pl.DataFrame, cfg: TaggingConfig) -> pl.DataFrame:
    return _minimum("response_quality", cfg.min_response_quality)(rows)


def _difficulty_rule(rows: pl.DataFrame, cfg: TaggingConfig) -> pl.DataFrame:
    low, high = cfg.min_difficulty, cfg.max_difficulty
    if low is None and high is None:
        return no_failures(rows)
    value = pl.col("difficulty")
    detail = pl.when(value < (low or 1)).then(pl.format(f"difficulty {{}} < min {low}", value)).when(
        value > (high or 5)).then(pl.format(f"difficulty {{}} > max {high}", value))
    return _failing(rows, detail)


LabelRule = Callable[[pl.DataFrame, TaggingConfig], pl.DataFrame]

# The registry, in the order rows meet the rules.
LABEL_RULES: dict[str, LabelRule] = {
    "unparsed": _unparsed_rule,
    "language": _language_rule,
    "instruction_quality": _instruction_quality_rule,
    "response_quality": _response_quality_rule,
    "difficulty": _difficulty_rule,
}


def filter_on_labels(df: pl.DataFrame, cfg: TaggingConfig) -> RuleSplit:
    """Split a tagged table by :data:`LABEL_RULES` (first failed rule = the row's reason)."""
    indexed = index_rows(df, "filter_on_labels")
    return split_by_rules(df, {name: rule(indexed, cfg) for name, rule in LABEL_RULES.items()})
