"""Semantic near-duplicate removal, after MinHash (no Dagster here): an instruction closer than a threshold to an
EARLIER KEPT one is removed.

What is embedded: each conversation's first user message (the instruction; a conversation without one embeds the
empty text, which matches nothing). A text longer than the model's maximum length is embedded in chunks by the
shared :class:`~assets.common.text.embeddings.Embedder` (and cached by (model hash, text hash)); its vector here is
the normalized mean of its chunk vectors (a single-chunk text keeps its vector as is).

How (no all-pairs product): rows are taken in rank order (``shard, row_index``) in blocks of :data:`BLOCK`. Each
block is searched against the persisted HNSW index of every row kept so far
(:class:`~assets.dedup.semantic_index.SemanticIndex`, :data:`CANDIDATES` neighbours each), and against its own
earlier rows exactly (a block x block product, bounded). Every candidate is verified with the exact cosine of the
stored vectors (float64); a row is removed when some earlier kept row reaches ``threshold``, and it names the most
similar one (ties: the earliest). The kept rows of a block join the index, in order, before the next block. Rows
kept earlier are never removed, so a new shard costs its own rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from assets.common.data.schema import REJECTED_DETAIL, REJECTED_REASON
from assets.common.text.embeddings import Embedder, Embeddings
from assets.dedup.near_duplicates import _checked_ids, _order_permutation
from assets.dedup.semantic_index import SemanticIndex

REASON_SEMANTIC_DUPLICATE = "semantic_duplicate"
DEFAULT_DEDUP_MODEL = "wordllama-l2-supercat-256"
DEFAULT_DEDUP_THRESHOLD = 0.82
CANDIDATES = 8  # approximate neighbours per row taken from the index, then verified exactly
BLOCK = 1024  # rows compared exactly with each other before joining the index
EMBEDDED = "first user message"  # what a row's vector is made of (recorded with the index)
_POS = "__semantic_pos"


@dataclass(frozen=True)
class SemanticDedupConfig:
    """enabled: run the semantic pass after MinHash (off in code so string-level tests and deployments opt in; on in
    the demo and GPU profiles). model: an embedding model of
    :data:`~assets.common.text.embeddings.MODELS` or a local sentence-transformers directory. threshold: the cosine
    at or above which an instruction duplicates an earlier kept one (docs/semantic.md: how it was chosen)."""

    enabled: bool = False
    model: str = DEFAULT_DEDUP_MODEL
    threshold: float = DEFAULT_DEDUP_THRESHOLD

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"semantic.threshold must be in (0, 1], got {self.threshold}")

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "model": self.model, "threshold": self.threshold}


@dataclass
class SemanticResult:
    """``kept``/``removed`` keep the input's columns and order; ``removed`` adds ``cluster_id`` (null),
    ``duplicate_of``, ``similarity`` (cosine), ``reason`` and ``detail``."""

    kept: pl.DataFrame
    removed: pl.DataFrame
    stats: dict[str, Any]
    index: SemanticIndex


def index_identity(cfg: SemanticDedupConfig, embedder: Embedder) -> dict[str, Any]:
    """What the index's vectors and decisions depend on: a change of any of these rebuilds the state."""
    return {**cfg.to_json(), "model_hash": embedder.backend.model_hash, "embedded": EMBEDDED,
            "chunk_tokens": embedder.chunk_tokens, "candidates": CANDIDATES, "block": BLOCK}


def instruction_texts(df: pl.DataFrame) -> pl.Series:
    """Each row's first user message (empty when it has none), in input order."""
    first_user = (pl.col("messages").list.eval(pl.element().filter(pl.element().struct.field("role") == "user"))
                  .list.first().struct.field("content"))
    return df.select(first_user.cast(pl.Utf8).fill_null("").alias("text")).to_series()


def text_vectors(embeddings: Embeddings) -> np.ndarray:
    """One unit vector per text: its chunk's vector, or the normalized mean of its chunks' vectors."""
    if embeddings.n_texts == 0:
        return np.zeros((0, embeddings.vectors.shape[1]), np.float32)
    starts = embeddings.starts()
    counts = np.diff(np.append(starts, embeddings.owner.size))
    out = embeddings.vectors[starts].copy()
    multi = np.flatnonzero(counts > 1)
    if multi.size:
        sums = np.add.reduceat(embeddings.vectors.astype(np.float64), starts, axis=0)[multi]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        out[multi] = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


