"""`filtered_conversations` through Dagster on a tiny decontaminated table written through `DataStorage`, with the
tiny model as teacher and student (their special tokens are the template-leak rule's)."""

import pytest

from assets.common.models.chat_template import special_token_strings
from assets.common.orchestration.resources import (
    BASE_MODEL,
    DECONTAMINATED_CONVERSATIONS,
    FILTERED_CONVERSATIONS,
    MODEL_MANIFEST,
    TEACHER_MODEL,
    DataStorage,
)
from assets.filtering.assets import filtered_conversations
from tests.asset_runs import assert_names_its_tables, conversation, failure_text, frame, materialization, materialize

ASSET = FILTERED_CONVERSATIONS.to_user_string()
QUESTION = "Could you explain how tides work, please?"
ANSWER = "Tides come from the Moon's gravity pulling on the oceans, with the Sun adding a smaller pull."
REJECTED = {  # row -> (the first rule it fails, a piece of the detail)
    1: ("truncated", "finish_reasons[1] = 'length' (not 'stop') in the response of turn 1"),
    2: ("template_leak", "<|im_start|>"),
    3: ("length", "messages[0]"),
    5: ("repetition", "messages[1]"),
}


@pytest.fixture
def tables(tmp_path, tiny_model_dir):
    storage = DataStorage(root=str(tmp_path / "data"))
    from transformers import AutoTokenizer

    special = special_token_strings(AutoTokenizer.from_pretrained(tiny_model_dir))
    for model in (TEACHER_MODEL, BASE_MODEL):  # the tiny model is both, as in the end-to-end test
        storage.write_json(model, MODEL_MANIFEST, {"path": str(tiny_model_dir), "name": "tiny", "content_hash": "h",
                                                   "special_tokens": special})
    rows = [conversation(i, f"{QUESTION} (case {i})", f"{ANSWER} Case {i}.") for i in range(7)]
    rows[1]["finish_reasons"] = ["stop", "length"]
    rows[2] = conversation(2, QUESTION, f"{ANSWER} <|im_start|>user")
    rows[3] = conversation(3, "Tides?", ANSWER)
    rows[5] = conversation(5, QUESTION, "\n".join(["The Moon pulls the sea."] * 6))
    rows[6] = conversation(6, QUESTION, ANSWER, system="You are a patient teacher.")
    storage.write_table(DECONTAMINATED_CONVERSATIONS, frame(rows))
    return storage, tmp_path


def test_failing_rows_are_rejected_with_reasons_and_metadata_matches_the_table(tables):
    storage, tmp_path = tables
    result = materialize([filtered_conversations], storage, tmp_path / "dagster")
    assert result.success
    metadata = materialization(result, ASSET)
    kept, rejected = storage.read_table(ASSET), storage.read_table(ASSET, "rejected")
    assert_names_its_tables(metadata, storage, ASSET, rows=kept.height)
    assert kept.height == 3 and metadata["rows_in"] == 7 and metadata["rows_rejected"] == rejected.height == 4
    assert kept["row_index"].to_list() == [0, 4, 6]
    assert {r["row_index"]: r["reason"] for r in rejected.iter_rows(named=True)} == {
        row: reason for row, (reason, _) in REJECTED.items()}
    for r in rejected.iter_rows(named=True):
        assert REJECTED[r["row_index"]][1] in r["detail"], r
    report = storage.read_json(ASSET, "report")
    assert report["rejected_by_reason"] == metadata["rejected_by_reason"] == {
        "length": 1, "repetition": 1, "template_leak": 1, "truncated": 1}
    assert report["truncated_by_message"] == metadata["truncated_by_message"] == {
        "instruction": 0, "response": 1, "unknown": 0}
    assert [step["rows_out"] for step in report["funnel"]] == [7, 6, 5, 4, 3]
    assert "<|im_start|>" in report["thresholds"]["special_tokens"]


def test_rerun_writes_the_same_bytes(tables):
    storage, tmp_path = tables
    first = materialization(materialize([filtered_conversations], storage, tmp_path / "dagster"), ASSET)
    rejected = storage.table_path(ASSET, "rejected")
    second = materialization(materialize([filtered_conversations], storage, tmp_path / "dagster2"), ASSET)
    assert (second["path"], second["content_hash"]) == (first["path"], first["content_hash"])
    # the second run reuses the shard's verdicts (a new shard into a kept state: test_filtering_incremental.py)
    assert (first["shards_computed"], first["shards_reused"], second["shards_computed"], second["shards_reused"]) == (
        1, 0, 0, 1)
    assert storage.table_path(ASSET, "rejected") == rejected


def test_bad_input_row_fails_naming_asset_row_and_field(tables):
    """A conversation opening with an assistant message breaks the schema: the stage fails on read (the filters'
    `empty` rule never sees it)."""
    storage, tmp_path = tables
    rows = [conversation(i, f"{QUESTION} ({i})", ANSWER) for i in range(3)]
    rows[2]["messages"] = rows[2]["messages"][::-1]
    bad = storage.write_table(DECONTAMINATED_CONVERSATIONS, frame(rows))
    result = materialize([filtered_conversations], storage, tmp_path / "dagster")
    assert not result.success
    text = failure_text(result)
    assert (f"asset 'decontaminated_conversations', table 'data' ({bad.path}): row 2 (conversation_id "
            "'00000-0000002'): messages[0].role: 'assistant' where 'user' is expected") in text, text
    assert not storage.has(ASSET, "data")
