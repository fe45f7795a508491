"""False positives of decontamination seen on a real run, and the agreement of the removal (removal.py) with
the independent re-check (verify.py) that gates training.

1. HumanEval/53's canonical_solution is ``return x + y``: whole-item matching of a 4-word text flags generic
   code. Short eval texts are matched whole only from ``min_words`` (default 8) words.
2. Chat boilerplate ("i hope this helps let me know if you have any other questions") is a 13-gram of many
   eval answers and of ordinary chat answers. An n-gram (or short eval text) found in ``max_ngram_items``
   (default 3) or more distinct eval items is not evidence of contamination.
3. The same boilerplate in a single eval item: found in ``max_train_rows`` (default 10) or more training
   conversations, it is not evidence either (tests/dedup/test_decontam_train_frequency.py; the agreement of the
   two implementations on it is checked here).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest

from assets.common.data.schema import MESSAGE
from assets.decontamination.config import DecontamConfig
from assets.decontamination.index import EvalIndex
from assets.decontamination.removal import decontaminate
from assets.decontamination.verify import eval_keys, find_leaks, train_frequent_keys
from tests.dedup_corpus import BOILERPLATE, BOILERPLATE_NORM, random_vocab, random_words

_VOCAB = random_vocab(20, 8000, 4, 9)


def _words(rng: np.random.Generator, n: int) -> str:
    return random_words(_VOCAB, rng, n)


def _conversations(answers: list[str], prompts: list[str] | None = None) -> pl.DataFrame:
    prompts = prompts or ["Tell me something."] * len(answers)
    messages = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
        for p, a in zip(prompts, answers, strict=True)
    ]
    return pl.DataFrame(
        {"conversation_id": [f"c{i}" for i in range(len(answers))], "messages": messages},
        schema={"conversation_id": pl.Utf8, "messages": pl.List(MESSAGE)},
    )


def _eval(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["benchmark", "item_id", "field", "text"], orient="row")


def _flagged(df: pl.DataFrame, eval_df: pl.DataFrame, **cfg) -> tuple[list[str], list[str], dict]:
    """Conversation ids flagged by the removal (n-gram detector only) and by verify.py, and the report."""
    _kept, rejected, report = decontaminate(df, eval_df, DecontamConfig(minhash=None, **cfg))
    verify_args = {"n": cfg.get("ngram", 13)} | {k: v for k, v in cfg.items() if k != "ngram"}
    leaks = find_leaks(df, eval_df, limit=None, **verify_args)
    return rejected["conversation_id"].to_list(), sorted({leak.conversation_id for leak in leaks}), report


def _arena(rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """Three arena-style items whose baseline answers end with the same boilerplate, plus their prompts."""
    rows = []
    for k in range(3):
        rows.append(("arena_hard", f"a{k}", "prompt", _words(rng, 25)))
        rows.append(("arena_hard", f"a{k}", "baseline_answer", f"{_words(rng, 60)}. {BOILERPLATE}"))
    return rows


def test_boilerplate_ngram_in_three_items_is_not_evidence() -> None:
    rng = np.random.default_rng(1)
    eval_df = _eval(_arena(rng))
    chat = f"{_words(rng, 40)}.\n\n{BOILERPLATE} {_words(rng, 5)}"  # an ordinary answer, only the boilerplate
    df = _conversations([chat, _words(rng, 50)])
    ours, theirs, report = _flagged(df, eval_df)
    assert ours == theirs == []
    stats = report["benchmarks"]["arena_hard"]
    assert stats["eval"]["boilerplate_ngrams"] == 1  # only the 13-gram shared by the three answers
    assert stats["eval"]["ngram_all_boilerplate"] == 0
    assert stats["example_boilerplate"] == BOILERPLATE_NORM
    assert report["boilerplate_ngrams"] == 1 and report["config"]["max_ngram_items"] == 3
    keys = eval_keys(eval_df)
    assert keys.excluded_ngrams == {"arena_hard": 1} and BOILERPLATE_NORM not in keys.ngrams
    # without the cut-off, or with a cut-off above 3 items, the same row is flagged by both
    for cut in (0, 4):
        ours, theirs, report = _flagged(df, eval_df, max_ngram_items=cut)
        assert ours == theirs == ["c0"]
        assert report["benchmarks"]["arena_hard"]["eval"]["boilerplate_ngrams"] == 0


def test_cutoff_counts_distinct_items_across_benchmarks() -> None:
    rng = np.random.default_rng(2)
    chat = _conversations([f"{_words(rng, 30)} {BOILERPLATE}"])
    # three texts of ONE item: one item, not boilerplate
    one_item = _eval([("arena_hard", "a0", f"answer_{m}", f"{_words(rng, 30)} {BOILERPLATE}") for m in range(3)])
    ours, theirs, _ = _flagged(chat, one_item)
    assert ours == theirs == ["c0"]
    # two items of one benchmark and one of another: three items, excluded and reported under both benchmarks
    spread = _eval(
        [("arena_hard", f"a{k}", "baseline_answer", f"{_words(rng, 30)} {BOILERPLATE}") for k in range(2)]
        + [("mt_bench", "81", "reference_answer", f"{BOILERPLATE} {_words(rng, 30)}")]
    )
    ours, theirs, report = _flagged(chat, spread)
    assert ours == theirs == []
    assert report["benchmarks"]["arena_hard"]["eval"]["boilerplate_ngrams"] == 1
    assert report["benchmarks"]["mt_bench"]["eval"]["boilerplate_ngrams"] == 1
    assert report["boilerplate_ngrams"] == 1
    assert eval_keys(spread).excluded_ngrams == {"arena_hard": 1, "mt_bench": 1}


def test_real_leak_next_to_boilerplate_is_still_caught() -> None:
    rng = np.random.default_rng(3)
    rows = _arena(rng)
    eval_df = _eval(rows)
    answer_1 = rows[3][3]  # item a1's baseline answer: its own n-grams are not boilerplate
    prompt_2 = rows[4][3]
    df = _conversations(
        [
            f"{_words(rng, 20)} {BOILERPLATE}",  # boilerplate only: kept
            f"Here is a copy: {answer_1}",  # whole answer, boilerplate included: caught through its other 13-grams
            _words(rng, 50),
        ],
        prompts=["Hi.", "Hi.", f"Please answer: {prompt_2}"],  # an eval prompt as the user turn
    )
    ours, theirs, report = _flagged(df, eval_df)
    assert ours == theirs == ["c1", "c2"]
    assert report["benchmarks"]["arena_hard"]["matched_item_ids"] == ["a1", "a2"]
    leaks = {leak.conversation_id: leak for leak in find_leaks(df, eval_df)}
    assert leaks["c1"].item_id == "a1" and leaks["c2"].item_id == "a2" and leaks["c2"].role == "user"


@pytest.mark.parametrize("solution", ["    return x + y\n", "return a + b;"])
def test_four_word_eval_item_is_ignored_by_default(solution: str) -> None:
    """HumanEval/53: a 4-word canonical solution inside an unrelated answer."""
    rng = np.random.default_rng(4)
    eval_df = _eval(
        [
            ("humaneval", "HumanEval/53", "prompt", f"def add(x: int, y: int): {_words(rng, 20)}"),
            ("humaneval", "HumanEval/53", "canonical_solution", solution),
        ]
    )
    body = solution.strip()
    df = _conversations([f"A calculator in Ruby:\n\ndef calc(x, y)\n  {body}\nend\n\n{_words(rng, 30)}"])
    ours, theirs, report = _flagged(df, eval_df)
    assert ours == theirs == []
    assert report["config"]["min_words"] == 8
    stats = report["benchmarks"]["humaneval"]["eval"]
    assert stats["too_short"] == 1 and stats["whole_sequence"] == 0  # counted, not silently dropped
    # an explicit min_words=4 still catches it, in both implementations
    ours, theirs, report = _flagged(df, eval_df, min_words=4)
    assert ours == theirs == ["c0"]
    assert report["benchmarks"]["humaneval"]["matched_item_ids"] == ["HumanEval/53"]
    assert report["benchmarks"]["humaneval"]["eval"]["whole_sequence"] == 1


def test_short_eval_text_of_eight_words_is_matched_whole_by_default() -> None:
    rng = np.random.default_rng(5)
    item = "Which planet in our solar system is the largest?"  # 9 words
    eval_df = _eval([("quiz", "1", "question", item), ("quiz", "2", "question", _words(rng, 30))])
    df = _conversations([f"Quiz time. {item.upper()} Take a guess.", "Which planet in our solar system is red?"])
    ours, theirs, report = _flagged(df, eval_df)
    assert ours == theirs == ["c0"]
    assert report["benchmarks"]["quiz"]["eval"]["whole_sequence"] == 1


def test_short_text_found_in_many_items_is_boilerplate() -> None:
    """The cut-off applies to short texts matched whole: here a 9-word closing line that is one item's whole
    reference answer and also sits inside the answers of two other items."""
    rng = np.random.default_rng(6)
    closing = "Let me know if you have any other questions."
    eval_df = _eval(
        [
            ("mt_bench", "90", "reference_answer", closing),
            ("mt_bench", "91", "reference_answer", f"{_words(rng, 30)}. {closing}"),
            ("alpaca_eval", "7", "reference_output", f"{_words(rng, 30)}. {closing} {_words(rng, 3)}"),
            ("mt_bench", "92", "reference_answer", "Use a binary heap for the priority queue here."),
        ]
    )
    df = _conversations(
        [f"{_words(rng, 30)}. {closing}", f"Tip: use a binary heap for the priority queue here! {_words(rng, 5)}"]
    )
    ours, theirs, report = _flagged(df, eval_df)
    assert ours == theirs == ["c1"]  # the unique 9-word answer is still matched whole
    stats = report["benchmarks"]["mt_bench"]["eval"]
    assert stats["boilerplate_texts"] == 1 and stats["whole_sequence"] == 1
    assert report["boilerplate_texts"] == 1
    assert report["benchmarks"]["mt_bench"]["example_boilerplate"] == "let me know if you have any other questions"
    assert eval_keys(eval_df).excluded_texts == {"mt_bench": 1}
    # two items only (the whole text and one containing it) stay below the default cut-off
    two = eval_df.filter(pl.col("benchmark") != "alpaca_eval")
    ours, theirs, _ = _flagged(df, two)
    assert ours == theirs == ["c0", "c1"]
    ours, theirs, _ = _flagged(df, eval_df, max_ngram_items=0)
    assert ours == theirs == ["c0", "c1"]


def test_bad_cutoff_is_rejected() -> None:
    for bad in (-1, 1):  # 1 would exclude every key (each is in its own item)
        with pytest.raises(ValueError, match="max_ngram_items"):
            DecontamConfig(max_ngram_items=bad)
        with pytest.raises(ValueError, match="max_ngram_items"):
            find_leaks(_conversations([]), _eval([("b", "1", "q", "x")]), max_ngram_items=bad)


# --------------------------------------------------------------------------------------------------------
# the removal and verify.py agree


def _random_case(seed: int) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, list[str]]]:
    """Eval items over several benchmarks (random texts of 2-60 words, several fields), with planted phrases
    shared by 2-5 items (13-19 words: boilerplate from 3 items) and short texts reused inside other items; a
    training set with planted leaks (eval n-grams, whole short texts, whole items), planted boilerplate and
    near misses (12 words of a 13-gram, a short text missing its last word). Returns the planted ids."""
    rng = np.random.default_rng(seed)
    phrases = [_words(rng, int(rng.integers(13, 20))) for _ in range(6)]
    shorts = [_words(rng, int(rng.integers(4, 13))) for _ in range(8)]
    rows: list[tuple[str, str, str, str]] = []
    benchmarks = ["alpaca_eval", "arena_hard", "humaneval", "mt_bench"]
    for k in range(80):
        bench = benchmarks[k % 4]
        for f in range(int(rng.integers(1, 4))):
            length = int(rng.choice([2, 5, 8, 10, 12, 13, 20, 40, 60]))
            rows.append((bench, f"{bench}/{k}", f"field_{f}", _words(rng, length)))
    for p, phrase in enumerate(phrases):  # a phrase inside 2 .. 5 distinct items (some twice in one item)
        for k in rng.choice(80, size=2 + p % 4, replace=False):
            bench = benchmarks[k % 4]
            rows.append((bench, f"{bench}/{k}", f"phrase_{p}", f"{_words(rng, 7)} {phrase} {_words(rng, 3)}"))
            if p % 2:
                rows.append((bench, f"{bench}/{k}", f"phrase_{p}_again", f"{phrase}."))
    for s, short in enumerate(shorts):  # a short text as a whole item, and inside 0 .. 3 other items
        rows.append(("mt_bench", f"short/{s}", "answer", short))
        for k in rng.choice(80, size=s % 4, replace=False):
            bench = benchmarks[k % 4]
            rows.append((bench, f"{bench}/{k}", f"quote_{s}", f"{_words(rng, 9)} {short} {_words(rng, 9)}"))
    eval_df = _eval(rows).unique(["benchmark", "item_id", "field"], keep="first", maintain_order=True)

    texts = eval_df["text"].to_list()
    answers, planted = [], {"leak": [], "boilerplate": [], "near_miss": [], "short": []}
    for c in range(300):
        kind = rng.choice(["clean"] * 6 + ["leak", "boilerplate", "near_miss", "short"])
        text = _words(rng, int(rng.integers(20, 80)))
        if kind == "leak":  # 13+ consecutive words of a random eval text (or all of a shorter one)
            words = texts[int(rng.integers(len(texts)))].split(" ")
            start = int(rng.integers(0, max(1, len(words) - 13)))
            text = f"{text} {' '.join(words[start:start + int(rng.integers(13, 20))]).upper()}! {_words(rng, 4)}"
        elif kind == "boilerplate":
            text = f"{_words(rng, 10)}, {phrases[int(rng.integers(len(phrases)))]}. {text}"
        elif kind == "near_miss":
            words = phrases[int(rng.integers(len(phrases)))].split(" ")
            text = f"{text} {' '.join(words[:12])}"
        elif kind == "short":
            short = shorts[int(rng.integers(len(shorts)))]
            text = f"{text} ({short})" if rng.random() < 0.7 else f"{text} {short.rsplit(' ', 1)[0]}"
        answers.append(text)
        if kind != "clean":
            planted[str(kind)].append(f"c{c}")
    return _conversations(answers), eval_df, planted


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"min_words": 4},
        {"max_ngram_items": 0},
        {"max_ngram_items": 2, "min_words": 5},
        {"ngram": 8},
        {"max_train_rows": 3},
        {"max_train_rows": 2, "max_ngram_items": 0, "min_words": 4},
    ],
    ids=["defaults", "min4", "no-cutoff", "cut2-min5", "ngram8", "train3", "train2-no-cutoff-min4"],
)
def test_verify_agrees_with_decontam_on_random_corpus(seed: int, cfg: dict) -> None:
    df, eval_df, planted = _random_case(seed)
    ours, theirs, report = _flagged(df, eval_df, **cfg)
    assert ours == sorted(ours, key=lambda c: int(c[1:]))
    assert sorted(ours) == theirs
    # the case is not trivial: planted leaks are found, clean rows and boilerplate-only rows are not
    assert len(ours) >= 15
    # near misses are 12 words of a 13-gram (with n=8 they hold genuine 8-grams); clean rows are never flagged
    possible = {"leak", "boilerplate", "short"} | ({"near_miss"} if "ngram" in cfg else set())
    assert set(ours) <= {c for kind in possible for c in planted[kind]}
    if "max_train_rows" in cfg:  # phrases and short texts planted in enough rows are kept, whatever their items
        without = _flagged(df, eval_df, **{**cfg, "max_train_rows": 0})[0]
        assert set(ours) < set(without)
        assert set(without) - set(ours) <= {c for kind in ("boilerplate", "short", "leak") for c in planted[kind]}
    elif cfg.get("max_ngram_items", 3) == 0:
        assert set(planted["boilerplate"]) <= set(ours)
    elif cfg.get("max_ngram_items", 3) == 2:  # every planted phrase is in >= 2 items
        assert not set(ours) & set(planted["boilerplate"])
    else:  # phrases in 3+ items are kept, those in 2 items are evidence
        assert 0 < len(set(ours) & set(planted["boilerplate"])) < len(planted["boilerplate"])
    # the eval side agrees too: distinct n-grams and short texts excluded, per benchmark
    keys = eval_keys(eval_df, n=cfg.get("ngram", 13), min_words=cfg.get("min_words", 8),
                     max_ngram_items=cfg.get("max_ngram_items", 3))
    stats = report["benchmarks"]
    assert {b: s["eval"]["boilerplate_ngrams"] for b, s in stats.items() if s["eval"]["boilerplate_ngrams"]} == (
        keys.excluded_ngrams
    )
    assert {b: s["eval"]["boilerplate_texts"] for b, s in stats.items() if s["eval"]["boilerplate_texts"]} == (
        keys.excluded_texts
    )
    if cfg.get("max_ngram_items", 3):
        assert sum(keys.excluded_ngrams.values()) > 0
    # and the training side: the same keys ignored as frequent, per benchmark, with the same counts
    frequent = train_frequent_keys(df, keys, cfg.get("max_train_rows", 10))
    assert report["train_frequent_keys"] == len(frequent)
    per_benchmark = Counter(b for key in frequent for b in keys.benchmarks(key))
    assert {b: s["train_frequent_keys"] for b, s in stats.items() if s["train_frequent_keys"]} == per_benchmark
    for name, s in stats.items():
        example = s["example_train_frequent"]
        if example is None:
            continue
        top = max(frequent[key] for key in frequent if name in keys.benchmarks(key))
        assert frequent[example["key"]] == example["conversations"] == top
    if "max_train_rows" in cfg:
        assert len(frequent) >= 3


def test_index_is_independent_of_eval_order() -> None:
    _df, eval_df, _ = _random_case(7)
    a, b = EvalIndex.build(eval_df), EvalIndex.build(eval_df.sample(fraction=1.0, shuffle=True, seed=1))
    assert a.stats() == b.stats() and a.boilerplate_examples() == b.boilerplate_examples()
    assert np.array_equal(a.table, b.table)