def semantic_deduplicate(df: pl.DataFrame, index: SemanticIndex, embedder: Embedder, cfg: SemanticDedupConfig, *,
                         order: tuple[str, ...] = ("shard", "row_index"),
                         id_column: str = "conversation_id") -> SemanticResult:
    """Remove rows of ``df`` whose instruction is within ``cfg.threshold`` cosine of an earlier kept one (rows of
    ``index`` first, then earlier rows of ``df`` by ``order``). ``index`` is extended in place with the rows kept
    here and returned in the result."""
    ids = _checked_ids(df, id_column, index)
    perm = _order_permutation(df, tuple(order))  # rank -> input position
    embeddings = embedder.embed(instruction_texts(df).gather(perm).to_list())
    vectors = text_vectors(embeddings)
    before = len(index)
    dup_row, similarity = _decide(vectors, index, ids.gather(perm), cfg.threshold)
    removed_rank = np.flatnonzero(dup_row >= 0)
    kept_mask = np.ones(df.height, dtype=bool)
    kept_mask[perm[removed_rank]] = False
    removed = _removed_rows(df, perm[removed_rank], index.ids.gather(dup_row[removed_rank]), similarity[removed_rank])
    stats = {"rows_in": df.height, "rows_removed": int(removed_rank.size),
             "removed_as_duplicate_of_index": int((dup_row[removed_rank] < before).sum()),
             "texts_embedded": embeddings.n_texts, "texts_computed": embeddings.computed,
             "index_rows_before": before, "index_rows_after": len(index)}
    return SemanticResult(kept=df.filter(pl.Series(kept_mask)), removed=removed, stats=stats, index=index)


def _decide(vectors: np.ndarray, index: SemanticIndex, ids: pl.Series, threshold: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per row (rank order): the index row of the kept row it duplicates (-1: kept) and the cosine to it. Kept rows
    are added to ``index`` block by block, so a later block sees them through the index."""
    n = len(vectors)
    dup_row, similarity = np.full(n, -1, np.int64), np.zeros(n, np.float64)
    for start in range(0, n, BLOCK):
        block = vectors[start:start + BLOCK]
        best_row, best_sim = _index_best(index, block)
        exact = block.astype(np.float64) @ block.astype(np.float64).T
        kept: list[int] = []  # block positions kept so far
        for i in range(len(block)):
            row, sim = best_row[i], best_sim[i]
            if kept:
                sims = exact[i, kept]
                j = int(np.argmax(sims))  # first of equal maxima: the earliest kept
                if sims[j] > sim or (sims[j] == sim and row < 0):
                    row, sim = len(index) + j, sims[j]
            if row >= 0 and sim >= threshold:
                dup_row[start + i], similarity[start + i] = row, sim
            else:
                kept.append(i)
        index.add(ids.slice(start, len(block)).gather(kept), block[kept])
    return dup_row, similarity


def _index_best(index: SemanticIndex, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``block``: the index row with the highest exact cosine among its approximate neighbours (ties:
    the earliest row; -1 when the index is empty) and that cosine."""
    candidates = index.search(block, CANDIDATES)
    valid = candidates >= 0
    sims = np.full(candidates.shape, -np.inf)
    if valid.any():
        stored = index.vectors(candidates[valid]).astype(np.float64)
        queries = np.repeat(block.astype(np.float64), valid.sum(axis=1), axis=0)
        sims[valid] = np.einsum("ij,ij->i", stored, queries)
    # highest cosine first, then the smallest index row
    order = np.lexsort((np.where(valid, candidates, np.iinfo(np.int64).max), -sims), axis=1)[:, 0]
    take = np.arange(len(block))
    best_row = np.where(valid[take, order], candidates[take, order], -1)
    return best_row, np.where(best_row >= 0, sims[take, order], -np.inf)


def _removed_rows(df: pl.DataFrame, positions: np.ndarray, duplicate_of: pl.Series, similarity: np.ndarray
                  ) -> pl.DataFrame:
    """The removed rows (input ``positions``) in input order, with the id of the kept row each duplicates, the
    cosine to it, and the rejection reason and detail (``cluster_id`` is MinHash's: null here)."""
    info = pl.DataFrame({_POS: positions, "duplicate_of": duplicate_of.to_list(), "similarity": similarity},
                        schema={_POS: pl.Int64, "duplicate_of": pl.Utf8, "similarity": pl.Float64})
    return (
        df.with_row_index(_POS).with_columns(pl.col(_POS).cast(pl.Int64))
        .join(info, on=_POS, how="inner").sort(_POS).drop(_POS)
        .with_columns(pl.lit(None, pl.Int64).alias("cluster_id"))
        .select(*df.columns, "cluster_id", "duplicate_of", "similarity")
        .with_columns(
            pl.lit(REASON_SEMANTIC_DUPLICATE).alias(REJECTED_REASON),
            pl.format("instruction reworded from {} (cosine {})", pl.col("duplicate_of"),
                      pl.col("similarity").round(3)).alias(REJECTED_DETAIL),
        )
    )
