"""User rows through the real graph: `user_sft_sources` → deduplication → decontamination with its blocking check,
materialized by Dagster on a generation shard and a user JSONL file written here."""

import json

import dagster as dg
import polars as pl
import pytest

from assets.common.orchestration.resources import MAGPIE_CONVERSATIONS, DataStorage, VLLMEngine
from assets.decontamination.assets import decontaminated_conversations, no_eval_overlap
from assets.dedup.assets import deduplicated_conversations
from assets.eval_sets.assets import eval_sets
from assets.eval_sets.core import load_bundled_eval_sets
from assets.filtering.assets import filtered_conversations
from assets.user_sources.assets import user_sft_sources
from tests.asset_runs import conversation, failure_text, frame, materialization

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def humaneval_prompt() -> str:
    humaneval = load_bundled_eval_sets(["humaneval"])
    return humaneval.filter((pl.col("item_id") == "HumanEval/0") & (pl.col("field") == "prompt"))["text"][0]


@pytest.fixture
def setup(tmp_path):
    """One generation shard of clean rows; a user file of clean rows, one copying a generated row and one that
    copies a HumanEval prompt."""
    storage = DataStorage(root=str(tmp_path / "data"))
    generated = [conversation(i, f"Tell me something calm about topic number {i}, please.",
                              f"Here is a plain and honest paragraph about topic {i}, written for a curious reader.")
                 for i in range(6)]
    storage.write_table(MAGPIE_CONVERSATIONS, frame(generated), name="shard-00000")
    records = [{"id": f"u{i}", "messages": [{"role": "user", "content": f"Which colour is hidden in riddle {i}?"},
                                            {"role": "assistant", "content": f"Riddle {i} hides a calm blue, since "
                                                                             "the sky is in every line."}]}
               for i in range(4)]
    records.append({"id": "copy", "messages": generated[2]["messages"]})
    records.append({"id": "leak", "messages": [
        {"role": "user", "content": f"Complete this function for me:\n\n{humaneval_prompt()}"},
        {"role": "assistant", "content": "Here is a loop over every pair that compares the distance."}]})
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return storage, tmp_path, path


def run(storage, home, path, selection, decontam=None):
    config = {"user_sft_sources": {"config": {"sources": [{"name": "mine", "path": str(path), "id_column": "id"}]}},
              "eval_sets": {"config": {"benchmarks": ["humaneval"]}},
              # the string detectors (the semantic one has its own tests)
              "decontaminated_conversations": {"config": {"semantic": {"enabled": False}, **(decontam or {})}}}
    names = {key.to_user_string() for a in selection if isinstance(a, dg.AssetsDefinition) for key in a.keys}
    config = {name: value for name, value in config.items() if name in names}
    home.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(selection, resources={"storage": storage, "engine": VLLMEngine()},
                                run_config={"ops": config},
                                instance=instance, raise_on_error=False)
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        return result, checks, done


CHAIN = [user_sft_sources, deduplicated_conversations, eval_sets, decontaminated_conversations, no_eval_overlap]


def test_user_rows_are_deduplicated_and_decontaminated_like_generated_ones(setup):
    storage, tmp_path, path = setup
    result, checks, done = run(storage, tmp_path / "dagster", path, CHAIN)
    assert result.success, failure_text(result)
    dedup_rejected = storage.read_table("deduplicated_conversations", "rejected")
    assert dedup_rejected["conversation_id"].to_list() == ["user-mine-copy"]  # a copy of generated row 2
    rejected = storage.read_table("decontaminated_conversations", "rejected")
    assert rejected["conversation_id"].to_list() == ["user-mine-leak"]
    assert "humaneval" in rejected["detail"][0] and "HumanEval/0" in rejected["detail"][0]
    kept = storage.read_table("decontaminated_conversations")
    assert kept.filter(pl.col("source") == "mine")["source_id"].sort().to_list() == ["u0", "u1", "u2", "u3"]
    assert kept.filter(pl.col("source").is_null()).height == 6  # generated rows: no source
    assert checks["no_eval_overlap"].passed
    metadata = materialization(result, "user_sft_sources")
    assert metadata["dagster/row_count"] == 6


