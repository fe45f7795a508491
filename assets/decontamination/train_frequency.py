"""The training-side frequency cut-off of the n-gram detector (``max_train_rows``, as in GPT-3): a key found in
that many distinct conversations of the table being decontaminated is generic text, and its matches are
ignored. The keys of the hits (:func:`hit_keys`) are counted per conversation (:func:`frequent_keys`) over the whole
table, which an incremental run assembles from per-shard counts; :func:`frequent_owners` is the report's view."""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.decontamination.index import EvalIndex
from assets.decontamination.kernels import same_bytes, window_bytes

FREQUENT_SCHEMA: dict[str, pl.DataType] = {"benchmark": pl.Utf8, "key": pl.Utf8, "conversations": pl.Int64}
KEY_SCHEMA: dict[str, pl.DataType] = {"key": pl.Int64, "conversations": pl.Int64}


def hit_keys(
    data: np.ndarray, offsets: np.ndarray, index: EvalIndex, hits: tuple[np.ndarray, ...]
) -> np.ndarray:
    """For each probe hit (doc, pos, length, lo, hi), the first table entry of its hash range [lo, hi) whose key is,
    byte for byte, the message window (-1: none, a hash collision). Hits with the same window text get the same
    entry, so it identifies the key. The first entry is tried for all hits at once; the others only after a
    mismatch."""
    doc, pos, length, lo, hi = hits
    w_start, w_end = window_bytes(data, offsets, doc, pos, length)  # hits are ordered by message
    key = np.full(doc.size, -1, np.int64)
    e_start, e_end = index.entry_spans(lo)
    same = same_bytes(data, w_start, w_end, index.eval_data, e_start, e_end)
    key[same] = lo[same]
    rest = np.flatnonzero(~same & (hi - lo > 1))
    if rest.size:
        span = hi[rest] - lo[rest] - 1
        rep = np.repeat(rest, span)
        entry = lo[rep] + 1 + np.arange(rep.size) - np.repeat(np.cumsum(span) - span, span)
        e_start, e_end = index.entry_spans(entry)
        ok = same_bytes(data, w_start[rep], w_end[rep], index.eval_data, e_start, e_end)
        for h, e in zip(rep[ok][::-1], entry[ok][::-1], strict=True):  # the first matching entry wins
            key[h] = e
    return key


def frequent_keys(pairs: pl.DataFrame, max_train_rows: int) -> pl.DataFrame:
    """The keys (table entries, see :func:`hit_keys`) found in ``max_train_rows`` or more distinct conversations of
    ``pairs`` (columns ``key``, ``conversation_id``), with their conversation count (:data:`KEY_SCHEMA`), by key.
    None when ``max_train_rows`` is 0 (no cut-off)."""
    if not max_train_rows or pairs.height == 0:
        return pl.DataFrame(schema=KEY_SCHEMA)
    return (
        pairs.group_by("key")
        .agg(pl.col("conversation_id").n_unique().cast(pl.Int64).alias("conversations"))
        .filter(pl.col("conversations") >= max_train_rows)
        .sort("key")
        .select(pl.col("key").cast(pl.Int64), "conversations")
    )


def frequent_owners(index: EvalIndex, frequent: pl.DataFrame) -> pl.DataFrame:
    """The report's view of the ``frequent`` keys (:data:`KEY_SCHEMA`): one row per (benchmark, key text) with the
    conversation count, a key belonging to the benchmarks of the eval texts it is a key of (the entries of its
    hash range with the same bytes); :data:`FREQUENT_SCHEMA`, sorted by benchmark and key."""
    if frequent.height == 0:
        return pl.DataFrame(schema=FREQUENT_SCHEMA)
    first = frequent["key"].to_numpy()
    lo = np.searchsorted(index.table, index.table[first], side="left")
    hi = np.searchsorted(index.table, index.table[first], side="right")
    span = hi - lo
    rep = np.repeat(np.arange(first.size), span)
    entry = lo[rep] + np.arange(rep.size) - np.repeat(np.cumsum(span) - span, span)
    k_start, k_end = index.entry_spans(first[rep])
    e_start, e_end = index.entry_spans(entry)
    same = same_bytes(index.eval_data, k_start, k_end, index.eval_data, e_start, e_end)
    owners = pl.DataFrame(
        {
            "benchmark": index.items["benchmark"].gather(index.table_items[entry[same]]),
            "key": pl.Series(index.entry_texts(first), dtype=pl.Utf8).gather(rep[same]),
            "conversations": frequent["conversations"].gather(rep[same]),
        },
        schema=FREQUENT_SCHEMA,
    )
    return owners.unique().sort("benchmark", "key")
