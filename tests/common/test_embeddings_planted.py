"""Issue 20's goal on the planted pairs' HOLDOUT half, for the default embedding model with its registered scoring
(threshold and margin, and the cross-lingual tier's, chosen on the TUNE half by benchmarks/embeddings.py): recall >= 0.9
on paraphrases and translations, <= 5% of hard negatives (English and translated) and <= 1% of random pairs flagged;
and, as the detector sees it, the share of unrelated candidates flagged with ANY of the 1,668 eval prompts of the four
benchmarks. The candidates and the prompts are embedded through the (model hash, text hash) cache kept in pytest's
cache folder: a first run embeds them (minutes on a loaded CPU), later runs read them back."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from assets.common.text.embeddings import (
    DEFAULT_MODEL,
    MODELS,
    CrossLingual,
    Embedder,
    EmbeddingConfig,
    flagged_neighbours,
)
from assets.common.text.language import detect_languages
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
    cross = CrossLingual(spec.cross_threshold, spec.cross_margin, detect_languages(pairs["text"]),
                         detect_languages(prompts))
    found = flagged_neighbours(embedder.embed(pairs["text"].to_list()), embedder.embed(prompts), 10,
                               spec.threshold, spec.margin, cross)
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
                    for kind in ("hard_negative", "random", "translated_hard_negative")}


def test_paraphrases_are_found(holdout: dict[str, float]) -> None:
    assert all(holdout[f"paraphrase_{b}"] >= 0.9 for b in BENCHMARKS)  # English, per benchmark: 5 of 5
    assert holdout["paraphrase"] >= 0.95 and holdout["translated"] >= 0.75  # what holds today: 20/20 and 6/8


def test_hard_negatives_and_random_pairs_goal(holdout: dict[str, float]) -> None:
    assert holdout["hard_negative"] <= 0.05  # the goal: 1 of 20 at most
    assert holdout["random"] <= 0.01
    assert holdout["translated_hard_negative"] <= 0.05  # the cross-lingual tier's same-topic control: 0 of 20


def test_few_unrelated_texts_match_any_eval_prompt(holdout: dict[str, float]) -> None:
    """Against all 1,668 prompts, not only the paired one (what the detector does): the plain cosine threshold flagged
    14% of the random texts and 25% of the hard negatives this way."""
    assert holdout["any_random"] <= 0.01
    assert holdout["any_hard_negative"] <= 0.10  # 2 of 20, one a real rephrasing of another AlpacaEval prompt
    assert holdout["any_translated_hard_negative"] <= 0.05  # 1 of 20: that rephrasing, in Spanish

def test_recall_goal(holdout: dict[str, float]) -> None:
    """26 of 28 (0.929): the cross-lingual tier finds a French AlpacaEval translation at 0.902 (margin 0.06); a Spanish
    IFEval riddle (0.884) and a French MT-Bench question (0.887) stay below its 0.888."""
    assert holdout["positives"] >= 0.9
