"""The whole graph through Dagster on the tiny model: real vLLM engine, real TRL training, real Parquet."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from assets.common.storage import sha256_file
from pipelines.definitions import ASSET_CHECKS
from pipelines.definitions import ASSETS as ALL_ASSETS
from pipelines.partitions import GENERATION_SHARDS
from pipelines.resources import DataStorage, VLLMEngine
from training.chat_template import read_chat_template

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]
SHARD = "00000"

ASSETS = ["base_model", "eval_sets", "magpie_conversations", "deduplicated_conversations",
          "decontaminated_conversations", "filtered_conversations", "sft_mixture", "sft_model"]


def tiny_run_config(model_dir) -> dict:
    return {
        "ops": {
            "base_model": {"config": {"path": str(model_dir)}},
            "magpie_conversations": {"config": {
                "num_conversations": 48, "num_turns": 1, "seed": 1,
                "instruction": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 48},
                "response": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64},
            }},
            "filtered_conversations": {"config": {"min_instruction_chars": 1, "min_response_chars": 1}},
            "sft_mixture": {"config": {"validation_fraction": 0.2, "seed": 0}},
            "sft_model": {"config": {"model_name": "tiny-sft", "num_train_epochs": 1,
                                     "per_device_train_batch_size": 8, "max_length": 256}},
        }
    }


@pytest.fixture(scope="module")
def pipeline_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    storage = DataStorage(root=str(root / "data"))
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        instance.add_dynamic_partitions(GENERATION_SHARDS.name, [SHARD])
        result = dg.materialize(
            [*ALL_ASSETS, *ASSET_CHECKS],
            resources={"storage": storage, "engine": VLLMEngine(max_model_len=1024, cpu_kv_cache_gb=1)},
            run_config=tiny_run_config(tiny_model_dir),
            instance=instance,
            partition_key=SHARD,
        )
        assert result.success
        materializations = {
            key: instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization
            for key in ASSETS
        }
        checks = result.get_asset_check_evaluations()
    return storage, materializations, checks, tiny_model_dir


def test_every_asset_reports_path_row_count_and_hash(pipeline_run):
    storage, materializations, _, _ = pipeline_run
    for key in ASSETS:
        metadata = materializations[key].metadata
        assert "path" in metadata, key
        assert "content_hash" in metadata and len(metadata["content_hash"].value) == 64, key
        if key != "base_model":
            assert metadata["dagster/row_count"].value >= 0, key
    for key in ASSETS[1:-1]:  # tables: the hash in metadata is the hash of the file on disk
        metadata = materializations[key].metadata
        assert sha256_file(metadata["path"].value) == metadata["content_hash"].value, key
        assert pl.read_parquet(metadata["path"].value).height == metadata["dagster/row_count"].value, key


def test_generation_rows_carry_provenance(pipeline_run, tiny_model_dir):
    storage, materializations, _, _ = pipeline_run
    df = storage.read_table("magpie_conversations", f"shard-{SHARD}")
    assert df.height > 24  # the tiny model ends most turns on its own
    assert df["engine"].unique().to_list() == ["vllm-cpu"]
    base_hash = materializations["base_model"].metadata["content_hash"].value
    assert df["generator_model_hash"].unique().to_list() == [base_hash]
    first = df.row(0, named=True)
    assert [m["role"] for m in first["messages"]][-2:] == ["user", "assistant"]
    assert all(m["content"] for m in first["messages"])


def test_model_directory_has_weights_adapter_template_and_lineage(pipeline_run):
    storage, materializations, checks, model_dir_in = pipeline_run
    metadata = materializations["sft_model"].metadata
    model_dir = metadata["model_dir"].path
    from pathlib import Path

    model_dir = Path(model_dir)
    assert (model_dir / "model.safetensors").exists()
    assert (model_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (model_dir / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "## Data" in (model_dir / "README.md").read_text()  # the model card
    assert read_chat_template(model_dir) == read_chat_template(model_dir_in)  # byte-identical
    assert Path(metadata["lineage_path"].path) == model_dir / "lineage.json"
    lineage = json.loads((model_dir / "lineage.json").read_text())
    assert lineage["base_model"]["content_hash"] == materializations["base_model"].metadata["content_hash"].value
    for key in ASSETS[1:-1]:
        entry = lineage["assets"][key]
        if key == "magpie_conversations":  # partitioned: one entry per generation shard
            entry = entry["shards"][SHARD]
        assert entry["content_hash"] == materializations[key].metadata["content_hash"].value, key
        assert entry["row_count"] == materializations[key].metadata["dagster/row_count"].value, key
    generation = lineage["assets"]["magpie_conversations"]["shards"][SHARD]["report"]
    (prefix,) = generation["pre_query_templates"]  # no system prompts configured: one prefix
    assert prefix.endswith("<|im_end|>\n<|im_start|>user\n") and "MagpieSentinel" not in prefix
    assert generation["engine"]["name"] == "vllm-cpu" and generation["seed"] == 1
    assert lineage["training"]["config"]["lora_r"] == 16
    assert lineage["metrics"]["train_loss"] > 0
    assert lineage["code_version"]["packages"]["trl"].startswith("1.16")
    assert [c.passed for c in checks if c.check_name == "chat_template_matches_base"] == [True]


def test_post_training_checks_ran_on_the_trained_model(pipeline_run):
    _, _, checks, _ = pipeline_run
    by_name = {c.check_name: c for c in checks}
    forgetting = by_name["general_text_forgetting"]
    assert forgetting.metadata["perplexity_base"].value > 1 and forgetting.metadata["perplexity_tuned"].value > 1
    assert forgetting.passed == (forgetting.metadata["relative_increase"].value <= 0.25)
    stops = by_name["answers_stop_on_eos"]
    assert stops.passed, stops.metadata["runaway_prompts"].value  # the tiny model ends its turns on its own
    assert "What is the capital of France?" in stops.metadata["base_vs_tuned"].value
    assert by_name["no_eval_overlap"].passed


def test_train_rows_trace_back_to_generation(pipeline_run):
    storage, materializations, _, _ = pipeline_run
    from pathlib import Path

    model_dir = Path(materializations["sft_model"].metadata["model_dir"].path)
    rows = pl.read_parquet(model_dir / "train_rows.parquet")
    generated = storage.read_table("magpie_conversations", f"shard-{SHARD}")
    joined = rows.join(generated, on=["shard", "row_index"], how="left", suffix="_gen")
    assert joined["conversation_id_gen"].null_count() == 0
    assert (joined["conversation_id"] == joined["conversation_id_gen"]).all()
    assert rows.filter(pl.col("split") == "train").height == materializations["sft_model"].metadata[
        "dagster/row_count"].value


def test_trained_model_loads_and_generates(pipeline_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, materializations, _, _ = pipeline_run
    model_dir = materializations["sft_model"].metadata["model_dir"].path
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
