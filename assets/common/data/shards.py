"""A table made of shards, per-shard identity and per-shard results kept for reuse (no Dagster here).

Every conversation table from dedup on carries ``shard`` (the generation shard, or a user source's pseudo-shard).
A stage whose result for a row depends on that row alone (filtering's rules, tagging's labels) computes it per
shard and keeps it in a :class:`ShardResults` folder, named by what it was computed from: the shard's content hash
(:func:`shard_hashes`, over the columns the stage reads) and the stage's identity (its code version, settings and
library versions). A later build finds the shards it has seen and computes only the others; a changed setting or
code changes the identity, so nothing computed under the old one is ever read. Files are written once, atomically
(:func:`~assets.common.data.storage.write_parquet_atomic`), never replaced. Each build first names the results of
its input's shards in the folder's ``IN_USE.json`` (:meth:`ShardResults.record_in_use`): retention (``--caches``)
removes the others (:mod:`~assets.common.data.caches`).

The content hashes are the one part of such a build that reads the whole table: one 64-bit hash per row from
polars' hashes (the message contents hashed in slices on polars' threads, each message's role and position mixed
in), the rows of a shard SHA-256'd in table order. The polars version is part of every identity that uses them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.common.data.caches import record_in_use
from assets.common.data.storage import write_parquet_atomic

SHARD = "shard"
_K1, _K2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)


def shard_key(index: int) -> str:
    """The partition key of generation shard ``index`` (``00000``)."""
    return f"{index:05d}"


def shard_index(key: str) -> int:
    if not key.isdigit():
        raise ValueError(f"generation shard key {key!r}: expected a shard number such as '00000'")
    return int(key)


def shard_positions(df: pl.DataFrame) -> dict[str, np.ndarray]:
    """Shard key (the ``shard`` value as text) -> positions of its rows in ``df``, in table order; by shard value."""
    if SHARD not in df.columns or df[SHARD].null_count():
        raise ValueError(f"a table processed shard by shard needs a `{SHARD}` column without nulls "
                         f"(deduplicated_conversations and every table after it has one); columns are {df.columns}")
    shard = df[SHARD].to_numpy()
    order = np.argsort(shard, kind="stable")
    values, starts = np.unique(shard[order], return_index=True)
    parts = np.split(order, starts[1:]) if values.size else []
    return {str(v): part for v, part in zip(values.tolist(), parts, strict=True)}


def shard_hashes(df: pl.DataFrame, positions: Mapping[str, np.ndarray],
                 columns: Sequence[str] = ("conversation_id", "messages")) -> dict[str, str]:
    """Per shard, a content hash of ``columns`` of its rows, in table order."""
    if df.height == 0:
        return {}
    row = row_hashes(df, columns)
    return {key: hashlib.sha256(np.ascontiguousarray(row[rows]).tobytes()).hexdigest()
            for key, rows in positions.items()}


def row_hashes(df: pl.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """One 64-bit hash per row of ``columns``: ``messages`` by each message's role, content and position, any other
    column by polars' hash (nested types included)."""
    row = np.zeros(df.height, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for seed, column in enumerate(columns, start=3):
            values = _messages_hash(df[column]) if column == "messages" else df[column].hash(seed=seed).to_numpy()
            row = _fmix64(row * _K2 ^ values)
    return row


def _messages_hash(messages: pl.Series) -> np.ndarray:
    lengths = messages.list.len().fill_null(0).to_numpy().astype(np.int64)
    exploded = messages.explode()  # one (null) element for an empty or null list
    count = np.maximum(lengths, 1)
    first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    position = (np.arange(int(count.sum())) - np.repeat(first, count)).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = _fmix64(_hash_in_parallel(exploded.struct.field("content"), seed=1)
                        ^ (exploded.struct.field("role").hash(seed=2).to_numpy() * _K1) ^ (position * _K2))
        return _fmix64(np.add.reduceat(mixed, first) ^ (lengths.astype(np.uint64) * _K1))


def _hash_in_parallel(series: pl.Series, seed: int) -> np.ndarray:
    """``series.hash(seed)`` computed in slices on polars' threads (one hash pass is bound to one core)."""
    n, parts = series.len(), max(1, min(pl.thread_pool_size(), series.len() // 4096))
    frame = series.to_frame("s").lazy()
    queries = [frame.slice(k * n // parts, (k + 1) * n // parts - k * n // parts).select(pl.col("s").hash(seed=seed))
               for k in range(parts)]
    return np.concatenate([part.to_series().to_numpy() for part in pl.collect_all(queries)])


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, vectorized (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def shard_rows(df: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    """The rows ``rows`` (ascending positions, as :func:`shard_positions` gives them) of ``df``, in one chunk of their
    own: a slice copied out when they are contiguous (a table written shard after shard), else a gather (which
    costs more on a table read from Parquet in several chunks)."""
    if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size:
        return df.slice(int(rows[0]), rows.size).rechunk()
    return df[pl.Series(rows, dtype=pl.Int64)]


def table_order(positions: Mapping[str, np.ndarray], frames: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Per-shard frames (one row per row of the shard, in the shard's table order) as one frame in table order, in
    one chunk (the bytes Parquet writes depend on a frame's chunks)."""
    keys = list(positions)
    if not keys:
        raise ValueError("table_order: no shards")
    stacked = pl.concat([frames[key] for key in keys], how="vertical", rechunk=True)
    where = np.concatenate([positions[key] for key in keys])
    if np.all(where[1:] > where[:-1]):  # shard after shard: already in table order
        return stacked
    return stacked[pl.Series(np.argsort(where, kind="stable"), dtype=pl.Int64)]


class ShardResults:
    """A folder of per-shard results, each a Parquet file named by (the identity, the shard's content hash): what a
    stage computed from a shard under one code version and settings. Written once, atomically; never replaced."""

    def __init__(self, folder: str | Path, identity: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self._identity_hash = hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode())
        self.computed: list[str] = []
        self.reused: list[str] = []

    def path(self, shard_hash: str) -> Path:
        digest = self._identity_hash.copy()
        digest.update(b"\0" + shard_hash.encode())
        return self.folder / f"{digest.hexdigest()[:32]}.parquet"

    def record_in_use(self, shard_hashes: Iterable[str]) -> None:
        """Name the results of these shard contents (the build's input) as the folder's entries in use: retention
        keeps them and may remove the folder's other results (changed or departed shards, other identities)."""
        record_in_use(self.folder, [self.path(h).name for h in shard_hashes])

    def read(self, key: str, shard_hash: str) -> pl.DataFrame | None:
        """The result kept for this content under this identity, or None (then :meth:`write` it)."""
        path = self.path(shard_hash)
        if not path.exists():
            return None
        self.reused.append(key)
        return pl.read_parquet(path)

    def write(self, key: str, shard_hash: str, frame: pl.DataFrame) -> None:
        path = self.path(shard_hash)
        if not path.exists():
            write_parquet_atomic(frame, path)
        self.computed.append(key)

    def counts(self) -> dict[str, int]:
        return {"shards_computed": len(self.computed), "shards_reused": len(self.reused)}
