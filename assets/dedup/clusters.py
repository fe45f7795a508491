"""Clusters of near-duplicates and which row of each is kept: union-find over verified pairs (numba), then
the keep policy (the first row of a cluster by rank, unless the cluster matches the index)."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import polars as pl


@numba.njit(cache=True)
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True)
def connected_components(n, edge_i, edge_j):
    """Root of every node; the root of a component is its smallest node."""
    parent = np.arange(n)
    for k in range(edge_i.size):
        ri = _find(parent, edge_i[k])
        rj = _find(parent, edge_j[k])
        if ri < rj:
            parent[rj] = ri
        elif rj < ri:
            parent[ri] = rj
    roots = np.empty(n, np.int64)
    for x in range(n):
        roots[x] = _find(parent, x)
    return roots



@dataclass(frozen=True)
class Clusters:
    """The keep policy over ``n`` new rows, in rank order (the order in which the first of a cluster is kept),
    against an index of ``m`` rows kept earlier (index rows always win).

    ``roots``: per new row, the smallest row of its component of verified new-vs-new pairs. ``anchor``: per
    new row, the earliest index row its component matched (-1: none). ``kept``: the component roots that
    matched no index row. ``cluster``: per new row, the index row number of its cluster's representative
    (index rows are 0..m-1, the kept new rows follow as m, m + 1, ... in rank order)."""

    roots: np.ndarray
    anchor: np.ndarray
    kept: np.ndarray
    cluster: np.ndarray


def assign_clusters(
    n: int, m: int, within: tuple[np.ndarray, np.ndarray], cross: tuple[np.ndarray, np.ndarray]
) -> Clusters:
    """Clusters of ``n`` new rows from verified pairs: ``within`` (new rank, new rank) and ``cross`` (index row,
    new rank); ``m`` rows are in the index."""
    roots = connected_components(n, *within) if n else np.empty(0, np.int64)
    # a component touching the index is represented by the earliest index row it matched
    anchor = np.full(n, -1, dtype=np.int64)
    old, new = cross
    if old.size:
        best = pl.DataFrame({"comp": roots[new], "old": old}).group_by("comp").agg(pl.col("old").min())
        anchor[best["comp"].to_numpy()] = best["old"].to_numpy()
    root_anchor = anchor[roots] if n else anchor
    kept = (roots == np.arange(n)) & (root_anchor < 0)
    # index row number of each kept new row, then each row's representative
    new_index_row = np.full(n, -1, dtype=np.int64)
    new_index_row[kept] = m + np.arange(int(kept.sum()))
    cluster = np.where(root_anchor >= 0, root_anchor, new_index_row[roots]) if n else roots
    return Clusters(roots=roots, anchor=root_anchor, kept=kept, cluster=cluster)
