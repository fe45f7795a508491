"""Tagging core: judge answers parsed or counted as unparsed, languages, refusals, label rules, diversity, funnel,
agreement with the planted set. The judge engine is faked here; tests/tagging/test_judge_engine.py runs vLLM."""

from __future__ import annotations

import json

import polars as pl
import pytest

from assets.common.data.rules import ROW
from assets.common.data.schema import CONVERSATION_SCHEMA, REJECTED_DETAIL, REJECTED_REASON
from assets.common.data.taxonomy import TASKS
from assets.common.text.language import DETECTORS, detect_languages
from assets.tagging.config import TaggingConfig
from assets.tagging.core import JudgeProvenance, refusal_rates, tag_and_filter, tag_rows
from assets.tagging.diversity import distinct_n, diversity_report, near_duplicate_rate
from assets.tagging.funnel import Stage, category_png, category_table, distributions_png, funnel_png, stage_table
from assets.tagging.judge import (
    FIELDS,
    JUDGE_COLUMNS,
    PARSED,
    UNPARSED,
    JudgeConfig,
    judge_schema,
    load_prompt,
    no_judge_labels,
    parse_judgement,
    run_judge,
)
from assets.tagging.labels import LABEL_RULES, filter_on_labels
from assets.tagging.planted import agreement, planted_rows, planted_table
from tests.tagging.judge_fakes import FakeJudge, answer

GOOD = answer()


def table(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    rows = [{"conversation_id": f"c{i}", "messages": [{"role": "user", "content": u},
                                                      {"role": "assistant", "content": a}],
             "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": 0, "row_index": i, "seed": 0,
             "generator_model": "m", "generator_model_hash": "h", "pre_query_template_hash": "p",
             "sampling_params": "{}", "engine": "e", "engine_version": "v"} for i, (u, a) in enumerate(pairs)]
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)


# ---- the judge's answer: schema and parsing ------------------------------------------------------------------


def test_schema_names_every_field_and_the_whole_taxonomy():
    schema = judge_schema()
    assert schema["required"] == list(FIELDS) and schema["additionalProperties"] is False
    assert schema["properties"]["category"]["enum"] == list(TASKS)
    labels, error = parse_judgement(GOOD)
    assert error is None and labels["category"] == "information_seeking" and labels["response_quality"] == 4


@pytest.mark.parametrize(("text", "finish", "error"), [
    ('{"reason":"ok","category":"math","difficulty":2,', "length", "not JSON (cut at max_tokens)"),
    ("Sure! The category is math.", "stop", "not JSON"),
    ("[1, 2]", "stop", "not a JSON object"),
    (answer(category="poetry"), "stop", "category 'poetry' is not in the taxonomy"),
    (answer(difficulty=6), "stop", "difficulty 6 is not an integer 1-5"),
    (answer(response_quality=True), "stop", "response_quality True is not an integer 1-5"),
    (answer(refusal="no"), "stop", "refusal is not a boolean"),
    (answer(reason="   "), "stop", "reason must be a non-empty string"),
    (answer(reason="x" * 161), "stop", "reason must be a non-empty string"),
    (json.dumps({**json.loads(GOOD), "extra": 1}), "stop", "fields"),
])
def test_malformed_answers_are_unparsed_with_the_reason(text, finish, error):
    labels, message = parse_judgement(text, finish)
    assert labels is None and message.startswith(error), message


def test_reason_is_one_printable_line():
    labels, _ = parse_judgement(answer(reason="First line.\nSecond  line."))
    assert labels["reason"] == "First line. Second line."
    raw = '{"reason":"tab\there\x04","category":"math","difficulty":2,"instruction_quality":3,' \
          '"response_quality":3,"refusal":false}'  # raw control characters, as xgrammar may let through
    labels, error = parse_judgement(raw)
    assert error is None and labels["reason"] == "tab here"


