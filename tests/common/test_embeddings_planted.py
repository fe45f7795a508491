"""Issue 20's goal on the planted pairs' HOLDOUT half, for the default embedding model with its registered scoring
(threshold and margin chosen on the TUNE half by benchmarks/embeddings.py): recall >= 0.9 on paraphrases, <= 5% of
hard negatives and <= 1% of random pairs flagged; and, as the detector sees it, the share of unrelated candidates
flagged with ANY of the 1,668 eval prompts of the four benchmarks. The candidates and the prompts are embedded through
the (model hash, text hash) cache kept in pytest's cache folder: a first run embeds them (minutes on a loaded CPU),
later runs read them back. What the model misses is an expected failure (strict: it turns red when it passes)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from assets.common.text.embeddings import DEFAULT_MODEL, MODELS, Embedder, EmbeddingConfig, distinct_neighbours
from assets.eval_sets.core import load_bundled_eval_sets
from assets.eval_sets.planted import POSITIVE_KINDS, flag_rates, planted_pairs

BENCHMARKS = ["alpaca_eval", "humaneval", "ifeval", "mt_bench"]
PROMPT_FIELDS = ["prompt", "instruction", "turn_1", "turn_2"]


@pytest.fixture(scope="module")
def holdout(request: pytest.FixtureRequest) -> dict[str, float]:
    pairs = planted_pairs()
    prompts = (load_bundled_eval_sets(BENCHMARKS).filter(pl.col("field").is_in(PROMPT_FIELDS))["text"]
               .unique().sort().to_list())
    embedder = Embedder(EmbeddingConfig(model=DEFAULT_MODEL), cache_root=request.config.cache.mkdir("embeddings"))
    spec = MODELS[DEFAULT_MODEL]
    found = distinct_neighbours(embedder.embed(pairs["text"].to_list()), embedder.embed(prompts), 10,
                                spec.threshold, spec.margin).filter(pl.col("score") >= spec.threshold)
    position = {text: i for i, text in enumerate(prompts)}
    own = np.array([position[text] for text in pairs["eval_text"]])
    query, item = found["query"].to_numpy(), found["item"].to_numpy()
    flags = pairs.with_columns(
        pl.Series("flagged", np.isin(np.arange(pairs.height), query[item == own[query]])),
        pl.Series("flagged_any", np.isin(np.arange(pairs.height), query)),
        first=pl.int_range(pl.len()).over("text") == 0,
        verbatim=pl.col("text").is_in(pl.Series(prompts).implode()),
    ).filter(split="holdout")
    rates = flag_rates(flags)
    # the whole-corpus rate: each unrelated text once; a text that IS an eval prompt is true contamination
    unrelated = flags.filter(pl.col("first") & ~pl.col("verbatim") & ~pl.col("kind").is_in(list(POSITIVE_KINDS)))
    return rates | {f"any_{kind}": float(unrelated.filter(kind=kind)["flagged_any"].mean())
                    for kind in ("hard_negative", "random")}


def test_paraphrases_are_found(holdout: dict[str, float]) -> None:
    assert all(holdout[f"paraphrase_{b}"] >= 0.9 for b in BENCHMARKS)  # English, per benchmark: 5 of 5
    assert holdout["paraphrase"] >= 0.95 and holdout["translated"] >= 0.625  # what holds today: 20/20 and 5/8


def test_hard_negatives_and_random_pairs_goal(holdout: dict[str, float]) -> None:
    assert holdout["hard_negative"] <= 0.05  # the goal: 1 of 20 at most
    assert holdout["random"] <= 0.01


def test_few_unrelated_texts_match_any_eval_prompt(holdout: dict[str, float]) -> None:
    """Against all 1,668 prompts, not only the paired one (what the detector does): the plain cosine threshold flagged
    14% of the random texts and 25% of the hard negatives this way."""
    assert holdout["any_random"] <= 0.01
    assert holdout["any_hard_negative"] <= 0.10  # 2 of 20, one a real rephrasing of another AlpacaEval prompt


@pytest.mark.xfail(strict=True, reason="MISSED on the holdout half: 25 of 28 rephrasings (0.893); the 3 misses are "
                   "translations (French and Spanish) whose cosine with their item (0.884-0.902) is no higher than "
                   "multilingual-e5-small's cosine between same-topic English texts")
def test_recall_goal(holdout: dict[str, float]) -> None:
    assert holdout["positives"] >= 0.9
