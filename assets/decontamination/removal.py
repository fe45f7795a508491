"""The removal: :func:`decontaminate` splits the training table into kept and rejected rows and builds the
per-benchmark report (see :mod:`assets.decontamination` for what counts as a match)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from assets.common.data.schema import REJECTED_DETAIL, REJECTED_REASON
from assets.decontamination.config import REASON_CONTAMINATION, DecontamConfig
from assets.decontamination.index import EvalIndex, as_index
from assets.decontamination.matching import find_matches
from assets.decontamination.rephrase import NOT_REPHRASING
from assets.decontamination.semantic import SEMANTIC, counting


def decontaminate(
    df: pl.DataFrame,
    eval_df: pl.DataFrame | EvalIndex,
    cfg: DecontamConfig | None = None,
    *,
    max_detail: int = 3,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Split ``df`` into (kept, rejected, report).

    ``rejected`` keeps the input columns and order and adds ``reason`` ("contamination") and ``detail`` (the
    first ``max_detail`` matches). ``report``: row counts, the config, and per benchmark (every benchmark of
    the eval table, matched or not) the rows removed, matched item ids, match counts per detector, an example
    matched n-gram, the eval-side stats (``too_short``, ``boilerplate_ngrams`` etc.) and an example of the
    boilerplate excluded by the ``max_ngram_items`` cut-off (``example_boilerplate``), the number of distinct keys
    ignored by the ``max_train_rows`` cut-off (``train_frequent_keys``) and the one found in most conversations
    (``example_train_frequent``: ``{"key", "conversations"}``, ties by key text), and for the semantic detector the
    pairs judged "not a rephrasing" (``semantic_cleared``: recorded, not removed) and the best-scoring match
    (``example_semantic``). A semantic pair judged "not a rephrasing" removes nothing.
    """
    index = as_index(eval_df, cfg)
    return removal_outputs(df, index, *find_matches(df, index), max_detail=max_detail)


def removal_outputs(
    df: pl.DataFrame, index: EvalIndex, matches: pl.DataFrame, frequent: pl.DataFrame, *, max_detail: int = 3
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """(kept, rejected, report) of ``df`` from its matches (:func:`~.matching.find_matches`) and the keys ignored
    by the training-side cut-off: what :func:`decontaminate` returns, also for a table checked shard by shard."""
    mask = np.zeros(df.height, dtype=bool)
    removing = matches.filter(counting(matches))
    mask[removing["row"].unique().sort().to_numpy()] = True
    rejected = _rejected_rows(df, removing, max_detail)
    # a filter, not a gather: a table read from Parquet is in chunks (one per row group), and a gather across chunks
    # costs far more than the filter (a million rows in 10 chunks: 5-20 s against 0.2 s, benchmarks/incremental.py)
    kept = df.filter(pl.Series(~mask))
    report = {
        "rows_in": df.height,
        "rows_kept": int((~mask).sum()),
        "rows_removed": int(mask.sum()),
        "matches": removing.height,
        "config": index.config.to_json(),
        "semantic": index.semantic.describe() if index.semantic is not None else None,
        "boilerplate_ngrams": int(
            index.boilerplate.filter(pl.col("length") == index.config.ngram)["hash"].n_unique()
        ),
        "boilerplate_texts": int((index.items["ngram_status"] == "boilerplate").sum()),
        "train_frequent_keys": int(frequent["key"].n_unique()),
        "benchmarks": _benchmark_reports(index, matches, frequent),
    }
    return kept, rejected, report


def _describe(prefix: pl.Expr) -> pl.Expr:
    return (
        pl.when(pl.col("detector") == "ngram")
        .then(
            pl.format(
                "{} {}/{}:{} in {}: '{}'", prefix, "benchmark", "item_id", "field", "side", "matched_ngram"
            )
        )
        .when(pl.col("detector") == SEMANTIC)
        .then(
            pl.format(
                "{} {}/{}:{} in {}: cosine {}{}", prefix, "benchmark", "item_id", "field", "side",
                pl.col("similarity").round(3), pl.when(pl.col("verdict").is_not_null())
                .then(pl.format(" ({})", "verdict")).otherwise(pl.lit("")),
            )
        )
        .otherwise(
            pl.format(
                "{} {}/{}:{} in {}: jaccard {}",
                prefix,
                "benchmark",
                "item_id",
                "field",
                "side",
                pl.col("similarity").round(3),
            )
        )
    )


def _rejected_rows(df: pl.DataFrame, matches: pl.DataFrame, max_detail: int) -> pl.DataFrame:
    """The matched rows of ``df`` in input order, with ``reason`` and ``detail`` (the first ``max_detail``
    matches, then how many more)."""
    details = (
        matches.with_columns(_describe(pl.col("detector")).alias("d"))
        .group_by("row", maintain_order=True)
        .agg(pl.col("d").head(max_detail), pl.len().alias("n"))
        .with_columns(
            (
                pl.col("d").list.join("; ")
                + pl.when(pl.col("n") > max_detail)
                .then(pl.format(" (+{} more)", pl.col("n") - max_detail))
                .otherwise(pl.lit(""))
            ).alias(REJECTED_DETAIL)
        )
        .select(pl.col("row").cast(pl.Int64), REJECTED_DETAIL)
    ).sort("row")
    return (
        df.select(pl.all().gather(details["row"]))
        .with_columns(details[REJECTED_DETAIL], pl.lit(REASON_CONTAMINATION).alias(REJECTED_REASON))
        .select(*df.columns, REJECTED_REASON, REJECTED_DETAIL)
    )


def _benchmark_reports(
    index: EvalIndex, matches: pl.DataFrame, frequent: pl.DataFrame
) -> dict[str, dict[str, Any]]:
    """Per benchmark of the eval table (matched or not): what was removed, why, and what was ignored."""
    benchmarks: dict[str, dict[str, Any]] = {}
    boilerplate_examples = index.boilerplate_examples()
    for name, stats in index.stats().items():
        everything = matches.filter(pl.col("benchmark") == name)
        sub = everything.filter(counting(everything))
        ngram = sub.filter(pl.col("detector") == "ngram")
        semantic = sub.filter(pl.col("detector") == SEMANTIC).sort(["similarity", "row"], descending=[True, False])
        train_frequent = frequent.filter(pl.col("benchmark") == name).sort(
            ["conversations", "key"], descending=[True, False]
        )
        benchmarks[name] = {
            "rows_removed": int(sub["row"].n_unique()),
            "matched_item_ids": sorted(sub["item_id"].unique().to_list()),
            "matches": {
                "ngram": ngram.height,
                "minhash": sub.height - ngram.height - semantic.height,
                "semantic": semantic.height,
            },
            "semantic_cleared": int((everything["verdict"] == NOT_REPHRASING).sum()),
            "example_semantic": (
                {"conversation_id": semantic["conversation_id"][0], "item_id": semantic["item_id"][0],
                 "cosine": round(float(semantic["similarity"][0]), 4), "verdict": semantic["verdict"][0]}
                if semantic.height else None
            ),
            "example_ngram": ngram["matched_ngram"][0] if ngram.height else None,
            "example_conversation_id": sub["conversation_id"][0] if sub.height else None,
            "eval": stats,
            "example_boilerplate": boilerplate_examples.get(name),
            "train_frequent_keys": train_frequent.height,
            "example_train_frequent": (
                {"key": train_frequent["key"][0], "conversations": int(train_frequent["conversations"][0])}
                if train_frequent.height
                else None
            ),
        }
    return benchmarks
