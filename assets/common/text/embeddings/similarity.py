"""Cosine similarity between embedded texts, a match on any chunk counting (no Dagster here): all pairs of two
small sets, aligned pairs, and each query's top-k neighbours in a corpus computed in blocks of bounded memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from assets.common.text.embeddings.store import Embeddings
from assets.common.text.language import UNDETERMINED

NEIGHBOUR_SCHEMA: dict[str, pl.DataType] = {"query": pl.Int64, "item": pl.Int64, "score": pl.Float32}


def max_chunk_cosine(a: Embeddings, b: Embeddings) -> np.ndarray:
    """(a.n_texts, b.n_texts): for each pair of texts, the highest cosine between any chunk of one and any chunk of
    the other."""
    if a.n_texts == 0 or b.n_texts == 0:
        return np.zeros((a.n_texts, b.n_texts), np.float32)
    sims = a.vectors @ b.vectors.T
    rows = np.maximum.reduceat(sims, a.starts(), axis=0)
    return np.maximum.reduceat(rows, b.starts(), axis=1)


def paired_max_cosine(a: Embeddings, b: Embeddings) -> np.ndarray:
    """(n,): for aligned texts ``a[i]`` and ``b[i]``, the highest cosine between any chunk of one and of the other."""
    if a.n_texts != b.n_texts:
        raise ValueError(f"paired_max_cosine needs as many texts on both sides, got {a.n_texts} and {b.n_texts}")
    a_bounds = np.append(a.starts(), a.owner.size)
    b_bounds = np.append(b.starts(), b.owner.size)
    return np.array([float((a.vectors[a_bounds[i]:a_bounds[i + 1]] @ b.vectors[b_bounds[i]:b_bounds[i + 1]].T).max())
                     for i in range(a.n_texts)], dtype=np.float32)


def top_k_neighbours(queries: Embeddings, corpus: Embeddings, k: int, max_floats: int = 1 << 25) -> pl.DataFrame:
    """For each query text, its ``k`` nearest corpus texts by max-over-chunks cosine: columns
    :data:`NEIGHBOUR_SCHEMA` (positions in ``queries`` and ``corpus``), ordered by query, score descending, then
    item. Query texts are taken in blocks whose similarity matrix holds at most ``max_floats`` values (at least one
    text per block), so memory is bounded whatever the number of queries; no all-pairs table is kept."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, corpus.n_texts)
    if queries.n_texts == 0 or k == 0:
        return pl.DataFrame(schema=NEIGHBOUR_SCHEMA)
    q_bounds = np.append(queries.starts(), queries.owner.size)
    c_starts = corpus.starts()
    per_block = max(1, max_floats // max(1, corpus.owner.size))  # query chunks per block
    frames, first = [], 0
    while first < queries.n_texts:
        last = max(first + 1, int(np.searchsorted(q_bounds, q_bounds[first] + per_block, side="right")) - 1)
        last = min(last, queries.n_texts)
        sims = queries.vectors[q_bounds[first]:q_bounds[last]] @ corpus.vectors.T
        per_text = np.maximum.reduceat(np.maximum.reduceat(sims, c_starts, axis=1), q_bounds[first:last] -
                                       q_bounds[first], axis=0)
        frames.append(_top_k_rows(per_text, k, first))
        first = last
    return pl.concat(frames)


def _top_k_rows(scores: np.ndarray, k: int, offset: int) -> pl.DataFrame:
    """The ``k`` best columns of each row of ``scores`` (rows are queries ``offset``...), ties broken by column."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
        np.arange(scores.shape[1]), (scores.shape[0], 1))
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    items, values = np.take_along_axis(part, order, axis=1), np.take_along_axis(picked, order, axis=1)
    queries = np.repeat(np.arange(offset, offset + scores.shape[0]), k)
    return pl.DataFrame({"query": queries, "item": items.ravel(), "score": values.ravel()}, schema=NEIGHBOUR_SCHEMA)


def corpus_twins(corpus: Embeddings, threshold: float, max_floats: int = 1 << 25) -> pl.DataFrame:
    """Pairs of distinct corpus texts scoring at least ``threshold`` with each other (each a rephrasing of the other,
    by the detector's own measure): columns ``item``, ``twin`` (positions in ``corpus``), both directions."""
    schema = {"item": pl.Int64, "twin": pl.Int64}
    if corpus.n_texts == 0:
        return pl.DataFrame(schema=schema)
    width = min(corpus.n_texts, 16)
    while True:
        found = top_k_neighbours(corpus, corpus, width, max_floats).filter(
            (pl.col("query") != pl.col("item")) & (pl.col("score") >= threshold))
        full = found.group_by("query").len().filter(pl.col("len") >= width - 1).height
        if not full or width >= corpus.n_texts:  # every text's twins fit in the window (itself included)
            return found.select(pl.col("query").alias("item"), pl.col("item").alias("twin")).cast(schema)
        width = min(corpus.n_texts, width * 4)


def distinct_neighbours(queries: Embeddings, corpus: Embeddings, k: int, threshold: float, margin: float,
                        max_floats: int = 1 << 25) -> pl.DataFrame:
    """Each query's ``k`` nearest corpus texts (as :func:`top_k_neighbours`: same columns, same max-over-chunks
    cosine in ``score``, same order), keeping only those that stand out: a corpus text is kept when its cosine exceeds
    by at least ``margin`` the query's best cosine with any corpus text that is neither it nor one of its twins
    (:func:`corpus_twins` at ``threshold``). A rephrasing of one eval item is close to that item (and its
    near-copies) and clearly further from every other one; a same-topic instruction is about as close to several
    eval items, so the corpus as a whole, not one pair, decides (the ratio test of nearest-neighbour matching).
    The decontamination's rule (the threshold too, and cross-lingual pairs) is :func:`flagged_neighbours`."""
    found, lead = _neighbours_and_leads(queries, corpus, k, threshold, max_floats)
    return found.filter(pl.Series(lead >= margin)) if found.height else found


@dataclass(frozen=True)
class CrossLingual:
    """The second tier of :func:`flagged_neighbours`: a pair whose two texts are in different languages (both
    identified: :mod:`assets.common.text.language`) is flagged at cosine >= ``threshold`` when it stands out by
    ``margin``. A translation scores lower with its item than an English rephrasing does (multilingual models keep a
    language component in every vector), and lower with every other eval text too, so for those pairs the margin
    carries more of the weight: a lower cosine, a larger margin. ``query_languages`` / ``corpus_languages``: one
    code per text (``und``: unidentified, never cross-lingual)."""

    threshold: float
    margin: float
    query_languages: Sequence[str]
    corpus_languages: Sequence[str]


def flagged_neighbours(queries: Embeddings, corpus: Embeddings, k: int, threshold: float, margin: float,
                       cross: CrossLingual | None = None, max_floats: int = 1 << 25) -> pl.DataFrame:
    """The semantic decontamination's pairs (the detector and ``benchmarks/embeddings.py`` both score with this):
    among each query's ``k`` nearest corpus texts (:data:`NEIGHBOUR_SCHEMA`, in :func:`top_k_neighbours`' order),
    those whose cosine reaches ``threshold`` and stands out by ``margin`` (:func:`distinct_neighbours`, twins at
    ``threshold``), and, with ``cross``, the cross-lingual pairs reaching its threshold and margin. The registry holds
    both tiers per model (:data:`~.models.MODELS`)."""
    found, lead = _neighbours_and_leads(queries, corpus, k, threshold, max_floats)
    if found.is_empty():
        return found
    score = found["score"].to_numpy()
    keep = (score >= threshold) & (lead >= margin)
    if cross is not None:
        if len(cross.query_languages) != queries.n_texts or len(cross.corpus_languages) != corpus.n_texts:
            raise ValueError(f"CrossLingual needs one language per text: {len(cross.query_languages)} for "
                             f"{queries.n_texts} queries, {len(cross.corpus_languages)} for {corpus.n_texts} corpus "
                             "texts")
        mine = np.asarray(cross.query_languages, dtype=object)[found["query"].to_numpy()]
        theirs = np.asarray(cross.corpus_languages, dtype=object)[found["item"].to_numpy()]
        apart = (mine != theirs) & (mine != UNDETERMINED) & (theirs != UNDETERMINED)
        keep |= apart & (score >= cross.threshold) & (lead >= cross.margin)
    return found.filter(pl.Series(keep))


def _neighbours_and_leads(queries: Embeddings, corpus: Embeddings, k: int, threshold: float,
                          max_floats: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Each query's ``k`` nearest corpus texts and, per row, how far its cosine exceeds the query's best cosine with
    a corpus text that is neither that one nor one of its twins at ``threshold`` (+inf: there is none)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if queries.n_texts == 0 or corpus.n_texts == 0:
        return pl.DataFrame(schema=NEIGHBOUR_SCHEMA), np.zeros(0)
    twins = corpus_twins(corpus, threshold, max_floats)
    most = int(twins.group_by("item").len()["len"].max() or 0)
    # the best non-twin other of a candidate ranks at most (its twins + itself + 1)
    width = min(corpus.n_texts, max(k, most + 2))
    found = top_k_neighbours(queries, corpus, width, max_floats)
    if found.is_empty():
        return found, np.zeros(0)
    items = found["item"].to_numpy().reshape(-1, width)
    scores = found["score"].to_numpy().reshape(-1, width)
    keys = np.sort((twins["item"].to_numpy() * corpus.n_texts + twins["twin"].to_numpy()).astype(np.int64))
    lead = np.full(items.shape, -np.inf)  # rows past k are dropped
    rows = max(1, max_floats // max(1, width * width))
    for first in range(0, items.shape[0], rows):
        block_items, block_scores = items[first:first + rows], scores[first:first + rows]
        pair = block_items[:, :k, None] * corpus.n_texts + block_items[:, None, :]
        other = np.isin(pair, keys, assume_unique=False) | (block_items[:, :k, None] == block_items[:, None, :])
        rival = np.where(other, -np.inf, block_scores[:, None, :]).max(axis=2)  # -inf: nothing else in the corpus
        lead[first:first + rows, :k] = block_scores[:, :k] - rival
    in_k = np.zeros(items.shape, dtype=bool)
    in_k[:, :k] = True
    return found.filter(pl.Series(in_k.ravel())), lead[:, :k].ravel()
