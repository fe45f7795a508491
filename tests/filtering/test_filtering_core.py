"""Quality filters: each rule, rule order, funnel bookkeeping, determinism."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from assets.common.data.schema import CONVERSATION_SCHEMA, REJECTED_DETAIL, REJECTED_REASON
from assets.filtering.core import (
    RULES,
    FilterConfig,
    apply_filters,
    duplicate_line_fraction,
    duplicate_ngram_char_fraction,
    truncated_messages,
)

GOOD_USER = "Explain how photosynthesis works in plants."
GOOD_ASSISTANT = (
    "Photosynthesis converts light energy into chemical energy. Chlorophyll absorbs sunlight, which drives "
    "the conversion of carbon dioxide and water into glucose and oxygen."
)
LEAK = "<|im_start|>"
CFG = FilterConfig(special_tokens=(LEAK, "<|im_end|>"))


def conversation(messages: list[tuple[str, str | None]] | None = None, finish=None) -> dict:
    """One full-schema row; ``finish`` defaults to "stop" for every non-system message."""
    if messages is None:
        messages = [("user", GOOD_USER), ("assistant", GOOD_ASSISTANT)]
    if finish is None:
        finish = ["stop"] * sum(role != "system" for role, _ in messages)
    return {
        "conversation_id": "0-0",
        "messages": [{"role": role, "content": content} for role, content in messages],
        "finish_reasons": finish,
        "num_turns": sum(role == "user" for role, _ in messages),
        "shard": 0,
        "row_index": 0,
        "seed": 1234,
        "generator_model": "tiny-model",
        "generator_model_hash": "abc",
        "pre_query_template_hash": "def",
        "sampling_params": "{}",
        "engine": "vllm",
        "engine_version": "0.0",
    }


def frame(rows: list[dict]) -> pl.DataFrame:
    """Full-schema frame; row i gets id "0-i" (shard 0, row_index i)."""
    rows = [row | {"conversation_id": f"0-{i}", "shard": 0, "row_index": i} for i, row in enumerate(rows)]
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)  # rows the schema check would reject too: the core's rules


def run_one(row: dict, cfg: FilterConfig = CFG) -> tuple[str | None, str | None]:
    result = apply_filters(frame([row]), cfg)
    if result.kept.height:
        return None, None
    return result.rejected[REJECTED_REASON][0], result.rejected[REJECTED_DETAIL][0]


BAD_ROWS = {
    "no messages": (conversation([]), "empty", "no messages"),
    "null messages": (conversation() | {"messages": None}, "empty", "no messages"),
    "no user": (conversation([("assistant", GOOD_ASSISTANT)]), "empty", "no user message"),
    "no assistant": (conversation([("user", GOOD_USER)]), "empty", "no assistant message"),
    "blank response": (
        conversation([("user", GOOD_USER), ("assistant", "  \n ")]),
        "empty",
        "assistant message is empty (messages[1])",
    ),
    "null instruction": (
        conversation([("system", "Be nice."), ("user", None), ("assistant", GOOD_ASSISTANT)]),
        "empty",
        "user message is empty (messages[1])",
    ),
    "unanswered final user": (
        conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT), ("user", "And in algae?")]),
        "empty",
        "final user message has no response (messages[2])",
    ),
    "length-truncated": (
        conversation(finish=["stop", "length"]),
        "truncated",
        "finish_reasons[1] = 'length' (not 'stop') in the response of turn 1",
    ),
    "instruction of turn 2 truncated, after a system message": (
        conversation([("system", "Be nice."), ("user", GOOD_USER), ("assistant", GOOD_ASSISTANT),
                      ("user", GOOD_USER), ("assistant", GOOD_ASSISTANT)], finish=["stop", "stop", "length", "stop"]),
        "truncated",
        "finish_reasons[2] = 'length' (not 'stop') in the instruction of turn 2",
    ),
    "null finish entry": (
        conversation(finish=[None, "stop"]),
        "truncated",
        "finish_reasons[0] = '<null>' (not 'stop') in the instruction of turn 1",
    ),
    "finish entry with no message": (
        conversation(finish=["stop", "stop", "length"]),
        "truncated",
        "finish_reasons[2] = 'length' (not 'stop')",
    ),
    "null finish list": (conversation() | {"finish_reasons": None}, "truncated", "finish_reasons is null"),
    "leak in response": (
        conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT + " <|im_end|>")]),
        "template_leak",
        "teacher special token '<|im_end|>' in assistant message (messages[1])",
    ),
    "leak in system": (
        conversation([("system", f"{LEAK}system"), ("user", GOOD_USER), ("assistant", GOOD_ASSISTANT)]),
        "template_leak",
        "teacher special token '<|im_start|>' in system message (messages[0])",
    ),
    "short instruction": (
        conversation([("user", "  Hi?  "), ("assistant", GOOD_ASSISTANT)]),
        "length",
        "instruction 3 chars < min 8 (messages[0])",
    ),
    "long instruction": (
        conversation([("user", "x" * 4001), ("assistant", GOOD_ASSISTANT)]),
        "length",
        "instruction 4001 chars > max 4000 (messages[0])",
    ),
    "short response": (
        conversation([("user", GOOD_USER), ("assistant", "Yes.")]),
        "length",
        "response 4 chars < min 16 (messages[1])",
    ),
    "long response": (
        conversation([("user", GOOD_USER), ("assistant", "word " * 2000 + "end")]),
        # 2000 repeated words would also be repetitive; length comes first.
        "length",
        "response 10003 chars > max 8000 (messages[1])",
    ),
    "short second response": (
        conversation(
            [
                ("user", GOOD_USER),
                ("assistant", GOOD_ASSISTANT),
                ("user", "Why is it green?"),
                ("assistant", "Chlorophyll."),
            ]
        ),
        "length",
        "response 12 chars < min 16 (messages[3])",
    ),
    "two short responses: first reported": (
        conversation(
            [("user", GOOD_USER), ("assistant", "Okay."), ("user", "Why is it green?"), ("assistant", "No.")]
        ),
        "length",
        "response 5 chars < min 16 (messages[1])",
    ),
    "two leaks: first message reported": (
        conversation([("user", GOOD_USER + "<|im_end|>"), ("assistant", LEAK + GOOD_ASSISTANT)]),
        "template_leak",
        "teacher special token '<|im_end|>' in user message (messages[0])",
    ),
    "looping response": (
        conversation([("user", GOOD_USER), ("assistant", "I think that is a good idea. " * 6)]),
        "repetition",
        "assistant duplicate 3-gram char fraction 0.833 > max 0.3 (messages[1])",
    ),
    "repeated lines": (
        conversation(
            [
                ("user", GOOD_USER),
                ("assistant", "Step one is light.\nStep one is light.\nStep one is light.\nDone now."),
            ]
        ),
        # Both measures fire; the n-gram one is checked first: lines 2-3 are 30 of 53 word characters.
        "repetition",
        "assistant duplicate 3-gram char fraction 0.566 > max 0.3 (messages[1])",
    ),
    "looping instruction": (
        conversation([("user", "tell me tell me tell me tell me tell me"), ("assistant", GOOD_ASSISTANT)]),
        "repetition",
        "user duplicate 3-gram char fraction 0.8 > max 0.3 (messages[0])",
    ),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_each_rule_catches_its_row_with_reason_and_detail(name: str) -> None:
    row, reason, detail = BAD_ROWS[name]
    assert run_one(row) == (reason, detail)


def test_truncated_rows_are_counted_by_the_message_that_was_cut() -> None:
    names = ["length-truncated", "instruction of turn 2 truncated, after a system message", "null finish entry",
             "null finish list", "finish entry with no message", "leak in response"]
    result = apply_filters(frame([BAD_ROWS[name][0] for name in names] + [conversation()]), CFG)
    assert truncated_messages(result.rejected) == {"instruction": 2, "response": 1, "unknown": 2}
    assert truncated_messages(result.rejected.clear()) == {"instruction": 0, "response": 0, "unknown": 0}


def test_duplicate_lines_alone_trigger_the_line_measure() -> None:
    text = "The sky is blue today.\nThe sky is blue today.\nWater is wet.\nGrass is green."
    row = conversation([("user", GOOD_USER), ("assistant", text)])
    # 1 of 4 lines repeats: 0.25 passes the default 0.3 and fails 0.2.
    assert run_one(row, FilterConfig(max_duplicate_ngram_char_fraction=None)) == (None, None)
    assert run_one(
        row, FilterConfig(max_duplicate_ngram_char_fraction=None, max_duplicate_line_fraction=0.2)
    ) == (
        "repetition",
        "assistant duplicate line fraction 0.25 > max 0.2 (messages[1])",
    )


@pytest.mark.parametrize(
    "messages",
    [
        [("user", GOOD_USER), ("assistant", GOOD_ASSISTANT)],
        [("system", "You are helpful."), ("user", GOOD_USER), ("assistant", GOOD_ASSISTANT)],
        [("user", "x" * 8), ("assistant", "y" * 16)],  # bounds are inclusive
        [("user", "x" * 4000), ("assistant", "y" * 8000)],
        # Code whose brace-only lines repeat is not "repetitive".
        [
            ("user", "Write a C loop that prints numbers."),
            ("assistant", 'int main() {\n  for (int i = 0; i < 3; i++) {\n    printf("%d", i);\n  }\n}\n'),
        ],
        [
            ("user", GOOD_USER),
            ("assistant", GOOD_ASSISTANT),
            ("user", "Why is it green?"),
            ("assistant", GOOD_ASSISTANT[:60]),
        ],
    ],
)
def test_clean_rows_are_kept(messages) -> None:
    assert run_one(conversation(messages)) == (None, None)


@pytest.mark.parametrize(
    ("messages", "finish", "expected"),
    [
        # truncated beats length and repetition
        ([("user", "Hi"), ("assistant", "la la la la la la la la")], ["stop", "length"], "truncated"),
        # empty beats truncated
        ([("user", GOOD_USER), ("assistant", "")], ["stop", "length"], "empty"),
        # template_leak beats length
        ([("user", "Hi " + LEAK), ("assistant", "ok")], None, "template_leak"),
        # length beats repetition
        ([("user", GOOD_USER), ("assistant", "no no no no")], None, "length"),
    ],
)
def test_first_failing_rule_wins(messages, finish, expected) -> None:
    assert run_one(conversation(messages, finish))[0] == expected


def test_length_checks_instruction_before_response() -> None:
    reason, detail = run_one(conversation([("user", "Hi"), ("assistant", "Yes.")]))
    assert reason == "length" and detail.startswith("instruction 2 chars")


@pytest.mark.parametrize(
    ("cfg", "row"),
    [
        (FilterConfig(require_stop=False), conversation(finish=["stop", "length"])),
        (
            FilterConfig(max_response_chars=None),
            conversation([("user", GOOD_USER), ("assistant", "ab " * 4000)]),
        ),
        (
            FilterConfig(),
            conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT + LEAK)]),
        ),  # no tokens
    ],
)
def test_disabled_checks_keep_rows(cfg: FilterConfig, row: dict) -> None:
    # the max-disabled row is hugely repetitive; switch repetition off too so only the bound is under test
    if cfg.max_response_chars is None:
        cfg = FilterConfig(max_response_chars=None, max_duplicate_ngram_char_fraction=None)
    assert run_one(row, cfg) == (None, None)


def mixed_frame() -> pl.DataFrame:
    rows = [
        conversation(),
        conversation([]),
        conversation(finish=["stop", "length"]),
        conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT + LEAK)]),
        conversation(
            [("system", "Be brief."), ("user", "Why is the sky blue?"), ("assistant", GOOD_ASSISTANT)]
        ),
        conversation([("user", GOOD_USER), ("assistant", "Yes.")]),
        conversation([("user", GOOD_USER), ("assistant", "I think that is a good idea. " * 6)]),
        conversation([("user", "Hi"), ("assistant", "Fine.")]),
        conversation([("user", "What is 2 + 2 equal to?"), ("assistant", "2 + 2 equals 4, a basic sum.")]),
    ]
    return frame(rows)


def test_kept_and_rejected_partition_the_input_in_order() -> None:
    df = mixed_frame()
    result = apply_filters(df, CFG)
    assert result.kept.columns == df.columns
    assert result.kept.schema == df.schema
    assert result.rejected.columns == [*df.columns, REJECTED_REASON, REJECTED_DETAIL]
    assert result.kept["conversation_id"].to_list() == ["0-0", "0-4", "0-8"]
    assert result.rejected["conversation_id"].to_list() == ["0-1", "0-2", "0-3", "0-5", "0-6", "0-7"]
    assert result.rejected[REJECTED_REASON].to_list() == [
        "empty",
        "truncated",
        "template_leak",
        "length",
        "repetition",
        "length",
    ]
    # kept rows are byte-for-byte the input rows
    expected = df.filter(pl.col("conversation_id").is_in(["0-0", "0-4", "0-8"]))
    assert result.kept.equals(expected)
    # rejected rows keep their original values too
    assert result.rejected.select(df.columns).equals(
        df.filter(~pl.col("conversation_id").is_in(["0-0", "0-4", "0-8"]))
    )


def test_funnel_counts_add_up() -> None:
    df = mixed_frame()
    result = apply_filters(df, CFG)
    funnel = result.funnel
    assert [step["rule"] for step in funnel] == list(RULES)
    assert funnel[0]["rows_in"] == df.height
    for step, nxt in itertools.pairwise(funnel):
        assert step["rows_out"] == nxt["rows_in"]
    for step in funnel:
        assert step["rows_in"] - step["rows_removed"] == step["rows_out"]
    assert funnel[-1]["rows_out"] == result.kept.height
    assert sum(step["rows_removed"] for step in funnel) == result.rejected.height
    by_reason = dict(result.rejected.group_by(REJECTED_REASON).len().iter_rows())
    assert {s["rule"]: s["rows_removed"] for s in funnel} == {r: by_reason.get(r, 0) for r in RULES}
    assert [s["rows_removed"] for s in funnel] == [1, 1, 1, 2, 1]


def test_deterministic_and_order_preserving() -> None:
    df = mixed_frame()
    first, second = apply_filters(df, CFG), apply_filters(df, CFG)
    assert first.kept.equals(second.kept) and first.rejected.equals(second.rejected)
    assert first.funnel == second.funnel
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=7)
    again = apply_filters(shuffled, CFG)
    assert again.kept["conversation_id"].to_list() == [
        c for c in shuffled["conversation_id"].to_list() if c in set(first.kept["conversation_id"])
    ]
    assert again.rejected.sort("conversation_id").equals(first.rejected.sort("conversation_id"))


def test_empty_input() -> None:
    result = apply_filters(frame([]), CFG)
    assert result.kept.height == 0 and result.rejected.height == 0
    assert result.rejected.columns[-2:] == [REJECTED_REASON, REJECTED_DETAIL]
    assert all(step["rows_in"] == 0 and step["rows_removed"] == 0 for step in result.funnel)


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("a b c a b c", 3, 0.5),
        ("the cat sat on the mat", 3, 0.0),
        ("the cat the cat", 2, 0.5),
        ("aaaa b aaaa b", 2, 5 / 10),
        ("", 3, 0.0),
        ("one two", 3, 0.0),
    ],
)
def test_duplicate_ngram_char_fraction(text: str, n: int, expected: float) -> None:
    # surrounded by other texts: n-grams must not leak across text boundaries
    texts = pl.Series(["a b c a b c", text, None, text, "x y z"])
    got = duplicate_ngram_char_fraction(texts, n).to_list()
    assert got[1] == pytest.approx(expected) and got[3] == pytest.approx(expected)
    assert got[2] == 0.0 and got[4] == 0.0


def test_ngram_windows_do_not_cross_texts() -> None:
    # "c a b" would be a repeated 3-gram if the two texts were one stream
    got = duplicate_ngram_char_fraction(pl.Series(["a b c", "a b c"]), 3).to_list()
    assert got == [0.0, 0.0]
    got = duplicate_ngram_char_fraction(pl.Series(["q a b", "c a b", "a b c"]), 2).to_list()
    assert got == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\na\nb\nc", 0.25),
        ("a\n\n\nb", 0.0),
        ("x = 1\n}\n}\n}\ny = 2", 0.0),  # brace-only lines are ignored
        ("same\n  same  \nsame", 2 / 3),
        ("", 0.0),
    ],
)
def test_duplicate_line_fraction(text: str, expected: float) -> None:
    assert pl.select(duplicate_line_fraction(pl.lit(text))).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"special_tokens": ("",)},
        {"min_response_chars": 100, "max_response_chars": 10},
        {"repetition_ngram": 0},
        {"max_duplicate_line_fraction": 1.5},
    ],
)
def test_invalid_config_rejected(kwargs) -> None:
    with pytest.raises(ValueError):
        FilterConfig(**kwargs)


def test_single_string_special_tokens_rejected() -> None:
    with pytest.raises(TypeError):
        FilterConfig(special_tokens="<|im_start|>")


def test_template_leak_checks_the_students_markers_too() -> None:
    """Teacher (ChatML) != student (Llama-2 style): a response that writes the student's turn marker is rejected,
    named as such; the same row passes when no student markers are configured."""
    cfg = FilterConfig(special_tokens=("<|im_start|>", "<|im_end|>"), template_markers=("[INST]", "[/INST]"))
    leaked = conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT + " [INST] next question")])
    assert run_one(leaked, cfg) == ("template_leak", "student template marker '[INST]' in assistant message "
                                                     "(messages[1])")
    assert run_one(leaked, FilterConfig(special_tokens=cfg.special_tokens)) == (None, None)
    assert run_one(conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT)]), cfg) == (None, None)
    both = FilterConfig(special_tokens=("<|im_end|>",), template_markers=("<|im_end|>",))
    row = conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT + "<|im_end|>")])
    assert run_one(row, both)[1].startswith("teacher special token and student template marker '<|im_end|>'")


def test_a_rule_is_one_function_plus_one_registry_line(monkeypatch) -> None:
    from assets.common.data.rules import ROW

    def shouting(rows: pl.DataFrame, long: pl.DataFrame, cfg: FilterConfig) -> pl.DataFrame:
        loud = long.filter(pl.col("__filter_content").str.contains(r"^[A-Z !]+$"))
        return loud.group_by(ROW).agg(pl.lit("all capitals").alias("detail"))

    monkeypatch.setitem(RULES, "shouting", shouting)
    good = conversation([("user", GOOD_USER), ("assistant", GOOD_ASSISTANT)])
    loud = conversation([("user", "EXPLAIN PHOTOSYNTHESIS NOW"), ("assistant", GOOD_ASSISTANT)])
    result = apply_filters(frame([good, loud]), CFG)
    assert result.kept["messages"].to_list() == frame([good])["messages"].to_list()
    assert result.rejected[REJECTED_REASON].to_list() == ["shouting"]
    assert [step["rule"] for step in result.funnel][-1] == "shouting"
