"""`decontaminated_conversations` through Dagster on a tiny deduplicated table and a tiny eval table written through
`DataStorage`: metadata against the written tables, a re-run's bytes, and the input schema check. (Removal
versus the blocking check, with the bundled eval sets, is tests/decontamination/test_decontam_gate.py.)"""

import polars as pl
import pytest

from assets.common.data.storage import sha256_file
from assets.common.orchestration.resources import (
    DECONTAMINATED_CONVERSATIONS,
    DEDUPLICATED_CONVERSATIONS,
    EVAL_SETS,
    DataStorage,
)
from assets.decontamination.assets import decontaminated_conversations
from assets.decontamination.config import REASON_CONTAMINATION
from assets.eval_sets.core import EVAL_SET_SCHEMA
from tests.asset_runs import assert_names_its_tables, conversation, failure_text, frame, materialization
from tests.asset_runs import materialize as materialize_with

# the semantic detector on the fastest registered model (the default, multilingual-e5-small, runs at a few texts/s on
# this loaded CPU); tests/decontamination/test_decontam_semantic.py covers that detector
SEMANTIC = {"decontaminated_conversations": {"semantic": {"model": "wordllama-l2-supercat-256"}}}


def materialize(selection, storage, home):
    return materialize_with(selection, storage, home, config=SEMANTIC)

ASSET = DECONTAMINATED_CONVERSATIONS.to_user_string()
EVAL_TEXT = ("A farmer has seventeen sheep and all but nine run away through the broken gate at dawn; how many sheep "
             "does the farmer still have in the field?")


@pytest.fixture
def tables(tmp_path):
    """Six clean conversations; row 4's answer quotes the eval question, row 2's question is the eval question."""
    storage = DataStorage(root=str(tmp_path / "data"))
    rows = [conversation(i, f"Tell me something calm about topic number {i}, please.",
                         f"Here is a plain and honest paragraph about topic {i}, written for a curious reader.")
            for i in range(6)]
    rows[2] = conversation(2, EVAL_TEXT, "Nine sheep are left, since all but nine ran away.")
    rows[4] = conversation(4, "Give me a riddle.", f"Here is one: {EVAL_TEXT} The answer is nine.")
    storage.write_table(DEDUPLICATED_CONVERSATIONS, frame(rows))
    storage.write_table(EVAL_SETS, pl.DataFrame([{"benchmark": "riddles", "item_id": "r-1", "field": "prompt",
                                                  "text": EVAL_TEXT, "source": "test"}], schema=EVAL_SET_SCHEMA))
    return storage, tmp_path


def test_contaminated_rows_are_rejected_with_reasons_and_metadata_matches_the_table(tables):
    storage, tmp_path = tables
    result = materialize([decontaminated_conversations], storage, tmp_path / "dagster")
    assert result.success
    metadata = materialization(result, ASSET)
    kept, rejected = storage.read_table(ASSET), storage.read_table(ASSET, "rejected")
    assert_names_its_tables(metadata, storage, ASSET, rows=kept.height)
    assert kept.height == 4 and metadata["rows_in"] == 6 and metadata["rows_removed"] == rejected.height == 2
    assert rejected["conversation_id"].to_list() == ["00000-0000002", "00000-0000004"]
    assert rejected["reason"].unique().to_list() == [REASON_CONTAMINATION]
    assert all("riddles" in detail and "r-1" in detail for detail in rejected["detail"])
    assert kept["conversation_id"].to_list() == [f"00000-{i:07d}" for i in (0, 1, 3, 5)]
    report = storage.read_json(ASSET, "report")
    assert report["rows_in"] == 6 and report["rows_removed"] == 2
    assert report["benchmarks"]["riddles"]["rows_removed"] == 2
    assert "| riddles | 2 |" in metadata["per_benchmark"]


