"""Diversity of a conversation table: is it "the same style for every prompt" (chapter 16.10, bug 7)? (no Dagster)

* distinct-n (Li et al. 2016): distinct word n-grams / all word n-grams, n = 1..3, over the instructions (every user
  turn) and over the responses (every assistant turn); words are lowercased ``\\w+`` runs. 1.0 = no n-gram repeats;
  a table whose answers all open the same way scores low.
* the most frequent openings: the first ``opening_words`` words of the first instruction / first response, with
  their count and share.
* category entropy: Shannon entropy (bits) of the ``task`` distribution, and normalised by log2 of the taxonomy's
  size (1.0 = every category equally often).
* near-duplicate instruction rate: the share of rows whose first instruction is a near-duplicate (MinHash estimated
  Jaccard >= ``near_duplicate_threshold`` over word ``near_duplicate_ngram``-grams) of an earlier row's. Dedup
  compares whole conversations; this shows prompts that repeat with different answers.

distinct-n and the near-duplicate rate compare rows with each other, so over a whole table they cost more than the
table's size (and distinct-n falls as a table grows); they are taken over a sample of at most
``DiversityConfig.sample_rows`` rows (10,000) chosen by a hash of ``conversation_id``: every row of a smaller table,
the same rows whichever build computes them, a figure comparable across table sizes. The openings read only the start
of each text. So the report costs about the same for a million rows as for ten thousand, and adding a shard changes
it without re-reading every text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from assets.common.data.schema import role_texts
from assets.common.data.taxonomy import TASKS
from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.minhash.lsh import band_hashes, within_pairs
from assets.common.text.minhash.signatures import compute_signatures

_HEAD = 64  # characters of a text that :func:`top_openings` reads first


@dataclass(frozen=True)
class DiversityConfig:
    max_n: int = 3
    top_openings: int = 10
    opening_words: int = 3
    near_duplicate_threshold: float = 0.7
    near_duplicate_ngram: int = 2
    sample_rows: int = 10_000
    """distinct-n and the near-duplicate rate compare rows with each other: over at most this many rows (the ones
    with the smallest hash of their ``conversation_id``, in table order; every row of a smaller table)."""


def distinct_n(texts: pl.Series, n: int) -> float | None:
    """Distinct word n-grams / all word n-grams over ``texts`` (None when there is no n-gram)."""
    return distinct_ns(texts, n)[n]


def distinct_ns(texts: pl.Series, max_n: int) -> dict[int, float | None]:
    """:func:`distinct_n` for n = 1..``max_n``, the words split once; an n-gram is n consecutive words of one text
    (frame-wide shifts, kept where all n words come from the same text: no per-text window)."""
    words = pl.DataFrame({"t": texts.cast(pl.Utf8)}).with_row_index("doc").select(
        "doc", pl.col("t").str.to_lowercase().str.extract_all(r"\w+").alias("w")).explode("w").drop_nulls("w")
    found: dict[int, float | None] = {}
    for n in range(1, max_n + 1):
        same = pl.all_horizontal([pl.lit(True), *((pl.col("doc").shift(-k) == pl.col("doc")).fill_null(False)
                                                 for k in range(1, n))])
        grams = words.select(pl.concat_str([pl.col("w").shift(-k) for k in range(n)], separator=" ").filter(same)
                             .alias("g"))["g"]
        found[n] = grams.n_unique() / grams.len() if grams.len() else None
    return found


def top_openings(texts: pl.Series, words: int, top: int) -> list[dict]:
    """The ``top`` most frequent first-``words``-word openings (lowercased), with count and share. Words are read from
    the first ``_HEAD`` characters of each text; only a longer text with no more than ``words`` words there (the last
    may be cut) is read whole, so the cost does not grow with the length of the texts."""
    def first_words(column: pl.Expr) -> pl.Expr:
        return column.str.to_lowercase().str.extract_all(r"\w+").list.head(words + 1)

    frame = pl.DataFrame({"t": texts.cast(pl.Utf8)}).with_row_index("i").with_columns(
        first_words(pl.col("t").str.slice(0, _HEAD)).alias("w"))
    redo = (frame.filter((pl.col("t").str.len_chars() > _HEAD) & (pl.col("w").list.len() <= words))
            .select("i", first_words(pl.col("t")).alias("whole")))
    openings = (frame.join(redo, on="i", how="left", maintain_order="left")
                .select(pl.coalesce("whole", "w").list.head(words).list.join(" ").alias("opening"))
                .filter(pl.col("opening").str.len_chars() > 0))
    total = openings.height
    counts = openings.group_by("opening").len().sort(["len", "opening"], descending=[True, False]).head(top)
    return [{"opening": o, "count": int(c), "share": round(c / total, 4)} for o, c in counts.iter_rows()]


def category_entropy(tasks: pl.Series) -> dict:
    counts = np.array([c for _, c in tasks.value_counts().iter_rows()], dtype=float)
    if counts.sum() == 0:
        return {"bits": 0.0, "normalized": 0.0, "categories_present": 0}
    p = counts / counts.sum()
    bits = float(-(p * np.log2(p)).sum())
    return {"bits": round(bits, 4), "normalized": round(bits / math.log2(len(TASKS)), 4),
            "categories_present": int((counts > 0).sum())}


def near_duplicate_rate(texts: pl.Series, threshold: float, ngram: int) -> float | None:
    """Share of texts that are a near-duplicate of an earlier text (MinHash LSH, verified on the signatures)."""
    if texts.len() < 2:
        return 0.0 if texts.len() else None
    cfg = MinHashConfig(ngram=ngram, threshold=threshold)
    signatures = compute_signatures(texts.fill_null(""), cfg)
    first, second = within_pairs(band_hashes(signatures, cfg))
    similar = (signatures[first] == signatures[second]).mean(axis=1) >= threshold if first.size else np.array([])
    duplicates = np.unique(np.maximum(first, second)[similar]) if first.size else np.array([])
    return round(duplicates.size / texts.len(), 4)


def comparison_sample(df: pl.DataFrame, rows: int) -> pl.DataFrame:
    """At most ``rows`` rows of ``df``: those with the smallest hash of ``conversation_id`` (ties by position), in
    table order; all of ``df`` when it is not larger."""
    if df.height <= rows:
        return df
    order = pl.DataFrame({"h": df["conversation_id"].hash(seed=0), "i": pl.int_range(df.height, eager=True)})
    return df[order.sort("h", "i").head(rows)["i"].sort()]


def diversity_report(df: pl.DataFrame, cfg: DiversityConfig = DiversityConfig()) -> dict:
    """The diversity measures of a conversation table with a ``task`` column (see the module docstring): openings
    and category entropy over every row; distinct-n and the near-duplicate rate, which compare rows with each other,
    over :func:`comparison_sample` (``cfg.sample_rows``), so their cost does not grow with the table."""
    firsts = df.select(role_texts("user").list.first().alias("instruction"),
                       role_texts("assistant").list.first().alias("response"))
    sample = comparison_sample(df, cfg.sample_rows)
    every = {role: sample.select(role_texts(r).alias("t")).explode("t")["t"]
             for role, r in (("instructions", "user"), ("responses", "assistant"))}
    return {
        "rows": df.height,
        "sample_rows": sample.height,
        "distinct_n": {role: {str(n): _round(value) for n, value in distinct_ns(texts, cfg.max_n).items()}
                       for role, texts in every.items()},
        "top_openings": {"instructions": top_openings(firsts["instruction"], cfg.opening_words, cfg.top_openings),
                         "responses": top_openings(firsts["response"], cfg.opening_words, cfg.top_openings)},
        "category_entropy": category_entropy(df["task"]) if "task" in df.columns else None,
        "near_duplicate_instruction_rate": near_duplicate_rate(
            sample.select(role_texts("user").list.first().alias("i"))["i"], cfg.near_duplicate_threshold,
            cfg.near_duplicate_ngram),
        "config": {"near_duplicate_threshold": cfg.near_duplicate_threshold,
                   "near_duplicate_ngram": cfg.near_duplicate_ngram, "opening_words": cfg.opening_words,
                   "sample_rows": cfg.sample_rows},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
