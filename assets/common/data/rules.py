"""Rejection by named rules: the first rule a row fails is its reason (no Dagster here).

A stage that removes rows by rules (``assets/filtering``: quality rules; ``assets/tagging``: label rules) keeps a
registry, an ordered ``{name: rule}`` dict, and evaluates every rule on every row (vectorized); each rule returns a
frame ``(ROW, detail)`` with one row per failing input row. :func:`split_by_rules` then resolves "first failing rule
in registry order" per row and counts the funnel, each rule counted on the rows that survived the rules before it.
Adding a rule is one function plus one line in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from assets.common.data.schema import REJECTED_DETAIL, REJECTED_REASON

ROW = "__rule_row"  # the input row's position, the join key between the input and the rules' failures


@dataclass(frozen=True)
class RuleSplit:
    """``kept``: input rows that passed every rule, input columns, input order. ``rejected``: the other rows with
    ``reason`` (the first failed rule) and ``detail`` appended, input order. ``funnel``: one dict per rule in
    registry order with ``rule``, ``rows_in``, ``rows_removed``, ``rows_out`` (``rows_out`` is the next ``rows_in``).
    """

    kept: pl.DataFrame
    rejected: pl.DataFrame
    funnel: list[dict[str, Any]]


def index_rows(df: pl.DataFrame, caller: str) -> pl.DataFrame:
    """``df`` with its row positions in :data:`ROW` (what rules return); refuses a frame that already has the
    columns the split adds."""
    for column in (ROW, REJECTED_REASON, REJECTED_DETAIL):
        if column in df.columns:
            raise ValueError(f"{caller}: input already has a column named '{column}'")
    return df.with_row_index(ROW)


def no_failures(frame: pl.DataFrame) -> pl.DataFrame:
    """An empty failure frame (a disabled rule)."""
    return frame.select(ROW, pl.lit(None, pl.Utf8).alias("detail")).clear()


def split_by_rules(df: pl.DataFrame, failures: Mapping[str, pl.DataFrame]) -> RuleSplit:
    """Split ``df`` by ``failures`` (rule name -> ``(ROW, detail)`` of the rows it fails, in registry order)."""
    return split_by_verdicts(df, rule_verdicts(df.height, failures), list(failures))


def rule_verdicts(height: int, failures: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Per row of a ``height``-row table, in order: ``ROW`` and the first failed rule (``reason``, null when it
    passed every rule) with its ``detail``; what :func:`split_by_verdicts` splits a table by. A row's verdict
    depends on that row alone, so a table's verdicts may be computed in parts (shards) and put together."""
    verdict = pl.DataFrame({ROW: pl.int_range(height, eager=True, dtype=pl.UInt32)})
    for rule, failed in failures.items():
        verdict = verdict.join(failed.select(pl.col(ROW).cast(pl.UInt32), pl.col("detail").alias(f"__detail_{rule}")),
                               on=ROW, how="left", maintain_order="left")
    reason = pl.lit(None, pl.Utf8)
    for rule in reversed(list(failures)):
        reason = pl.when(pl.col(f"__detail_{rule}").is_not_null()).then(pl.lit(rule)).otherwise(reason)
    detail = pl.coalesce([pl.col(f"__detail_{rule}") for rule in failures]) if failures else pl.lit(None, pl.Utf8)
    return verdict.select(ROW, reason.alias(REJECTED_REASON), detail.alias(REJECTED_DETAIL)).sort(ROW)


def split_by_verdicts(df: pl.DataFrame, verdict: pl.DataFrame, rules: Sequence[str]) -> RuleSplit:
    """Split ``df`` by its rows' verdicts (:func:`rule_verdicts`, one per row in order); ``rules``: the registry's
    names, in order, for the funnel."""
    labelled = pl.concat([df, verdict.select(REJECTED_REASON, REJECTED_DETAIL)], how="horizontal")
    kept = labelled.filter(pl.col(REJECTED_REASON).is_null()).select(df.columns)
    rejected = labelled.filter(pl.col(REJECTED_REASON).is_not_null())

    counts = dict(verdict.group_by(REJECTED_REASON).len().drop_nulls(REJECTED_REASON).iter_rows())
    funnel: list[dict[str, Any]] = []
    rows_in = df.height
    for rule in rules:
        removed = int(counts.get(rule, 0))
        funnel.append({"rule": rule, "rows_in": rows_in, "rows_removed": removed, "rows_out": rows_in - removed})
        rows_in -= removed
    return RuleSplit(kept=kept, rejected=rejected, funnel=funnel)