def test_prompt_file_is_versioned_and_hashed(tmp_path, monkeypatch):
    import assets.tagging.judge as judge

    prompt = load_prompt("judge-v1")
    assert "{conversation}" in prompt.user and len(prompt.hash) == 64
    assert load_prompt("judge-v1").hash == prompt.hash
    (tmp_path / "judge-v1.yaml").write_text((judge.PROMPTS_DIR / "judge-v1.yaml").read_text() + "\n# edited\n")
    monkeypatch.setattr(judge, "PROMPTS_DIR", tmp_path)
    assert load_prompt("judge-v1").hash != prompt.hash  # a changed file is a changed hash
    with pytest.raises(FileNotFoundError, match="known prompts"):
        load_prompt("judge-v9")


# ---- the judge on a (fake) engine --------------------------------------------------------------------------


def _judge(tiny_model_dir, df, respond, cfg=JudgeConfig(batch_size=2), max_prompt_tokens=100_000):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = FakeJudge(tokenizer, respond)
    labels, stats = run_judge(engine, tokenizer, df, cfg, load_prompt(cfg.prompt), [tokenizer.eos_token_id],
                              max_prompt_tokens)
    return engine, labels, stats


def test_judge_batches_parse_and_count_unparsed(tiny_model_dir):
    df = table([("What is 2+2?", "4."), ("Write a poem", "Roses."), ("Hello", "Hi!")])

    def respond(prompt: str):
        if "Write a poem" in prompt:
            return '{"reason":"cut', "length"
        return answer(category="math" if "2+2" in prompt else "other"), "stop"

    engine, labels, stats = _judge(tiny_model_dir, df, respond)
    assert [c["rows"] for c in engine.calls] == [2, 1]  # batch_size 2
    assert all(c["schema"] == judge_schema() for c in engine.calls)  # every request is schema-constrained
    assert engine.calls[0]["sampling"].temperature == 0.0
    assert labels.columns == list(JUDGE_COLUMNS)
    assert labels["judge_status"].to_list() == [PARSED, UNPARSED, PARSED]
    assert labels["judge_category"].to_list() == ["math", None, "other"]
    assert labels["judge_error"][1].startswith("not JSON (cut at max_tokens)")
    assert labels["judge_raw"][1] == '{"reason":"cut'  # kept for inspection
    assert (stats.rows, stats.parsed, stats.unparsed, stats.batches) == (3, 2, 1, 2)
    assert stats.completion_tokens == labels["judge_tokens"].sum() and stats.prompt_tokens > 0
    assert stats.to_dict()["parse_share"] == pytest.approx(2 / 3)


def test_a_prompt_over_the_context_is_unparsed_not_sent(tiny_model_dir):
    df = table([("short", "answer"), ("long " * 400, "answer")])
    engine, labels, stats = _judge(tiny_model_dir, df, lambda p: (GOOD, "stop"), max_prompt_tokens=1300)
    assert labels["judge_status"].to_list() == [PARSED, UNPARSED]
    assert labels["judge_error"][1].endswith("tokens > 1300 (max_model_len - max_tokens)")
    assert engine.calls[0]["rows"] == 1


# ---- languages and refusals ----------------------------------------------------------------------------------


# the one mixed text of the judge's planted rows: an English command (3 words) around a French question (4 words)
MIXED = {"fasttext": {"Translate into English: Où est la gare ?": "fr"}, "lingua": {}}


@pytest.mark.parametrize("detector", DETECTORS)
def test_planted_languages_are_identified(detector):
    items = planted_rows()
    texts = [i["user"] for i in items] + [i["assistant"] for i in items]
    expected = [MIXED[detector].get(text, item["language"]) for text, item in zip(texts, items * 2, strict=True)]
    assert detect_languages(texts, detector=detector) == expected


def test_code_and_short_texts_are_not_guessed():
    assert detect_languages(["ok", "```python\nprint('hello world, how are you')\n```", None]) == ["und"] * 3


def test_planted_refusals_are_flagged_by_the_phrase_rule_and_nothing_else_is():
    planted = planted_table()
    tagged = tag_rows(planted.drop("kind", "expected_category", "expected_quality", "expected_refusal",
                                   "expected_language"), no_judge_labels(planted.height), JudgeProvenance())
    assert tagged["refusal"].to_list() == planted["expected_refusal"].to_list()
    assert tagged["refusal_phrase"].is_not_null().to_list() == planted["expected_refusal"].to_list()


# ---- tagging: task, provenance, label rules --------------------------------------------------------------------


