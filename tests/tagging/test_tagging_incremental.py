"""Tagging shard by shard (no judge): the tags of shards already seen are reused, and the output equals tagging the
whole table byte for byte (core on a table with interleaved shards; the asset through Dagster)."""

from __future__ import annotations

import io

import polars as pl

from assets.common.orchestration.resources import (
    FILTERED_CONVERSATIONS,
    TAGGED_CONVERSATIONS,
    DataStorage,
    VLLMEngine,
)
from assets.tagging.assets import tagged_conversations
from assets.tagging.config import TaggingConfig
from assets.tagging.core import JudgeProvenance, tag_rows
from assets.tagging.incremental import tag_shards
from assets.tagging.judge import no_judge_labels
from assets.tagging.labels import filter_on_labels
from tests.asset_runs import conversation, frame, materialization, materialize
from tests.tagging.test_tagging_asset import ENGLISH, GERMAN

CFG = TaggingConfig(allowed_languages=("en",))
ASSET_NAME = TAGGED_CONVERSATIONS.to_user_string()
PAIRS = [*ENGLISH, GERMAN]


def _table(shards: int, rows: int = 5) -> pl.DataFrame:
    """Rows of ``shards`` shards, interleaved (the table is not sorted by shard)."""
    return frame([conversation(r, f"{PAIRS[(s + r) % 5][0]} ({s}-{r})", PAIRS[(s + r) % 5][1], shard=s)
                  for r in range(rows) for s in range(shards)])


def _bytes(df: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return buffer.getvalue()


def _full(df: pl.DataFrame) -> pl.DataFrame:
    return tag_rows(df, no_judge_labels(df.height), JudgeProvenance(), CFG)


def test_a_new_shard_is_tagged_alone_and_the_output_equals_tagging_the_table(tmp_path) -> None:
    first = tag_shards(_table(3), CFG, tmp_path)
    assert (sorted(first.computed_shards), first.reused_shards) == (["0", "1", "2"], [])
    assert _bytes(first.tagged) == _bytes(_full(_table(3)))
    grown = tag_shards(_table(4), CFG, tmp_path)
    assert (grown.computed_shards, sorted(grown.reused_shards)) == (["3"], ["0", "1", "2"])
    full = _full(_table(4))
    assert _bytes(grown.tagged) == _bytes(full)
    assert "de" in set(full["response_language"]) and full["refusal"].sum() == 4
    other = tag_shards(_table(4), TaggingConfig(min_letters=200), tmp_path)  # a language setting: all again
    assert sorted(other.computed_shards) == ["0", "1", "2", "3"]


def test_the_asset_reuses_shards_and_writes_what_tagging_the_table_writes(tmp_path) -> None:
    """Three shards tagged before (by the core, into the asset's folder), the fourth new: one run tags only it."""
    asset = TAGGED_CONVERSATIONS.to_user_string()
    storage = DataStorage(root=str(tmp_path / "data"))
    tag_shards(_table(3), CFG, storage.asset_dir(TAGGED_CONVERSATIONS) / "shard_results")
    storage.write_table(FILTERED_CONVERSATIONS, _table(4))
    config = {ASSET_NAME: {"use_judge": False, "allowed_languages": ["en"]}}
    result = materialize([tagged_conversations], storage, tmp_path / "d", config, resources={"engine": VLLMEngine()})
    grown = materialization(result, asset)
    assert (grown["shards_computed"], grown["shards_reused"]) == (1, 3)
    split = filter_on_labels(_full(_table(4)), CFG)
    fresh = DataStorage(root=str(tmp_path / "fresh"))
    assert grown["content_hash"] == fresh.write_table(asset, split.kept).content_hash
    assert (storage.describe_table(asset, "rejected").content_hash
            == fresh.write_table(asset, split.rejected, name="rejected").content_hash)
    assert split.rejected.height > 0 and storage.read_json(asset, "report")["funnel"] == split.funnel
