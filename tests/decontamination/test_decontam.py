"""Decontamination: n-gram overlap (incl. short items), MinHash similarity, report and ordering."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from assets.common.data.schema import MESSAGE, REJECTED_DETAIL, REJECTED_REASON
from assets.decontamination.config import DecontamConfig
from assets.decontamination.index import EvalIndex
from assets.decontamination.matching import MATCH_SCHEMA, find_contamination
from assets.decontamination.removal import decontaminate
from tests.dedup_corpus import random_vocab, random_words

_VOCAB = random_vocab(0, 6000, 3, 9)


def _words(rng: np.random.Generator, n: int) -> str:
    return random_words(_VOCAB, rng, n)


def _conversations(pairs: list[tuple[str, str]], system: bool = True) -> pl.DataFrame:
    messages = []
    for user, assistant in pairs:
        turn = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append(([{"role": "system", "content": "You are helpful."}] if system else []) + turn)
    return pl.DataFrame(
        {"conversation_id": [f"c{i}" for i in range(len(pairs))], "messages": messages},
        schema={"conversation_id": pl.Utf8, "messages": pl.List(MESSAGE)},
    )


def _eval(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["benchmark", "item_id", "field", "text"], orient="row")


def _clean_corpus(seed: int, n: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [
        (_words(rng, int(rng.integers(10, 40))), _words(rng, int(rng.integers(60, 200)))) for _ in range(n)
    ]


QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("style", ["verbatim", "upper", "punctuation"])
def test_eval_item_embedded_in_long_response_is_caught(where: str, style: str) -> None:
    rng = np.random.default_rng(1)
    item = {
        "verbatim": QUESTION,
        "upper": QUESTION.upper(),
        "punctuation": QUESTION.replace(",", ";") + "!!",
    }[style]
    before, after = _words(rng, 300), _words(rng, 300)
    response = {
        "start": f"{item} {after}",
        "middle": f"{before}\n\n{item}\n{after}",
        "end": f"{before} {item}",
    }[where]
    pairs = _clean_corpus(2, 30)
    pairs[17] = (pairs[17][0], response)
    df = _conversations(pairs)
    eval_df = _eval([("gsm8k", "7", "question", QUESTION), ("gsm8k", "7", "answer", "72")])
    kept, rejected, report = decontaminate(df, eval_df)
    assert rejected["conversation_id"].to_list() == ["c17"]
    assert kept.height == 29 and "c17" not in kept["conversation_id"].to_list()
    assert kept.columns == df.columns
    assert rejected[REJECTED_REASON].to_list() == ["contamination"]
    assert "gsm8k/7:question in response" in rejected[REJECTED_DETAIL][0]
    bench = report["benchmarks"]["gsm8k"]
    assert bench["rows_removed"] == 1 and bench["matched_item_ids"] == ["7"]
    assert (
        bench["example_ngram"]
        in "natalia sold clips to 48 of her friends in april and then she sold half as many"
    )
    assert len(bench["example_ngram"].split(" ")) == 13
    assert bench["eval"]["too_short"] == 1  # the one-word answer "72" is counted, not silently skipped


def test_matches_report_side_and_message() -> None:
    pairs = _clean_corpus(3, 6)
    pairs[1] = (f"Please solve: {QUESTION}", "Sure.")
    pairs[4] = ("Give me a puzzle.", f"Here you go: {QUESTION}")
    df = _conversations(pairs)
    eval_df = _eval([("gsm8k", "7", "question", QUESTION)])
    matches = find_contamination(df, eval_df, DecontamConfig(minhash=None))
    assert dict(matches.schema) == MATCH_SCHEMA
    assert matches.select("conversation_id", "message_index", "role", "side", "detector").rows() == [
        ("c1", 1, "user", "prompt", "ngram"),
        ("c4", 2, "assistant", "response", "ngram"),
    ]
    # restricting roles restricts the sides checked
    only_prompts = find_contamination(df, eval_df, DecontamConfig(minhash=None, roles=("user",)))
    assert only_prompts["conversation_id"].to_list() == ["c1"]


@pytest.mark.parametrize(
    ("item", "text", "caught"),
    [
        (
            "What is the capital city of France?",
            "Quick quiz: what is the capital city of france? Answer it.",
            True,
        ),
        ("What is the capital city of France?", "What is the capital city of Spain?", False),  # prefix only
        ("What is the capital city of France?", "the capital city of France is Paris", False),  # suffix only
        ("Name four noble gases", "name four noble gases please", True),  # exactly min_words (4)
        ("Name noble gases", "name noble gases please", False),  # 3 words < min_words: ignored
        ("capital city", "the capital city of france", False),
    ],
)
def test_short_eval_items_match_as_whole_sequence(item: str, text: str, caught: bool) -> None:
    df = _conversations([(text, "I do not know.")] + _clean_corpus(4, 5))
    eval_df = _eval([("quiz", "1", "question", item)])
    # min_words=4 pinned (the default is 8) so that these short items exercise whole-sequence matching
    kept, rejected, report = decontaminate(df, eval_df, DecontamConfig(min_words=4, minhash=None))
    assert (rejected["conversation_id"].to_list() == ["c0"]) is caught
    stats = report["benchmarks"]["quiz"]["eval"]
    n_words = len(item.split())
    assert stats["too_short"] == (1 if n_words < 4 else 0)
    assert stats["whole_sequence"] == (1 if 4 <= n_words < 13 else 0)


def test_clean_corpus_is_kept_entirely() -> None:
    pairs = _clean_corpus(5, 400)
    rng = np.random.default_rng(6)
    eval_df = _eval(
        [("bench", str(i), "question", _words(rng, int(rng.integers(5, 60)))) for i in range(300)]
    )
    kept, rejected, report = decontaminate(_conversations(pairs), eval_df)
    assert kept.height == 400 and rejected.height == 0
    assert report["rows_removed"] == 0 and report["benchmarks"]["bench"]["matched_item_ids"] == []
    assert report["benchmarks"]["bench"]["example_ngram"] is None


def test_configurable_ngram_length() -> None:
    rng = np.random.default_rng(7)
    shared = _words(rng, 9)
    eval_text = f"{_words(rng, 20)} {shared} {_words(rng, 20)}"
    df = _conversations([(f"{_words(rng, 15)} {shared} {_words(rng, 15)}", "ok")])
    eval_df = _eval([("b", "1", "q", eval_text)])
    assert find_contamination(df, eval_df, DecontamConfig(minhash=None)).height == 0
    m = find_contamination(df, eval_df, DecontamConfig(ngram=8, minhash=None))
    assert m["matched_ngram"].to_list() == [" ".join(shared.split(" ")[:8])]


def test_ngram_does_not_span_messages() -> None:
    """Each message is matched on its own: an eval text split across two turns is not an n-gram match."""
    rng = np.random.default_rng(8)
    words = _words(rng, 20).split(" ")
    df = _conversations([(" ".join(words[:10]), " ".join(words[10:]))])
    eval_df = _eval([("b", "1", "q", " ".join(words))])
    assert find_contamination(df, eval_df, DecontamConfig(minhash=None)).height == 0


def test_minhash_catches_light_paraphrase_that_ngrams_miss() -> None:
    rng = np.random.default_rng(9)
    original = _words(rng, 40).split(" ")
    reworded = list(original)
    for k in range(6, 40, 12):  # change every 12th word: no 13-gram survives, J(3-grams) ~ 0.6
        reworded[k] = "different"
    pairs = _clean_corpus(10, 20)
    pairs[3] = (" ".join(reworded), "Answer.")
    df = _conversations(pairs)
    eval_df = _eval(
        [("mmlu", "42", "question", " ".join(original)), ("mmlu", "43", "question", _words(rng, 40))]
    )
    without = find_contamination(df, eval_df, DecontamConfig(minhash=None))
    assert without.height == 0
    matches = find_contamination(df, eval_df)
    assert matches.select("conversation_id", "item_id", "detector").rows() == [("c3", "42", "minhash")]
    assert 0.5 <= matches["similarity"][0] < 1.0
    assert matches["matched_ngram"][0] is None


def test_output_is_deterministic_and_independent_of_eval_order() -> None:
    rng = np.random.default_rng(11)
    items = [_words(rng, 30) for _ in range(20)]
    pairs = _clean_corpus(12, 40)
    for k, i in [(3, 0), (3, 5), (10, 5), (25, 19), (39, 2)]:
        pairs[k] = (f"{pairs[k][0]} {items[i]}", pairs[k][1])
    df = _conversations(pairs)
    eval_df = _eval(
        [("b" if i % 2 else "a", str(i), "q", t) for i, t in enumerate(items)] + [("a", "x", "answer", "yes")]
    )
    m1 = find_contamination(df, eval_df)
    m2 = find_contamination(df, eval_df.sample(fraction=1.0, shuffle=True, seed=3))
    assert m1.equals(m2)
    assert m1.select("conversation_id", "benchmark", "item_id").unique(maintain_order=True).rows() == [
        ("c3", "a", "0"),
        ("c3", "b", "5"),
        ("c10", "b", "5"),
        ("c25", "b", "19"),
        ("c39", "a", "2"),
    ]
    kept, rejected, report = decontaminate(df, EvalIndex.build(eval_df))
    assert rejected["conversation_id"].to_list() == ["c3", "c10", "c25", "c39"]
    assert report["benchmarks"]["a"]["matched_item_ids"] == ["0", "2"]
    assert report["benchmarks"]["b"]["matched_item_ids"] == ["19", "5"]
    assert report["benchmarks"]["b"]["rows_removed"] == 3
    assert report["benchmarks"]["a"]["eval"]["too_short"] == 1
    assert report["rows_kept"] + report["rows_removed"] == 40


def test_empty_inputs() -> None:
    df = _conversations([])
    kept, rejected, report = decontaminate(df, _eval([("b", "1", "q", QUESTION)]))
    assert kept.height == 0 and rejected.height == 0 and report["rows_in"] == 0
    none = find_contamination(_conversations(_clean_corpus(1, 3)), _eval([("b", "1", "q", "hi")]))
    assert none.height == 0 and dict(none.schema) == MATCH_SCHEMA
