"""Issue 20's goal on the planted pairs' HOLDOUT half, for the default embedding model at its registered threshold
(chosen on the TUNE half by benchmarks/embeddings.py): recall >= 0.9 on paraphrases, <= 5% of hard negatives and
<= 1% of random pairs flagged. What the model misses is an expected failure (strict: it turns red when it passes),
beside a test of what holds today."""

from __future__ import annotations

import polars as pl
import pytest

from assets.common.text.embeddings import DEFAULT_MODEL, MODELS, Embedder, EmbeddingConfig, paired_max_cosine
from assets.eval_sets.planted import flag_rates, planted_pairs


@pytest.fixture(scope="module")
def holdout() -> dict[str, float]:
    pairs = planted_pairs().filter(split="holdout")
    embedder = Embedder(EmbeddingConfig(model=DEFAULT_MODEL))
    scores = paired_max_cosine(embedder.embed(pairs["text"].to_list()), embedder.embed(pairs["eval_text"].to_list()))
    flagged = pl.Series("flagged", scores >= MODELS[DEFAULT_MODEL].paraphrase_threshold)
    return flag_rates(pairs.with_columns(flagged))


def test_paraphrases_are_found(holdout: dict[str, float]) -> None:
    assert holdout["positives"] >= 0.9  # the goal: paraphrases, the translated ones included
    assert all(holdout[f"paraphrase_{b}"] >= 0.9 for b in ("alpaca_eval", "humaneval", "ifeval", "mt_bench"))
    assert holdout["translated"] >= 0.75  # what holds today (6 of 8); reported apart in the README


def test_random_pairs_are_not_flagged(holdout: dict[str, float]) -> None:
    assert holdout["random"] <= 0.01


def test_hard_negatives_flagged_today(holdout: dict[str, float]) -> None:
    assert holdout["hard_negative"] <= 0.10  # 2 of 20: above the goal's 5%, see the next test


@pytest.mark.xfail(strict=True, reason="MISSED on the holdout half: 2 of 20 same-topic hard negatives (10%) score "
                   "above the threshold chosen on the tune half; issue 20's LLM verification step is meant for these")
def test_hard_negatives_goal(holdout: dict[str, float]) -> None:
    assert holdout["hard_negative"] <= 0.05
