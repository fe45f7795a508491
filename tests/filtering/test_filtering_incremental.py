"""Filtering shard by shard: the verdicts of shards already seen are reused, and the output equals a full check of
the table byte for byte (core, on a table with interleaved shards; the asset reusing a shard through Dagster:
test_filtering_asset.py::test_rerun_writes_the_same_bytes)."""

from __future__ import annotations

import io

import polars as pl
import pytest

from assets.filtering.core import FilterConfig, apply_filters
from assets.filtering.incremental import filter_shards
from tests.asset_runs import conversation, frame

CFG = FilterConfig(special_tokens=("<|im_start|>",))
QUESTION = "Could you explain how tides work, please?"
ANSWER = "Tides come from the Moon's gravity pulling on the oceans, with the Sun adding a smaller pull."


def _row(shard: int, row: int) -> dict:
    """Every third row fails a different rule (length, template leak, truncated, repetition)."""
    kind = (shard * 7 + row) % 12
    user, answer = f"{QUESTION} (shard {shard}, case {row})", f"{ANSWER} Case {shard}-{row}."
    if kind == 0:
        user = "Tides?"
    elif kind == 3:
        answer += " <|im_start|>user"
    elif kind == 9:
        answer = "\n".join(["The Moon pulls the sea."] * 6)
    out = conversation(row, user, answer, shard=shard)
    if kind == 6:
        out["finish_reasons"] = ["stop", "length"]
    return out


def _table(shards: int, rows: int = 12) -> pl.DataFrame:
    """Rows of ``shards`` shards, interleaved (the table is not sorted by shard)."""
    return frame([_row(s, r) for r in range(rows) for s in range(shards)])


def _bytes(df: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return buffer.getvalue()


def _same(a, b) -> bool:
    return _bytes(a.kept) == _bytes(b.kept) and _bytes(a.rejected) == _bytes(b.rejected) and a.funnel == b.funnel


def test_a_new_shard_is_checked_alone_and_the_output_equals_a_full_check(tmp_path) -> None:
    first = filter_shards(_table(3), CFG, tmp_path)
    assert (sorted(first.computed_shards), first.reused_shards) == (["0", "1", "2"], [])
    assert _same(first.result, apply_filters(_table(3), CFG))
    grown = filter_shards(_table(4), CFG, tmp_path)
    assert (grown.computed_shards, sorted(grown.reused_shards)) == (["3"], ["0", "1", "2"])
    full = apply_filters(_table(4), CFG)
    assert _same(grown.result, full) and full.rejected.height == 16
    assert set(full.rejected["reason"]) == {"length", "template_leak", "truncated", "repetition"}


def test_a_changed_shard_or_threshold_is_checked_again(tmp_path) -> None:
    filter_shards(_table(3), CFG, tmp_path)
    changed = _table(3).with_columns(
        pl.when(pl.col("shard") == 1).then(pl.lit(["stop", "length"])).otherwise(pl.col("finish_reasons"))
        .alias("finish_reasons"))
    again = filter_shards(changed, CFG, tmp_path)
    assert (again.computed_shards, sorted(again.reused_shards)) == (["1"], ["0", "2"])
    assert _same(again.result, apply_filters(changed, CFG))
    stricter = FilterConfig(special_tokens=("<|im_start|>",), min_response_chars=200)
    assert sorted(filter_shards(changed, stricter, tmp_path).computed_shards) == ["0", "1", "2"]


def test_a_table_without_shards_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs a `shard` column"):
        filter_shards(_table(2).drop("shard"), CFG, tmp_path)
