"""The training-side frequency cut-off (``max_train_rows``, the GPT-3 paper's remedy): an eval n-gram (or whole
short eval text) found in ``max_train_rows`` or more distinct training conversations is generic text, not
evidence of contamination. Seen on a real run: a generated answer removed because it ends with "I hope this
helps! Let me know if you have any other questions.", a 13-gram of one Arena-Hard baseline answer (one eval
item only, so the eval-side ``max_ngram_items`` cut-off cannot see it).

Both implementations are exercised: the removal (removal.py) and the independent re-check (verify.py).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from assets.common.data.schema import MESSAGE
from assets.decontamination.assets import DecontamSettings
from assets.decontamination.config import DecontamConfig
from assets.decontamination.matching import find_contamination
from assets.decontamination.removal import decontaminate
from assets.decontamination.verify import eval_keys, find_leaks, train_frequent_keys
from tests.dedup_corpus import BOILERPLATE, BOILERPLATE_NORM, random_vocab, random_words

CLOSING = "Feel free to reach out anytime with more questions."  # 9 words: a short eval text, matched whole
CLOSING_NORM = "feel free to reach out anytime with more questions"

_VOCAB = random_vocab(30, 8000, 4, 9)


def _words(rng: np.random.Generator, n: int) -> str:
    return random_words(_VOCAB, rng, n)


def _conversations(turns: list[tuple[str, str]]) -> pl.DataFrame:
    messages = [[{"role": "user", "content": u}, {"role": "assistant", "content": a}] for u, a in turns]
    return pl.DataFrame(
        {"conversation_id": [f"c{i}" for i in range(len(turns))], "messages": messages},
        schema={"conversation_id": pl.Utf8, "messages": pl.List(MESSAGE)},
    )


def _eval(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["benchmark", "item_id", "field", "text"], orient="row")


def _arena(rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """Four Arena-Hard-style items, only a0's baseline answer ending with the boilerplate, and an MT-Bench item
    whose whole reference answer is the short closing line (also inside a1's baseline answer: two eval items,
    below the eval-side cut-off)."""
    rows = [
        ("arena_hard", "a0", "prompt", _words(rng, 25)),
        ("arena_hard", "a0", "baseline_answer", f"{_words(rng, 60)}. {BOILERPLATE}"),
        ("arena_hard", "a1", "prompt", _words(rng, 25)),
        ("arena_hard", "a1", "baseline_answer", f"{_words(rng, 60)}. {CLOSING}"),
        ("mt_bench", "90", "reference_answer", CLOSING),
    ]
    rows += [("arena_hard", f"a{k}", "prompt", _words(rng, 25)) for k in (2, 3)]
    return rows


def _generic_answers(rng: np.random.Generator, rows: int, ending: str) -> list[tuple[str, str]]:
    """Distinct, otherwise unrelated conversations whose answers all end with ``ending``."""
    return [(f"{_words(rng, 12)}?", f"{_words(rng, int(rng.integers(30, 80)))}. {ending}") for _ in range(rows)]


def _removed(df: pl.DataFrame, eval_df: pl.DataFrame, **cfg) -> tuple[list[str], list[str], dict]:
    """Conversation ids removed by the removal (n-gram detector) and flagged by verify.py, and the report."""
    _kept, rejected, report = decontaminate(df, eval_df, DecontamConfig(minhash=None, **cfg))
    verify_args = {"n": cfg.get("ngram", 13)} | {k: v for k, v in cfg.items() if k != "ngram"}
    leaks = find_leaks(df, eval_df, limit=None, **verify_args)
    theirs = sorted({leak.conversation_id for leak in leaks}, key=lambda c: int(c[1:]))  # in table order
    return rejected["conversation_id"].to_list(), theirs, report


@pytest.mark.parametrize(("ending", "key"), [(BOILERPLATE, BOILERPLATE_NORM), (CLOSING, CLOSING_NORM)],
                         ids=["13-gram", "short-text"])
@pytest.mark.parametrize(("rows", "max_train_rows"), [(10, 10), (25, 10), (5, 5)])
def test_key_frequent_in_training_rows_is_not_evidence(tmp_path, ending, key, rows, max_train_rows) -> None:
    rng = np.random.default_rng(rows)
    eval_df = _eval(_arena(rng))
    df = _conversations(_generic_answers(rng, rows, ending) + [(_words(rng, 10), _words(rng, 40))])
    df.write_parquet(tmp_path / "conversations.parquet")
    df = pl.read_parquet(tmp_path / "conversations.parquet")
    ours, theirs, report = _removed(df, eval_df, max_train_rows=max_train_rows)
    assert ours == theirs == []
    assert report["config"]["max_train_rows"] == max_train_rows
    assert report["train_frequent_keys"] == 1
    # reported under the benchmark of the item the key belongs to: a0's 13-gram, MT-Bench 90's whole text
    owner, other = ("mt_bench", "arena_hard") if ending == CLOSING else ("arena_hard", "mt_bench")
    stats = report["benchmarks"][owner]
    assert stats["train_frequent_keys"] == 1
    assert stats["example_train_frequent"] == {"key": key, "conversations": rows}
    assert stats["rows_removed"] == 0 and stats["matched_item_ids"] == []
    assert report["benchmarks"][other]["train_frequent_keys"] == 0
    assert report["benchmarks"][other]["example_train_frequent"] is None
    assert report["boilerplate_ngrams"] == report["boilerplate_texts"] == 0  # not the eval-side cut-off
    keys = eval_keys(eval_df)
    assert train_frequent_keys(df, keys, max_train_rows) == {key: rows}
    assert keys.benchmarks(key) == {owner}


@pytest.mark.parametrize(("ending", "key"), [(BOILERPLATE, BOILERPLATE_NORM), (CLOSING, CLOSING_NORM)],
                         ids=["13-gram", "short-text"])
def test_key_in_fewer_rows_is_still_removed(ending, key) -> None:
    """One row short of the cut-off, every row is removed: the cut-off is what keeps them above."""
    rng = np.random.default_rng(40)
    eval_df = _eval(_arena(rng))
    df = _conversations(_generic_answers(rng, 9, ending) + [(_words(rng, 10), _words(rng, 40))])
    ours, theirs, report = _removed(df, eval_df)
    assert ours == theirs == [f"c{i}" for i in range(9)]
    assert report["train_frequent_keys"] == 0
    owner = report["benchmarks"]["mt_bench" if ending == CLOSING else "arena_hard"]
    assert owner["example_train_frequent"] is None
    assert owner["example_ngram"] == key and owner["rows_removed"] == 9
    assert train_frequent_keys(df, eval_keys(eval_df), 10) == {}


def test_count_is_distinct_conversations_not_messages() -> None:
    """Six conversations with the phrase in both the prompt and the answer: 12 messages, 6 conversations."""
    rng = np.random.default_rng(41)
    eval_df = _eval(_arena(rng))
    df = _conversations(
        [(f"{_words(rng, 10)}. {BOILERPLATE}", f"{_words(rng, 30)}. {BOILERPLATE}") for _ in range(6)]
    )
    ours, theirs, _ = _removed(df, eval_df, max_train_rows=7)
    assert ours == theirs == [f"c{i}" for i in range(6)]
    ours, theirs, report = _removed(df, eval_df, max_train_rows=6)
    assert ours == theirs == []
    assert report["benchmarks"]["arena_hard"]["example_train_frequent"] == {
        "key": BOILERPLATE_NORM, "conversations": 6}


def test_real_leak_next_to_frequent_boilerplate_is_still_removed() -> None:
    rng = np.random.default_rng(42)
    rows = _arena(rng)
    eval_df = _eval(rows)
    prompt_2, answer_0 = rows[5][3], rows[1][3]
    turns = _generic_answers(rng, 20, BOILERPLATE)
    turns[7] = (f"{_words(rng, 30)}\n\nNow please answer this: {prompt_2} {_words(rng, 15)}", turns[7][1])
    turns[12] = ("Hi.", f"Here is a copy of it: {answer_0}")  # a0's answer, boilerplate included
    df = _conversations(turns)
    ours, theirs, report = _removed(df, eval_df)
    assert ours == theirs == ["c7", "c12"]
    arena = report["benchmarks"]["arena_hard"]
    assert arena["matched_item_ids"] == ["a0", "a2"]
    assert arena["train_frequent_keys"] == 1  # the boilerplate alone: 20 rows, c7 and c12 included
    assert arena["example_train_frequent"] == {"key": BOILERPLATE_NORM, "conversations": 20}
    leaks = {leak.conversation_id: leak for leak in find_leaks(df, eval_df)}
    assert leaks["c7"].item_id == "a2" and leaks["c7"].role == "user"
    assert leaks["c12"].item_id == "a0" and leaks["c12"].evidence != BOILERPLATE_NORM
    matches = find_contamination(df, eval_df, DecontamConfig(minhash=None))
    assert BOILERPLATE_NORM not in matches["matched_ngram"].to_list()


def test_repeated_leak_is_the_trade_off_and_minhash_still_catches_whole_copies() -> None:
    """The documented trade-off: an eval prompt asked in ten distinct conversations is ignored by the n-gram
    detector; the MinHash detector (not subject to the cut-off) still removes messages that are the prompt."""
    rng = np.random.default_rng(43)
    rows = _arena(rng)
    eval_df = _eval(rows)
    prompt_3 = rows[6][3]
    df = _conversations([(prompt_3, _words(rng, 40)) for _ in range(10)] + [(_words(rng, 12), _words(rng, 40))])
    ours, theirs, report = _removed(df, eval_df)
    assert ours == theirs == []
    assert report["benchmarks"]["arena_hard"]["train_frequent_keys"] == 13  # every 13-gram of the 25 words
    _kept, rejected, _ = decontaminate(df, eval_df)  # default config: MinHash on
    assert rejected["conversation_id"].to_list() == [f"c{i}" for i in range(10)]
    assert set(rejected["detail"].str.contains("jaccard").to_list()) == {True}


def test_zero_disables_the_cut_off() -> None:
    rng = np.random.default_rng(44)
    eval_df = _eval(_arena(rng))
    df = _conversations(_generic_answers(rng, 15, BOILERPLATE) + _generic_answers(rng, 12, CLOSING))
    everything = [f"c{i}" for i in range(27)]
    ours, theirs, report = _removed(df, eval_df, max_train_rows=0)
    assert ours == theirs == everything
    assert report["train_frequent_keys"] == 0 and report["config"]["max_train_rows"] == 0
    assert all(b["train_frequent_keys"] == 0 for b in report["benchmarks"].values())
    # identical matches to a cut-off no key reaches, i.e. the behaviour before it existed
    old = find_contamination(df, eval_df, DecontamConfig(minhash=None, max_train_rows=0))
    assert old.equals(find_contamination(df, eval_df, DecontamConfig(minhash=None, max_train_rows=1000)))
    assert old["conversation_id"].unique().len() == 27
    assert train_frequent_keys(df, eval_keys(eval_df), 0) == {}
    # the default keeps them all
    ours, theirs, report = _removed(df, eval_df)
    assert ours == theirs == [] and report["train_frequent_keys"] == 2


@pytest.mark.parametrize("bad", [-1, 1])
def test_bad_max_train_rows_is_rejected(bad: int) -> None:
    df = _conversations([("hi", "hello")])
    eval_df = _eval([("b", "1", "q", "x")])
    with pytest.raises(ValueError, match="max_train_rows must be 0 .* or >= 2"):
        DecontamConfig(max_train_rows=bad)
    with pytest.raises(ValueError, match="max_train_rows"):
        DecontamSettings(max_train_rows=bad).to_core()
    with pytest.raises(ValueError, match="max_train_rows"):
        find_leaks(df, eval_df, max_train_rows=bad)
    with pytest.raises(ValueError, match="max_train_rows"):
        train_frequent_keys(df, eval_keys(eval_df), bad)
