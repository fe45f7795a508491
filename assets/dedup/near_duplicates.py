"""MinHash-LSH near-duplicate removal over conversation text (no Dagster here).

Signatures, band hashes and candidate pairs come from the shared :mod:`assets.common.text.minhash` (steps 1-3 of its
pipeline); :func:`deduplicate` then

4. verifies candidate pairs: a pair is an edge when its estimated Jaccard (fraction of equal signature values)
   is ``>= threshold``; union-find turns edges into clusters (:mod:`assets.dedup.clusters`);
5. per cluster keeps the first row by ``order`` (default ``shard, row_index``); the others are removed and
   carry ``cluster_id``, ``duplicate_of`` and ``similarity``.

Incremental use: :class:`~assets.dedup.index.LSHIndex` holds the signatures, band hashes and ids of every row
kept so far, and is saved as one ``.npz`` file (no pickles) with an atomic write. ``deduplicate(new_df, cfg,
index=idx)`` computes signatures of the new rows only, compares them with each other and with the index (index
rows always win: they were kept earlier) and returns the index extended with the newly kept rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from assets.common.data.schema import REJECTED_DETAIL, REJECTED_REASON, conversation_text
from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.minhash.lsh import band_hashes, cross_candidates, within_pairs
from assets.common.text.minhash.signatures import compute_signatures, equal_counts
from assets.dedup.clusters import Clusters, assign_clusters
from assets.dedup.index import LSHIndex

REASON_NEAR_DUPLICATE = "near_duplicate"
_POS = "__dedup_pos"


@dataclass
class DedupResult:
    """``kept``/``removed`` keep the input's columns and order; ``removed`` adds ``cluster_id`` (Int64: the
    row number of the kept representative in ``index``, stable across incremental runs), ``duplicate_of``
    (its id), ``similarity`` (estimated Jaccard to it), ``reason`` and ``detail``."""

    kept: pl.DataFrame
    removed: pl.DataFrame
    stats: dict[str, Any]
    index: LSHIndex


@dataclass(frozen=True)
class _VerifiedPairs:
    """Candidate pairs of the new rows (rank space) with each other and with the index, and which verify
    (estimated Jaccard >= threshold)."""

    within: tuple[np.ndarray, np.ndarray]  # (new rank, new rank)
    within_ok: np.ndarray
    cross: tuple[np.ndarray, np.ndarray]  # (index row, new rank)
    cross_ok: np.ndarray

    def edges(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """(within, cross): the verified pairs only."""
        (wi, wj), (co, cn) = self.within, self.cross
        return (wi[self.within_ok], wj[self.within_ok]), (co[self.cross_ok], cn[self.cross_ok])


def deduplicate(
    df: pl.DataFrame,
    cfg: MinHashConfig | None = None,
    *,
    text: pl.Expr | str | None = None,
    order: tuple[str, ...] | list[str] = ("shard", "row_index"),
    id_column: str = "conversation_id",
    index: LSHIndex | None = None,
) -> DedupResult:
    """Remove near-duplicate rows of ``df``.

    ``text``: expression (or column name) giving each row's text; default :func:`conversation_text`
    (user + assistant turns). ``order``: the first row of each cluster by these columns is kept. ``index``:
    rows kept by earlier runs; they are never removed and win over every new row. The returned
    ``DedupResult.index`` is ``index`` (or an empty one) extended with the rows kept here.
    """
    cfg = cfg or MinHashConfig()
    if index is None:
        index = LSHIndex.empty(cfg)
    index.check_compatible(cfg)
    ids = _checked_ids(df, id_column, index)
    perm = _order_permutation(df, tuple(order))  # rank -> input position
    sigs = compute_signatures(_texts(df, text).gather(perm), cfg)
    bands = band_hashes(sigs, cfg)
    pairs = _verified_pairs(sigs, bands, index, cfg)
    clusters = assign_clusters(df.height, len(index), *pairs.edges())
    new_index = index.extended(ids.gather(perm[clusters.kept]), sigs[clusters.kept], bands[clusters.kept])
    removed_rank = np.flatnonzero(~clusters.kept)
    similarity = _similarity_counts(index, sigs, clusters, removed_rank) / float(cfg.num_perm)
    # back to input order
    kept_mask = np.zeros(df.height, dtype=bool)
    kept_mask[perm[clusters.kept]] = True
    removed = _removed_rows(df, perm[removed_rank], clusters.cluster[removed_rank], new_index.ids, similarity)
    stats = _stats(df.height, kept_mask, removed_rank, clusters, pairs, index, new_index, cfg)
    return DedupResult(kept=df.filter(pl.Series(kept_mask)), removed=removed, stats=stats, index=new_index)


def _checked_ids(df: pl.DataFrame, id_column: str, index: LSHIndex) -> pl.Series:
    """The row ids as strings; raises if they are missing, null, not unique or already in ``index``."""
    if id_column not in df.columns:
        raise ValueError(f"id column {id_column!r} not in the frame (columns: {df.columns})")
    ids = df[id_column].cast(pl.Utf8)
    if ids.null_count():
        raise ValueError(f"{id_column} has {ids.null_count()} null values")
    if ids.n_unique() != ids.len():
        raise ValueError(f"{id_column} is not unique: {ids.filter(ids.is_duplicated()).unique().sort()[:5]}")
    if len(index) and ids.is_in(index.ids.implode()).any():
        clash = ids.filter(ids.is_in(index.ids.implode())).sort()[:5].to_list()
        raise ValueError(f"rows {clash} are already in the LSH index (was this shard deduplicated before?)")
    return ids


def _order_permutation(df: pl.DataFrame, order: tuple[str, ...]) -> np.ndarray:
    """Input positions sorted by ``order`` (ties: input position)."""
    missing = [c for c in order if c not in df.columns]
    if missing:
        raise ValueError(f"order columns {missing} not in the frame (columns: {df.columns})")
    if not order:
        return np.arange(df.height, dtype=np.int64)
    keyed = df.select(list(order)).with_row_index(_POS)
    return keyed.sort([*order, _POS], nulls_last=True)[_POS].to_numpy().astype(np.int64)


def _texts(df: pl.DataFrame, text: pl.Expr | str | None) -> pl.Series:
    """Each row's text (null: empty), in input order."""
    text_expr = conversation_text() if text is None else (pl.col(text) if isinstance(text, str) else text)
    return df.select(text_expr.cast(pl.Utf8).fill_null("").alias("text")).to_series()


