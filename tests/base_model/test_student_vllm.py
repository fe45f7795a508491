"""vLLM serves a prepared student directory as it was prepared: resized embeddings load, prompts come from the saved
template, and generation stops on the end-of-turn id of generation_config.json without being told."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from assets.base_model.core import prepare_student
from assets.common.models.directories import prepare_local
from assets.common.models.engine import EngineConfig, SamplingConfig, VLLMGenerator
from assets.common.models.templates import read_chat_markers
from training.markers import initialise_marker_rows

pytestmark = pytest.mark.vllm


def test_vllm_stops_on_the_end_of_turn_token_of_the_generation_config(tiny_model_dir, tmp_path):
    student = prepare_student(prepare_local(tiny_model_dir), "gemma", tmp_path / "students")
    path = student.model.path
    record = read_chat_markers(path)
    # the new <end_of_turn> starts as the tiny model's own stop token (what training does before its first step)
    served = tmp_path / "served"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    initialise_marker_rows(model, tokenizer, record.rows_to_initialise, end_of_turn_id=record.end_of_turn_id,
                           text_end_id=record.text_end_id)
    model.save_pretrained(served)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        (served / name).write_bytes((path / name).read_bytes())
    eos_ids = json.loads((served / "generation_config.json").read_text())["eos_token_id"]
    assert eos_ids == [record.end_of_turn_id, record.text_end_id] == [1025, 2]

    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Question {i}?"}], tokenize=True,
                                             add_generation_prompt=True, return_dict=True)["input_ids"]
               for i in range(24)]
    assert prompts[0][:2] == [1, 1024]  # <|im_start|> (the tiny's bos) then <start_of_turn>
    with VLLMGenerator(str(served), EngineConfig(max_model_len=512, cpu_kv_cache_gb=1), seed=0) as engine:
        completions = engine.generate(prompts, SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=200),
                                      stop_token_ids=[], seeds=list(range(len(prompts))))
    assert all(c.finish_reason == "stop" for c in completions), [c.finish_reason for c in completions]
    last = [c.token_ids[-1] for c in completions]
    assert set(last) <= set(eos_ids)
    # equal logits: about half stop on <end_of_turn>, the rest on <|im_end|> (listed only in generation_config)
    assert last.count(record.end_of_turn_id) >= 4 and last.count(record.text_end_id) >= 4
