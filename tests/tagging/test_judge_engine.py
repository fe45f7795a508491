"""The judge on the real vLLM engine with the tiny test model. Its weights are random: its answers are JSON matching
the schema only because vLLM's structured-output decoding (xgrammar) constrains every token. A budget too small for
the JSON cuts the answer, which is then counted as unparsed, not dropped."""

from __future__ import annotations

import json

import pytest

from assets.common.data.taxonomy import TASKS
from assets.common.models.engine import EngineConfig, VLLMGenerator
from assets.tagging.judge import (
    PARSED,
    UNPARSED,
    JudgeConfig,
    judge_stop_token_ids,
    load_prompt,
    parse_judgement,
    run_judge,
)
from tests.tagging.test_tagging_core import table

pytestmark = pytest.mark.vllm
ROWS = table([("What is the capital of France?", "Paris."), ("Write a haiku about rain.", "Rain taps the roof."),
              ("Fix my Python loop.", "Use range(len(xs))."), ("Hello!", "Hi, how can I help?")])


@pytest.fixture(scope="module")
def judged(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = load_prompt("judge-v1")
    stops = judge_stop_token_ids(tokenizer)
    with VLLMGenerator(str(tiny_model_dir), EngineConfig(max_model_len=2048, cpu_kv_cache_gb=1), seed=0) as engine:
        full = run_judge(engine, tokenizer, ROWS, JudgeConfig(max_tokens=320, batch_size=3), prompt, stops, 1700)
        cut = run_judge(engine, tokenizer, ROWS, JudgeConfig(max_tokens=16), prompt, stops, 2000)
    return full, cut


def test_a_batch_parses_through_the_schema(judged):
    (labels, stats), _ = judged
    assert stats.batches == 2 and stats.rows == 4
    assert labels["judge_status"].to_list() == [PARSED] * 4, labels["judge_error"].to_list()
    assert set(labels["judge_category"].to_list()) <= set(TASKS)
    for name in ("difficulty", "instruction_quality", "response_quality"):
        assert labels[name].is_between(1, 5).all()
    for raw in labels["judge_raw"].to_list():  # compact JSON, fields in the schema's order, reason first
        assert list(json.loads(raw)) == ["reason", "category", "difficulty", "instruction_quality",
                                         "response_quality", "refusal"]
        assert " " not in raw.split('"category"')[1]  # no whitespace between JSON tokens
    assert stats.completion_tokens > 0 and stats.seconds > 0 and stats.to_dict()["tokens_per_second"] > 0


def test_an_answer_cut_by_max_tokens_is_counted_unparsed(judged):
    _, (labels, stats) = judged
    assert labels["judge_status"].to_list() == [UNPARSED] * 4
    assert stats.unparsed == 4 and stats.parsed == 0 and stats.to_dict()["parse_share"] == 0.0
    assert all(e.startswith("not JSON (cut at max_tokens)") for e in labels["judge_error"].to_list())
    assert all(raw.startswith('{"reason":"') for raw in labels["judge_raw"].to_list())  # constrained, then cut
    assert parse_judgement(labels["judge_raw"][0], "length")[0] is None