def test_task_is_the_judges_category_else_the_fallback_tagger():
    df = table([("Write a Python function to add two numbers.", "def add(a, b): return a + b"),
                ("Translate 'hello' into French.", "Bonjour")])
    labels = pl.concat([
        pl.DataFrame([dict.fromkeys(JUDGE_COLUMNS) | {"judge_status": PARSED, "judge_category": "tool_use",
                                                      "judge_refusal": True}], schema=JUDGE_COLUMNS),
        pl.DataFrame([dict.fromkeys(JUDGE_COLUMNS) | {"judge_status": UNPARSED}], schema=JUDGE_COLUMNS)])
    tagged = tag_rows(df, labels, JudgeProvenance("judge-m", "abc", "judge-v1", "123"))
    assert tagged["task"].to_list() == ["tool_use", "translation"]
    assert tagged["task_source"].to_list() == ["judge", "fallback"]
    assert tagged["refusal"].to_list() == [True, False]  # the judge's flag alone is enough
    assert tagged["judge_prompt_hash"].to_list() == ["123", "123"] and tagged["judge_model"][0] == "judge-m"
    rates = refusal_rates(tagged)
    assert rates[0] == {"task": "(all)", "rows": 2, "judge": 1, "phrase": 0, "flagged": 1, "rate": 0.5}


def _labelled(**overrides) -> pl.DataFrame:
    row = dict.fromkeys(JUDGE_COLUMNS) | {"judge_status": PARSED, "judge_category": "math", "difficulty": 3,
                                          "instruction_quality": 4, "response_quality": 4, "judge_refusal": False}
    return pl.DataFrame([row | overrides], schema=JUDGE_COLUMNS)


LABEL_CASES = {
    "unparsed": (TaggingConfig(reject_unparsed=True), {"judge_status": UNPARSED, "judge_error": "not JSON"},
                 "judge answer unparsed: not JSON"),
    "language": (TaggingConfig(allowed_languages=("en",)), {}, "instruction language 'de' not in [en]"),
    "instruction_quality": (TaggingConfig(min_instruction_quality=3), {"instruction_quality": 2},
                            "instruction_quality 2 < min 3"),
    "response_quality": (TaggingConfig(min_response_quality=4), {"response_quality": 1}, "response_quality 1 < min 4"),
    "difficulty": (TaggingConfig(min_difficulty=2, max_difficulty=4), {"difficulty": 5}, "difficulty 5 > max 4"),
}


def test_every_label_rule_has_a_case():
    assert set(LABEL_CASES) == set(LABEL_RULES)


@pytest.mark.parametrize("rule", list(LABEL_CASES))
def test_each_label_rule_rejects_its_bad_row_and_passes_a_good_one(rule):
    cfg, bad_labels, detail = LABEL_CASES[rule]
    english = "Please explain how the moon causes the tides on Earth."
    german = "Bitte erkläre mir, wie der Mond die Gezeiten auf der Erde verursacht."
    bad_text = german if rule == "language" else english
    df = table([(english, "The moon's gravity pulls the oceans toward it."), (bad_text, "The moon pulls the sea.")])
    labels = pl.concat([_labelled(), _labelled(**bad_labels)])
    _, split = tag_and_filter(df, labels, JudgeProvenance(), cfg)
    assert split.kept["conversation_id"].to_list() == ["c0"]
    assert split.rejected[REJECTED_REASON].to_list() == [rule]
    assert split.rejected[REJECTED_DETAIL].to_list() == [detail]
    _, off = tag_and_filter(df, labels, JudgeProvenance(), TaggingConfig())  # thresholds off by default
    assert off.rejected.height == 0 and off.kept.height == 2


def test_language_filter_drops_the_planted_non_english_rows_when_configured():
    planted = planted_table()
    tagged = tag_rows(planted, no_judge_labels(planted.height), JudgeProvenance())
    split = filter_on_labels(tagged, TaggingConfig(allowed_languages=("en",)))
    # the non-English rows, and the mixed English/French instruction that fastText reads as French
    foreign = [f"planted-{i:03d}" for i, item in enumerate(planted_rows())
               if item["kind"] == "non_english" or item["user"] in MIXED["fasttext"]]
    assert sorted(split.rejected["conversation_id"].to_list()) == foreign
    assert split.funnel[1] == {"rule": "language", "rows_in": planted.height,
                               "rows_removed": split.rejected.height, "rows_out": split.kept.height}


