"""The blocking check's scan (verify.py) against a plain statement of what it must find: the check's first
implementation, which normalized with a per-character ``unicodedata.category`` filter and ``re`` and searched each
message for every short eval text as a substring. The scan now normalizes with a translation table, looks short
texts up as word windows, skips windows whose adjacent words are never adjacent in an eval text, and scans each
message once for both the training-side counts and the leaks: none of that may change a leak, its order or its
evidence.
"""

from __future__ import annotations

import random
import re
import sys
import unicodedata
from collections import defaultdict

import polars as pl
import pytest

from assets.common.data.schema import MESSAGE
from assets.decontamination.verify import ROLES, _words, eval_keys, find_leaks, train_frequent_keys

# --- the reference: the first implementation's semantics, stated the slow and obvious way ----------------------

def _reference_normalize(text: str | None) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return re.sub(r"\s+", " ", text).strip()


def _reference_leaks(conversations: pl.DataFrame, eval_sets: pl.DataFrame, n: int, min_words: int,
                     max_ngram_items: int, max_train_rows: int,
                     also_counted: pl.DataFrame | None = None) -> tuple[list[tuple], dict[str, int]]:
    """Every leak (conversation_id, role, benchmark, item_id, evidence) and the frequent keys: a key is in a message
    when `` key `` is a substring of the padded normalized message; a message's leak is its n-gram key that starts
    first, else the first of its short keys in the order of the sorted padded keys."""
    keys = eval_keys(eval_sets, n=n, min_words=min_words, max_ngram_items=max_ngram_items)

    def messages(frame: pl.DataFrame):
        for conversation_id, msgs in frame.select("conversation_id", "messages").iter_rows():
            yield conversation_id, [(m["role"], f" {_reference_normalize(m['content'])} ")
                                    for m in msgs or [] if m["role"] in ROLES]

    frequent: dict[str, int] = {}
    if max_train_rows:
        ids = defaultdict(set)
        for frame in [conversations] + ([] if also_counted is None else [also_counted]):
            for conversation_id, msgs in messages(frame):
                for _, text in msgs:
                    for key in (*keys.ngrams, *keys.short):
                        if f" {key} " in text:
                            ids[key].add(conversation_id)
        frequent = {key: len(found) for key, found in ids.items() if len(found) >= max_train_rows}
    leaks = []
    for conversation_id, msgs in messages(conversations):
        for role, text in msgs:
            grams = [(text.find(f" {g} "), g) for g in keys.ngrams if g not in frequent and f" {g} " in text]
            needles = sorted(f" {t} " for t in keys.short if t not in frequent and f" {t} " in text)
            if grams:
                gram = min(grams)[1]
                leaks.append((conversation_id, role, *keys.ngrams[gram], gram))
                break
            if needles:
                text = needles[0][1:-1]
                leaks.append((conversation_id, role, *keys.short[text], text))
                break
    return leaks, frequent


def _leaks(*args, **kwargs) -> list[tuple]:
    return [(x.conversation_id, x.role, x.benchmark, x.item_id, x.evidence)
            for x in find_leaks(*args, limit=None, **kwargs)]


def _conversations(rows: list[list[tuple[str, str]]], prefix: str = "c") -> pl.DataFrame:
    return pl.DataFrame({"conversation_id": [f"{prefix}{i}" for i in range(len(rows))],
                         "messages": [[{"role": r, "content": c} for r, c in row] for row in rows]},
                        schema={"conversation_id": pl.Utf8, "messages": pl.List(MESSAGE)})