def _verified_pairs(sigs: np.ndarray, bands: np.ndarray, index: LSHIndex, cfg: MinHashConfig) -> _VerifiedPairs:
    n, m = sigs.shape[0], len(index)
    wi, wj = within_pairs(bands) if n > 1 else (np.empty(0, np.int64), np.empty(0, np.int64))
    w_counts = equal_counts(sigs, wi, sigs, wj) if wi.size else np.empty(0, np.int64)
    co, cn = (
        cross_candidates(index.sorted_bands(), bands) if (m and n) else (np.empty(0, np.int64), np.empty(0, np.int64))
    )
    c_counts = equal_counts(index.signatures, co, sigs, cn) if co.size else np.empty(0, np.int64)
    return _VerifiedPairs(
        within=(wi, wj),
        within_ok=w_counts / float(cfg.num_perm) >= cfg.threshold,
        cross=(co, cn),
        cross_ok=c_counts / float(cfg.num_perm) >= cfg.threshold,
    )


def _similarity_counts(index: LSHIndex, sigs: np.ndarray, clusters: Clusters, ranks: np.ndarray) -> np.ndarray:
    """Equal signature values of each removed row (``ranks``) and its cluster's representative."""
    rep_old = clusters.anchor[ranks] >= 0
    counts = np.empty(ranks.size, np.int64)
    if rep_old.any():
        counts[rep_old] = equal_counts(index.signatures, clusters.anchor[ranks[rep_old]], sigs, ranks[rep_old])
    if (~rep_old).any():
        counts[~rep_old] = equal_counts(sigs, clusters.roots[ranks[~rep_old]], sigs, ranks[~rep_old])
    return counts


def _removed_rows(
    df: pl.DataFrame, positions: np.ndarray, cluster: np.ndarray, index_ids: pl.Series, similarity: np.ndarray
) -> pl.DataFrame:
    """The removed rows (input ``positions``) in input order, with their cluster (the index row of its
    representative), the representative's id, the similarity to it, and the rejection reason and detail."""
    info = pl.DataFrame(
        {
            _POS: positions,
            "cluster_id": cluster.astype(np.int64),
            "duplicate_of": index_ids.gather(cluster).to_numpy() if positions.size else np.empty(0, str),
            "similarity": similarity,
        },
        schema={_POS: pl.Int64, "cluster_id": pl.Int64, "duplicate_of": pl.Utf8, "similarity": pl.Float64},
    ).sort(_POS)
    return (
        df.with_row_index(_POS)
        .with_columns(pl.col(_POS).cast(pl.Int64))
        .join(info, on=_POS, how="inner")
        .sort(_POS)
        .drop(_POS)
        .with_columns(
            pl.lit(REASON_NEAR_DUPLICATE).alias(REJECTED_REASON),
            pl.format(
                "near-duplicate of {} (estimated jaccard {})",
                pl.col("duplicate_of"),
                pl.col("similarity").round(3),
            ).alias(REJECTED_DETAIL),
        )
    )


def _stats(
    n: int,
    kept_mask: np.ndarray,
    removed_rank: np.ndarray,
    clusters: Clusters,
    pairs: _VerifiedPairs,
    index: LSHIndex,
    new_index: LSHIndex,
    cfg: MinHashConfig,
) -> dict[str, Any]:
    n_bands, n_rows = cfg.params
    return {
        "rows_in": n,
        "rows_kept": int(kept_mask.sum()),
        "rows_removed": int(removed_rank.size),
        "removed_as_duplicate_of_index": int((clusters.anchor[removed_rank] >= 0).sum()),
        "clusters": int(np.unique(clusters.cluster[removed_rank]).size),
        "candidate_pairs": int(pairs.within[0].size + pairs.cross[0].size),
        "verified_pairs": int(pairs.within_ok.sum() + pairs.cross_ok.sum()),
        "signatures_computed": n,
        "index_rows_before": len(index),
        "index_rows_after": len(new_index),
        "bands": n_bands,
        "rows_per_band": n_rows,
        "config": cfg.to_json(),
    }
