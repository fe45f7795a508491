"""Teacher and student with different tokenizers, through Dagster up to the trained model: the tiny ChatML chat
model writes the data (vLLM), a tiny *base* model with another vocabulary and no chat template is fine-tuned on it
under the registry's Gemma template. Data passes between them as messages, never as token ids."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from transformers import AutoTokenizer

from assets.common.models.chat_template import read_chat_template
from assets.common.models.templates import registered_template
from assets.common.orchestration.resources import GENERATION_SHARDS, DataStorage, ExternalInputs, VLLMEngine
from pipelines.definitions import ASSET_CHECKS, ASSETS, defs
from tests.test_e2e import tiny_run_config
from tests.tiny_model import build_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]
SHARD = "00000"
GRAPH = defs.resolve_asset_graph()
UP_TO_TRAINING = [key for key in GRAPH.toposorted_asset_keys if GRAPH.get(key).is_materializable
                  and key.to_user_string() not in ("assistant_evaluation", "promoted_model")]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_base") / "tiny-base", vocab_size=768, seed=1, base=True)


@pytest.fixture(scope="module")
def run(tiny_model_dir, student_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_student")
    storage = DataStorage(root=str(root / "data"))
    config = tiny_run_config(tiny_model_dir)
    config["ops"]["base_model"] = {"config": {"path": str(student_dir), "chat_template": "gemma"}}
    config["ops"].pop("assistant_evaluation")
    assets = [a for a in ASSETS if set(a.keys) & set(UP_TO_TRAINING)]
    checks = [c for c in ASSET_CHECKS if {k.asset_key for k in c.check_keys} <= set(UP_TO_TRAINING)]
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        instance.add_dynamic_partitions(GENERATION_SHARDS.name, [SHARD])
        result = dg.materialize(
            [*assets, *checks],
            resources={"storage": storage, "engine": VLLMEngine(max_model_len=2048, cpu_kv_cache_gb=1),
                       "inputs": ExternalInputs()},
            run_config=config, instance=instance, partition_key=SHARD,
        )
        assert result.success
        materializations = {key.to_user_string(): instance.get_latest_materialization_event(key).asset_materialization
                            for key in UP_TO_TRAINING}
        return storage, materializations, result.get_asset_check_evaluations()


def test_the_two_models_have_different_vocabularies(tiny_model_dir, student_dir, run):
    _, materializations, _ = run
    teacher, student = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(student_dir)
    text = "Write a short poem about the sea."
    assert len(teacher) != len(student) and teacher(text)["input_ids"] != student(text)["input_ids"]
    hashes = {key: materializations[key].metadata["content_hash"].value for key in ("teacher_model", "base_model")}
    assert hashes["teacher_model"] != hashes["base_model"]


def test_the_student_is_trained_on_the_teachers_messages_in_its_own_format(run):
    storage, materializations, checks = run
    model_dir = Path(materializations["sft_model"].metadata["model_dir"].path)
    rows = pl.read_parquet(model_dir / "train_rows.parquet")
    generated = storage.read_table("magpie_conversations", f"shard-{SHARD}")
    joined = rows.join(generated, on="conversation_id", how="inner", suffix="_teacher")
    assert joined.height == rows.height > 0
    assert joined["messages"].to_list() == joined["messages_teacher"].to_list()  # text, not token ids, crossed over
    # the chosen template, byte for byte, with its markers as new single tokens of the student
    assert read_chat_template(model_dir) == registered_template("gemma").text
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for marker in ("<start_of_turn>", "<end_of_turn>"):
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1, marker
    assert tokenizer.eos_token == "<end_of_turn>"
    stop = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in (stop if isinstance(stop, list) else [stop])
    lineage = json.loads((model_dir / "lineage.json").read_text())
    student = lineage["assets"]["base_model"]["documents"]["manifest"]["content"]
    assert student["template"]["name"] == "gemma" and len(student["added_token_ids"]) == 2
    # every trained row re-tokenizes with the model dir's own tokenizer and template to the digest trained on
    (served,) = [c for c in checks if c.check_name == "served_format_matches_training"]
    assert served.passed and served.metadata["rows_retokenized"].value > 0