def _eval(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame([(b, i, "prompt", t) for b, i, t in rows], schema=["benchmark", "item_id", "field", "text"],
                        orient="row")


# --- normalization ------------------------------------------------------------------------------------------------

PUNCTUATION = {  # a few of each Unicode punctuation class, and look-alikes that are not punctuation
    "Pc": "_‿⁀＿", "Pd": "-‐–—―⸺〜゠", "Ps": "([{⁅「『【〔（", "Pe": ")]}⁆」』】〕）", "Pi": "«‘“‹⸂", "Pf": "»’”›⸃",
    "Po": "!\"#%&'*,./:;?@\\¡§¶·¿;·、。《》！？｡٪؟।", "symbols": "$+<=>^`|~©°±×÷€™√∞",
}
WHITESPACE = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000"
CRAFTED_TEXTS = [
    None, "", "   ", "!!!", " ... word ... ", "Hello, World!", "don't stop—ever", "e\u0301t\u00e9 ﬁne Ⅻ ①",
    "İstanbul ΟΔΟΣ Straße", "zero\u200bwidth joiner\u200d", "ctrl\x01char\x7f", "ＦＵＬＬ　ｗｉｄｔｈ！",
    *(f"a{p}b {p}c d{p} {p}" for p in "".join(PUNCTUATION.values())),
    *(f"x{w}y{w}{w}z{w}" for w in WHITESPACE), "mixed" + "".join(PUNCTUATION.values()) + WHITESPACE + "end",
]


@pytest.mark.parametrize("text", CRAFTED_TEXTS)
def test_words_are_the_reference_normalization_split(text: str | None) -> None:
    normalized = _reference_normalize(text)
    assert _words(text) == (normalized.split(" ") if normalized else [])


def test_words_match_the_reference_on_every_code_point() -> None:
    """Every code point once (surrogates aside), in runs of 64 between words, ASCII and not: the translation table
    and the per-character removal must delete exactly the P* characters."""
    points = [chr(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF]
    text = " ".join(f"w{''.join(points[i:i + 64])}w" for i in range(0, len(points), 64))
    assert " ".join(_words(text)) == _reference_normalize(text)
    ascii_text = "".join(points[:128])
    assert " ".join(_words(ascii_text)) == _reference_normalize(ascii_text)


# --- leaks: crafted cases ---------------------------------------------------------------------------------------

LONG = "the quick brown fox jumps over the lazy dog near the quiet river bank today"  # 15 words
SHORT_A = "alpha beta gamma delta epsilon zeta eta theta"  # 8 words
SHORT_B = "gamma delta epsilon zeta eta theta iota kappa"  # overlaps A by 6 words
SHORT_C = "aardvark beta gamma delta epsilon zeta eta theta"  # sorts before A
EVAL = _eval([("long", "L1", LONG), ("short", "A", SHORT_A), ("short", "B", SHORT_B), ("short", "C", SHORT_C),
              ("short", "P", "a b c d e f g h"), ("short", "Q", "a b c d e f g h\x01i")])
ARGS = {"n": 13, "min_words": 8, "max_ngram_items": 3, "max_train_rows": 0}


@pytest.mark.parametrize(("messages", "expected"), [
    # a short text at the start, at the end, as the whole message, with punctuation and case of many classes
    ([("user", f"{SHORT_A} and then some")], ("user", "short", "A", SHORT_A)),
    ([("user", f"some words then {SHORT_A}")], ("user", "short", "A", SHORT_A)),
    ([("assistant", "«Alpha — beta, GAMMA; delta: epsilon！ zeta… eta» (theta)")],
     ("assistant", "short", "A", SHORT_A)),
    # overlapping short texts: the first in sorted order wins, not the first in the message
    ([("user", "alpha beta gamma delta epsilon zeta eta theta iota kappa")], ("user", "short", "A", SHORT_A)),
    ([("user", f"{SHORT_B} then aardvark beta gamma delta epsilon zeta eta theta")], ("user", "short", "C", SHORT_C)),
    # sorted with the padding spaces: "h\x01i" sorts before "h " although "a ... h" is a prefix of "a ... h\x01i"
    ([("user", "a b c d e f g h and a b c d e f g h\x01i")], ("user", "short", "Q", "a b c d e f g h\x01i")),
    # an n-gram beats an earlier short text; the first n-gram window wins
    ([("user", f"{SHORT_A} {LONG}")], ("user", "long", "L1", " ".join(LONG.split()[:13]))),
    ([("user", " ".join(LONG.split()[1:]) + " " + LONG)], ("user", "long", "L1", " ".join(LONG.split()[1:14]))),
    # the first leaking message of the conversation; system messages are not training text
    ([("system", SHORT_C), ("user", "hello"), ("assistant", SHORT_B), ("user", SHORT_A)],
     ("assistant", "short", "B", SHORT_B)),
    # not leaks: a word cut, a text split across messages, a word glued on
    ([("user", SHORT_A.replace("delta", "del ta"))], None),
    ([("user", "alpha beta gamma delta"), ("assistant", "epsilon zeta eta theta")], None),
    ([("user", f"x{SHORT_A}")], None), ([("user", f"{SHORT_A}x")], None),
    ([("user", None)], None), ([], None),
])
def test_leak_of_a_conversation(messages: list[tuple[str, str]], expected: tuple | None) -> None:
    df = _conversations([messages])
    assert _leaks(df, EVAL, **ARGS) == ([] if expected is None else [("c0", *expected)])
    assert _leaks(df, EVAL, **ARGS) == _reference_leaks(df, EVAL, **ARGS)[0]


def test_several_leaks_in_table_order_and_the_limit() -> None:
    df = _conversations([[("user", "clean")], [("user", SHORT_B), ("assistant", LONG)], [("user", "clean")],
                         [("assistant", f"{SHORT_C} {SHORT_A}")], [("user", LONG)]])
    expected = [("c1", "user", "short", "B", SHORT_B), ("c3", "assistant", "short", "C", SHORT_C),
                ("c4", "user", "long", "L1", " ".join(LONG.split()[:13]))]
    assert _leaks(df, EVAL, **ARGS) == expected == _reference_leaks(df, EVAL, **ARGS)[0]
    assert [leak.conversation_id for leak in find_leaks(df, EVAL, **ARGS, limit=2)] == ["c1", "c3"]


def test_frequent_key_cut_off_counts_distinct_conversations_and_the_rows_also_counted() -> None:
    """SHORT_A in four conversations (twice in c1) and SHORT_B in two (c4's is a system message): with a cut-off
    of 3, A is frequent and ignored (B, behind A in c0's sorted order, becomes its leak); with one more
    conversation counted beside the table (the rejected rows), B is frequent too."""
    df = _conversations([[("user", f"{SHORT_A} {SHORT_B}")], [("user", SHORT_A), ("assistant", SHORT_A)],
                         [("user", SHORT_A)], [("assistant", SHORT_B)], [("user", SHORT_A), ("system", SHORT_B)]])
    args = {**ARGS, "max_train_rows": 3}
    assert train_frequent_keys(df, eval_keys(EVAL), 3) == {SHORT_A: 4}
    assert train_frequent_keys(df, eval_keys(EVAL), 5) == {}
    assert _leaks(df, EVAL, **args) == [("c0", "user", "short", "B", SHORT_B),
                                        ("c3", "assistant", "short", "B", SHORT_B)]
    rejected = _conversations([[("user", SHORT_B)]], prefix="r")
    assert _leaks(df, EVAL, **args, also_counted=rejected) == []
    assert _reference_leaks(df, EVAL, **args, also_counted=rejected)[0] == []
    assert _leaks(df, EVAL, **{**args, "max_train_rows": 5}) == _leaks(df, EVAL, **ARGS)


# --- leaks: random cases against the reference ---------------------------------------------------------------

PARAMETERS = [(13, 8, 3, 10), (5, 3, 0, 0), (4, 2, 2, 2), (3, 1, 3, 3), (1, 1, 0, 2), (2, 3, 2, 0)]


def _random_case(seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Eval texts and conversations over a 12-word vocabulary (so words repeat and windows collide), decorated
    with punctuation and case, the conversations holding pieces of the eval texts."""
    rng = random.Random(seed)
    vocab = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay", "kiwi", "lynx"]
    marks = ["", "", "", ",", ".", "!", "—", "«", "»", "¿", "’", "-", "…"]

    def words(k: int) -> list[str]:
        return [rng.choice(vocab) for _ in range(k)]

    def decorate(ws: list[str]) -> str:
        return " ".join(rng.choice(marks) + (w.upper() if rng.random() < 0.2 else w) + rng.choice(marks) for w in ws)

    texts = [words(rng.randint(1, 16)) for _ in range(14)]
    eval_df = _eval([(f"b{k % 3}", f"i{k % 9}", decorate(ws)) for k, ws in enumerate(texts)])

    def message() -> str:
        parts = []
        for _ in range(rng.randint(0, 4)):
            source = rng.choice(texts)
            start = rng.randrange(len(source))
            parts.append(words(rng.randint(0, 3)) + source[start:start + rng.randint(1, 16)])
        return decorate([w for part in parts for w in part] + words(rng.randint(0, 3)))

    def rows(k: int, prefix: str) -> pl.DataFrame:
        return _conversations([[(rng.choice(["user", "assistant", "system"]), message())
                                for _ in range(rng.randint(0, 4))] for _ in range(k)], prefix)

    return rows(30, "c"), eval_df, rows(6, "r")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("parameters", PARAMETERS, ids=lambda p: "n{}-min{}-items{}-rows{}".format(*p))
def test_random_tables_match_the_reference(seed: int, parameters: tuple[int, int, int, int]) -> None:
    df, eval_df, rejected = _random_case(seed)
    args = dict(zip(("n", "min_words", "max_ngram_items", "max_train_rows"), parameters, strict=True))
    expected, frequent = _reference_leaks(df, eval_df, **args, also_counted=rejected)
    assert _leaks(df, eval_df, **args, also_counted=rejected) == expected
    if args["max_train_rows"]:
        assert train_frequent_keys(pl.concat([df, rejected]), eval_keys(eval_df, *parameters[:3]),
                                   args["max_train_rows"]) == frequent