def test_a_user_leak_the_removal_misses_is_stopped_by_the_blocking_check(setup):
    storage, tmp_path, path = setup
    weak = {"ngram": 200, "min_words": 1000, "similarity_threshold": 0.0}  # a removal that cannot see the leak
    result, checks, done = run(storage, tmp_path / "dagster", path, [*CHAIN, filtered_conversations], weak)
    assert not checks["no_eval_overlap"].passed
    assert checks["no_eval_overlap"].metadata["leaks_found"].value == 1
    assert "user-mine-leak" in storage.read_table("decontaminated_conversations")["conversation_id"].to_list()
    assert "filtered_conversations" not in done and not result.success


def test_data_version_is_the_content_hash_and_a_bad_row_fails_naming_file_line_field(setup):
    storage, tmp_path, path = setup
    first, _, _ = run(storage, tmp_path / "a", path, [user_sft_sources])
    again, _, _ = run(storage, tmp_path / "b", path, [user_sft_sources])
    version = lambda r: r.get_asset_materialization_events()[0].materialization.tags["dagster/data_version"]  # noqa: E731
    assert version(first) == version(again) == materialization(first, "user_sft_sources")["sources_hash"]
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"id": "bad", "messages": [{"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": ""}]})
    path.write_text("\n".join(lines) + "\n")
    failed, _, _ = run(storage, tmp_path / "c", path, [user_sft_sources])
    assert not failed.success
    assert f"{path}:3: messages[1].content: ''" in failure_text(failed)


def test_no_sources_write_no_shard_until_one_must_be_emptied(setup):
    storage, tmp_path, path = setup
    none = {"user_sft_sources": {"config": {"sources": []}}}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        def once(config):
            return dg.materialize([user_sft_sources], resources={"storage": storage}, run_config={"ops": config},
                                  instance=instance)
        metadata = materialization(once(none), "user_sft_sources")
        assert not storage.shard_tables("user_sft_sources") and metadata["dagster/row_count"] == 0
        assert str(metadata["path"]).endswith(".json")  # the report: sources, rows, hash
        once({"user_sft_sources": {"config": {"sources": [{"name": "mine", "path": str(path)}]}}})
        assert storage.read_table("user_sft_sources", "shard-user").height == 6
        once(none)  # sources removed: the shard dedup reads is emptied, not left stale
        assert storage.read_table("user_sft_sources", "shard-user").height == 0


GOOD_ROW = json.dumps({"id": "a", "messages": [{"role": "user", "content": "Hi?"},
                                              {"role": "assistant", "content": "Hello."}]}).encode() + b"\n"


@pytest.mark.parametrize(("file", "content", "expected"), [
    ("latin.jsonl", GOOD_ROW + b'{"messages": "caf\xe9"}\n', ":2: not valid UTF-8 (byte 0xe9"),
    ("rows.parquet", b'{"messages": []}\n', ": cannot read as Parquet"),
    ("empty.jsonl", b"", ": user source 'mine' has no rows"),
])
def test_a_malformed_file_fails_the_run_naming_it_and_writes_nothing(setup, file, content, expected):
    """The three inputs a new user met as a bare UnicodeDecodeError, a bare Polars ComputeError and a silent 0-row
    source: the run fails with the file (and line) in its error, and no table or report is written."""
    storage, tmp_path, _ = setup
    path = tmp_path / file
    path.write_bytes(content)
    failed, _, done = run(storage, tmp_path / "dagster", path, [user_sft_sources])
    assert not failed.success and "user_sft_sources" not in done
    assert f"UserSourceError: {path}{expected}" in failure_text(failed)
    assert not storage.asset_dir("user_sft_sources").exists()  # nothing half-written