def test_rerun_writes_the_same_bytes(tables):
    storage, tmp_path = tables
    first = materialization(materialize([decontaminated_conversations], storage, tmp_path / "dagster"), ASSET)
    rejected = storage.table_path(ASSET, "rejected")
    second = materialization(materialize([decontaminated_conversations], storage, tmp_path / "dagster2"), ASSET)
    assert (second["path"], second["content_hash"]) == (first["path"], first["content_hash"])
    assert storage.table_path(ASSET, "rejected") == rejected


def test_bad_input_row_fails_naming_asset_row_and_field(tables):
    storage, tmp_path = tables
    df = storage.read_table(DEDUPLICATED_CONVERSATIONS)
    messages = df["messages"].to_list()
    messages[3] = [messages[3][0], {"role": "assistant", "content": "   "}]
    bad = storage.write_table(DEDUPLICATED_CONVERSATIONS, df.with_columns(
        pl.Series("messages", messages, dtype=df.schema["messages"])))
    result = materialize([decontaminated_conversations], storage, tmp_path / "dagster")
    assert not result.success
    text = failure_text(result)
    assert (f"asset 'deduplicated_conversations', table 'data' ({bad.path}): row 3 (conversation_id "
            "'00000-0000003'): messages[1].content: empty or blank (expected a non-empty string)") in text, text
    assert not storage.has(ASSET, "data")


def _shard_one(storage: DataStorage) -> pl.DataFrame:
    """The deduplicated table with a second shard: one of its rows quotes the eval question."""
    rows = [conversation(i, f"Another calm question about subject {i}, if you please.",
                         f"A plain answer about subject {i}, for a curious reader of any age.", shard=1)
            for i in range(4)]
    rows[1] = conversation(1, "Riddle time.", f"{EVAL_TEXT} Nine, of course.", shard=1)
    return pl.concat([storage.read_table(DEDUPLICATED_CONVERSATIONS), frame(rows)])


def _stored_hashes(storage: DataStorage) -> list[str]:
    """The current kept table, rejected table and report: file names are (prefixes of) their SHA-256."""
    folders = [storage.asset_dir(ASSET) / name for name in ("data", "rejected", "report")]
    return [sha256_file(folder / (folder / "CURRENT").read_text().strip()) for folder in folders]


def test_a_new_shard_is_checked_alone_and_the_output_equals_a_full_check(tables):
    storage, tmp_path = tables
    first = materialization(materialize([decontaminated_conversations], storage, tmp_path / "d1"), ASSET)
    assert first["rebuilt"] and first["rebuild_reason"] == "no previous state" and first["new_shards"] == ["0"]
    table = _shard_one(storage)
    storage.write_table(DEDUPLICATED_CONVERSATIONS, table)
    second = materialization(materialize([decontaminated_conversations], storage, tmp_path / "d2"), ASSET)
    assert (second["new_shards"], second["reused_shards"], second["rebuilt"]) == (["1"], 1, False)
    assert second["rechecked_rows"] == 0 and second["rebuild_reason"] == ""
    assert second["rows_in"] == 10 and second["rows_removed"] == 3
    fresh = DataStorage(root=str(tmp_path / "fresh"))
    fresh.write_table(DEDUPLICATED_CONVERSATIONS, table)
    fresh.write_table(EVAL_SETS, storage.read_table(EVAL_SETS))
    full = materialization(materialize([decontaminated_conversations], fresh, tmp_path / "d3"), ASSET)
    assert full["rebuilt"] and full["new_shards"] == ["0", "1"]
    assert _stored_hashes(storage) == _stored_hashes(fresh)


def test_a_changed_eval_set_checks_everything_again(tables):
    storage, tmp_path = tables
    materialize([decontaminated_conversations], storage, tmp_path / "d1")
    eval_df = storage.read_table(EVAL_SETS)
    storage.write_table(EVAL_SETS, eval_df.with_columns(pl.lit("riddles-v2").alias("benchmark")))
    again = materialization(materialize([decontaminated_conversations], storage, tmp_path / "d2"), ASSET)
    assert again["rebuilt"] and again["rebuild_reason"] == "the eval sets changed" and again["new_shards"] == ["0"]
