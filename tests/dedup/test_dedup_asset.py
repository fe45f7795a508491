"""`deduplicated_conversations` through Dagster on two small generation shards written through `DataStorage`."""

import random

import polars as pl
import pytest

from assets.common.data.storage import sha256_file
from assets.common.orchestration.resources import DEDUPLICATED_CONVERSATIONS, MAGPIE_CONVERSATIONS, DataStorage
from assets.dedup.assets import deduplicated_conversations
from assets.dedup.near_duplicates import REASON_NEAR_DUPLICATE
from tests.asset_runs import (
    assert_names_its_tables,
    conversation,
    failure_text,
    frame,
    materialization,
    materialize,
    with_bad_role,
)

WORDS = ("river stone lantern meadow copper violin harbor orchard thunder saffron glacier pepper marble falcon "
         "velvet canyon ember willow quartz tundra pebble cobalt nectar prairie").split()
ASSET = DEDUPLICATED_CONVERSATIONS.to_user_string()
SEMANTIC = "semantic_duplicate"  # the rejected reason of semantic dedup (assets/dedup/semantic.py)


def text(seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{rng.randrange(1000)}" for _ in range(40))


def shard(key: int, answers: list[str]) -> pl.DataFrame:
    return frame([conversation(i, f"Question {key}-{i}, please.", answer, shard=key)
                  for i, answer in enumerate(answers)])


@pytest.fixture
def shards(tmp_path):
    """Shard 0: 8 rows, row 6 a near-duplicate of row 2 (case and punctuation only); shard 1: 5 rows, row 3 a
    near-duplicate of shard 0's row 1."""
    storage = DataStorage(root=str(tmp_path / "data"))
    first = [text(i) for i in range(8)]
    first[6] = first[2].upper() + "!!"
    second = [text(100 + i) for i in range(5)]
    second[3] = first[1] + "."
    storage.write_table(MAGPIE_CONVERSATIONS, shard(0, first), name="shard-00000")
    storage.write_table(MAGPIE_CONVERSATIONS, shard(1, second), name="shard-00001")
    return storage, tmp_path


def test_near_duplicates_are_removed_with_reasons_and_metadata_matches_the_table(shards):
    storage, tmp_path = shards
    result = materialize([deduplicated_conversations], storage, tmp_path / "dagster")
    assert result.success
    metadata = materialization(result, ASSET)
    kept = storage.read_table(ASSET)
    rejected = storage.read_table(ASSET, "rejected")
    assert_names_its_tables(metadata, storage, ASSET, rows=kept.height)
    assert kept.height == 11 and metadata["rows_in"] == 13 and metadata["rows_removed"] == rejected.height == 2
    assert rejected.select("conversation_id", "duplicate_of", "reason").rows() == [
        ("00000-0000006", "00000-0000002", REASON_NEAR_DUPLICATE),
        ("00001-0000003", "00000-0000001", REASON_NEAR_DUPLICATE)]
    assert all("00000-000000" in detail for detail in rejected["detail"])
    ids = set(kept["conversation_id"]) | set(rejected["conversation_id"])
    assert len(ids) == 13 and not set(kept["conversation_id"]) & set(rejected["conversation_id"])
    report = storage.read_json(ASSET, "report")
    assert report["rows_in"] == 13 and report["rows_removed"] == 2 and sorted(report["shards"]) == ["00000", "00001"]


def test_rerun_writes_the_same_bytes(shards):
    storage, tmp_path = shards
    first = materialization(materialize([deduplicated_conversations], storage, tmp_path / "dagster"), ASSET)
    second = materialization(materialize([deduplicated_conversations], storage, tmp_path / "dagster2"), ASSET)
    assert (second["path"], second["content_hash"]) == (first["path"], first["content_hash"])  # content-addressed
    assert second["new_shards"] == [] and second["signatures_computed"] == 0  # nothing new: the state is reused
    assert sha256_file(first["path"]) == first["content_hash"]


def test_bad_row_in_a_new_shard_fails_naming_the_shard_row_and_field(shards):
    storage, tmp_path = shards
    good = materialization(materialize([deduplicated_conversations], storage, tmp_path / "dagster"), ASSET)
    bad = storage.write_table(MAGPIE_CONVERSATIONS, with_bad_role(shard(2, [text(200 + i) for i in range(3)]), 1),
                              name="shard-00002")
    result = materialize([deduplicated_conversations], storage, tmp_path / "dagster2")
    assert not result.success
    text_ = failure_text(result)
    assert (f"asset 'magpie_conversations', table 'shard-00002' ({bad.path}): row 1 (conversation_id "
            "'00002-0000001'): messages[1].role: 'bot' is not one of system/user/assistant") in text_, text_
    assert str(storage.table_path(ASSET)) == good["path"]  # the previous output stays current


def test_semantic_duplicates_go_to_rejected_and_are_reported_apart_from_minhash(tmp_path):
    """Semantic pass on (WordLlama, 0.82): shard 0 holds a reworded instruction (cosine 0.93) and a MinHash copy;
    shard 1 rewords a row kept in shard 0 (0.90), which wins. The second run embeds shard 1's rows only."""
    storage = DataStorage(root=str(tmp_path / "data"))
    first = ["How do I bake sourdough bread at home?", "Write a Python function that checks whether a number is prime.",
             "What is the process for baking sourdough bread at home?", "Explain how a rainbow forms after the rain."]
    answers = [text(i) for i in range(4)]
    rows = [conversation(i, q, a, shard=0) for i, (q, a) in enumerate(zip(first, answers, strict=True))]
    rows.append(conversation(4, first[3], answers[3].upper() + "!", shard=0))  # MinHash's near-duplicate of row 3
    storage.write_table(MAGPIE_CONVERSATIONS, frame(rows), name="shard-00000")
    config = {ASSET: {"semantic": {"enabled": True}}}
    one = materialization(materialize([deduplicated_conversations], storage, tmp_path / "d1", config), ASSET)
    assert (one["rows_removed_minhash"], one["rows_removed_semantic"]) == (1, 1)
    second = ["Write a Python function that tests if a number is prime.", "List the planets of the solar system."]
    storage.write_table(MAGPIE_CONVERSATIONS, frame([conversation(i, q, text(50 + i), shard=1)
                                                     for i, q in enumerate(second)]), name="shard-00001")
    result = materialize([deduplicated_conversations], storage, tmp_path / "d2", config)
    assert result.success, failure_text(result)
    metadata = materialization(result, ASSET)
    rejected = storage.read_table(ASSET, "rejected")
    assert rejected.select("conversation_id", "duplicate_of", "reason").rows() == [
        ("00000-0000004", "00000-0000003", REASON_NEAR_DUPLICATE),
        ("00000-0000002", "00000-0000000", SEMANTIC),
        ("00001-0000000", "00000-0000001", SEMANTIC)]
    assert rejected.filter(reason=SEMANTIC)["similarity"].round(2).to_list() == [0.93, 0.9]
    assert metadata["dagster/row_count"] == 4 and metadata["rows_in"] == 7
    assert (metadata["rows_removed_minhash"], metadata["rows_removed_semantic"]) == (1, 2)
    semantic = metadata["semantic"]
    assert semantic["model"] == "wordllama-l2-supercat-256" and semantic["threshold"] == 0.82
    assert semantic["texts_embedded"] == 2 and semantic["index_rows"] == 4  # shard 1 only; kept rows indexed
    assert "| 00001-0000000 | 00000-0000001 | 0.89" in metadata["semantic_examples"]
    assert "checks whether a number is prime" in metadata["semantic_examples"]
    report = storage.read_json(ASSET, "report")
    assert report["removed_by_reason"] == {REASON_NEAR_DUPLICATE: 1, SEMANTIC: 2}
    assert report["semantic"]["rows_removed"] == 2 and report["shards"]["00001"]["rows_removed_semantic"] == 1
    assert list((tmp_path / "data" / "embeddings").rglob("*.parquet"))  # the (model hash, text hash) cache
