"""`sft_model` records the same lineage whichever kind of run trains it: a run of the whole graph up to training, and
a run of `sft_model` alone, a selection of the code location's asset job (how the automation sensor, `dagster asset
materialize --select sft_model` and the UI's "Materialize selected" launch it), in which the upstream assets are
stand-ins. Real Dagster instance, real dataset assets on the tiny model, the fake engine in place of vLLM, real TRL
training for two steps."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.common.orchestration.resources import GENERATION_SHARDS, SFT_MODEL
from assets.generation import assets as generation_assets
from pipelines.definitions import build_definitions
from tests.automation_runs import failures
from tests.fake_generator import FakeGenerator

SHARD = "00000"
TINY_TRAINING = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 256, "early_stopping_patience": 0}


def profile(tiny_model_dir, data) -> dict:
    return {
        "ops": {
            "teacher_model": {"config": {"path": str(tiny_model_dir)}},
            "base_model": {"config": {"path": str(tiny_model_dir), "chat_template": "tokenizer"}},
            "eval_sets": {"config": {"benchmarks": ["humaneval"]}},
            "decontaminated_conversations": {"config": {"semantic": {"enabled": False}}},  # its own tests cover it
            "magpie_conversations": {"config": {"num_conversations": 40, "batch_size": 20}},
            "filtered_conversations": {"config": {"min_instruction_chars": 1, "min_response_chars": 1}},
            "tagged_conversations": {"config": {"use_judge": False, "calibrate": False}},
            "sft_mixture": {"config": {"validation_fraction": 0.2}},
            "sft_model": {"config": TINY_TRAINING},
        },
        "resources": {"storage": {"config": {"root": str(data)}}},
    }


def named(model_name: str) -> dict:
    return {"ops": {"sft_model": {"config": {**TINY_TRAINING, "model_name": model_name}}}}


def sft_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == SFT_MODEL]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage_runs")
    defs = build_definitions(profile(tiny_model_dir, root / "data"), "test profile")
    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    upstream = [k for k in graph.toposorted_asset_keys
                if graph.get(k).is_materializable and k in set(graph.upstream_key_iterator(SFT_MODEL))]
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance, pytest.MonkeyPatch.context() as patch:
        patch.setattr(generation_assets, "VLLMGenerator", lambda *args, **kwargs: FakeGenerator())
        instance.add_dynamic_partitions(GENERATION_SHARDS.name, [SHARD])
        whole = job.execute_in_process(asset_selection=[*upstream, SFT_MODEL], partition_key=SHARD,
                                       instance=instance, run_config=named("whole"), raise_on_error=False)
        assert whole.success, failures(whole)
        alone = job.execute_in_process(asset_selection=[SFT_MODEL], instance=instance, run_config=named("alone"),
                                       raise_on_error=False)
        assert alone.success, failures(alone)
        hashes = {key.to_user_string(): instance.get_latest_materialization_event(key)
                  .asset_materialization.metadata["content_hash"].value for key in upstream}
        return sft_metadata(whole), sft_metadata(alone), hashes


def lineage_of(metadata: dict) -> dict:
    return json.loads(Path(metadata["lineage_path"]).read_text())


def test_a_run_of_sft_model_alone_records_the_same_lineage_as_the_whole_graph(two_runs):
    whole, alone, hashes = two_runs
    assert whole["model_dir"] != alone["model_dir"]  # two models, two lineage.json files
    whole_lineage, alone_lineage = lineage_of(whole), lineage_of(alone)
    assert list(alone_lineage["assets"]) == list(whole_lineage["assets"])  # in the same (topological) order
    assert sorted(alone_lineage["assets"]) == sorted(hashes)  # every upstream asset of the graph
    assert alone_lineage["assets"] == whole_lineage["assets"]  # the same tables, paths and content hashes
    for name, content_hash in hashes.items():  # each as its latest materialization recorded it
        snapshot = alone_lineage["assets"][name]
        recorded = [t["content_hash"] for t in snapshot["tables"].values()]
        recorded += [d["content"].get("content_hash") for d in snapshot["documents"].values()]
        recorded += [d["content_hash"] for d in snapshot["documents"].values()]
        assert content_hash in recorded, name
    # the observed inputs are named with the assets whose manifests and reports record their hashes
    assert alone_lineage["external_inputs"] == whole_lineage["external_inputs"] == {
        "teacher_model_files": ["teacher_model"], "base_model_files": ["base_model"],
        "user_eval_files": ["eval_sets"], "user_sft_files": ["user_sft_sources"]}


def test_the_ui_lineage_summary_is_the_same_from_both_runs(two_runs):
    whole, alone, hashes = two_runs
    assert alone["lineage"] == whole["lineage"]
    for name in ("teacher_model", "base_model", "magpie_conversations", "decontaminated_conversations", "sft_mixture"):
        assert hashes[name] in alone["lineage"], name
    assert "`teacher_model_files` (hash recorded by teacher_model)" in alone["lineage"]


def test_sft_model_reads_every_row_the_mixture_tokenized(two_runs):
    """The mixture's token counter kept every row's ids and masks; training tokenizes none of them again (the same
    examples either way: tests/training/test_token_cache.py)."""
    for run in two_runs[:2]:
        assert run["token_rows_from_cache"] == run["new_train_rows"] + run["validation_rows"] > 0