def test_unlabelled_rows_pass_score_rules():
    df = table([("Please explain how the moon causes the tides on Earth.", "Gravity.")])
    _, split = tag_and_filter(df, no_judge_labels(1), JudgeProvenance(),
                              TaggingConfig(min_response_quality=5, min_difficulty=5))
    assert split.kept.height == 1


# ---- agreement, diversity, funnel ----------------------------------------------------------------------------


def test_agreement_of_a_perfect_and_of_a_constant_judge(tiny_model_dir):
    planted = planted_table()
    items = {i["user"]: i for i in planted_rows()}

    def perfect(prompt: str):
        item = next(v for k, v in items.items() if k in prompt)
        quality = 5 if item["quality"] == "high" else 1
        return answer(category=item["category"], response_quality=quality, refusal=item["refusal"]), "stop"

    _, labels, _ = _judge(tiny_model_dir, planted, perfect, JudgeConfig())
    tagged = tag_rows(planted, labels, JudgeProvenance())
    scores = agreement(tagged)
    assert scores["overall"]["judge"] == 1.0 and scores["overall"]["parsed"] == 1.0
    assert scores["overall"]["refusal_flag"] == 1.0
    assert scores["overall"]["instruction_language"] == round(1 - len(MIXED["fasttext"]) / len(items), 4)
    _, constant, _ = _judge(tiny_model_dir, planted, lambda p: (GOOD, "stop"), JudgeConfig())
    low = agreement(tag_rows(planted, constant, JudgeProvenance()))
    assert low["overall"]["judge"] < 0.7 and low["by_kind"]["bad"]["response_quality"] == 0.0


def test_distinct_n_counts_word_ngrams():
    texts = pl.Series(["the cat sat", "the cat ran"])
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)
    assert distinct_n(pl.Series(["one"]), 2) is None


def test_diversity_report_shows_one_style_for_every_prompt():
    same = table([(f"Please tell me everything about topic number {i} in great detail, with clear examples and a "
                   "short summary at the end.", "Sure! Here is a summary of it.")
                  for i in range(10)]).with_columns(pl.lit("information_seeking").alias("task"))
    report = diversity_report(same)
    assert report["top_openings"]["responses"][0] == {"opening": "sure here is", "count": 10, "share": 1.0}
    assert report["distinct_n"]["responses"]["3"] == pytest.approx(5 / 50)
    assert report["category_entropy"]["bits"] == 0.0
    assert report["near_duplicate_instruction_rate"] == 0.9  # 9 of 10 repeat the first up to one number
    varied = pl.Series(["How do I bake bread?", "Explain quantum tunnelling simply.", "Write a haiku on rain."])
    assert near_duplicate_rate(varied, 0.7, 2) == 0.0


def test_funnel_tables_and_charts():
    stages = [Stage("magpie_conversations", 10, 8, {"empty": 2}),
              Stage("deduplicated_conversations", 8, 6, {"near_duplicate": 2}, {"math": 1, "coding": 1}),
              Stage("tagged_conversations", 6, 5, {"language": 1}, {"math": 1})]
    rows = stage_table(stages)
    assert rows[0] == {"stage": "magpie_conversations", "rows_in": 10, "rows_out": 8, "removed": 2,
                       "kept_share": 0.8, "removed_by_reason": "empty: 2"}
    categories = category_table(stages, {"math": 3, "other": 2})
    assert [r["category"] for r in categories] == ["coding", "math", "other"]  # taxonomy order
    assert categories[1] == {"category": "math", "magpie_conversations": 5, "-deduplicated_conversations": 1,
                             "-tagged_conversations": 1, "kept": 3}
    assert sum(r["magpie_conversations"] for r in categories) == 8
    for png in (funnel_png(stages), category_png(categories),
                distributions_png({"difficulty": {"1": {"rows": 2, "share": 0.5}, "2": {"rows": 2, "share": 0.5}}})):
        assert png.startswith(b"\x89PNG")


def test_rule_frames_use_the_shared_row_key():
    assert ROW == "__rule_row"
