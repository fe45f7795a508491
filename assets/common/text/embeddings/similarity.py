"""Cosine similarity between embedded texts, a match on any chunk counting (no Dagster here): all pairs of two
small sets, aligned pairs, and each query's top-k neighbours in a corpus computed in blocks of bounded memory."""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.common.text.embeddings.store import Embeddings

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
