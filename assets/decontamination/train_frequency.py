"""The training-side frequency cut-off of the n-gram detector (``max_train_rows``, as in GPT-3): a key found in
that many distinct conversations of the table being decontaminated is generic text, and its matches are
ignored."""

from __future__ import annotations

import numpy as np
import polars as pl

from assets.decontamination.index import EvalIndex
from assets.decontamination.kernels import same_bytes, window_bytes

FREQUENT_SCHEMA: dict[str, pl.DataType] = {"benchmark": pl.Utf8, "key": pl.Utf8, "conversations": pl.Int64}


def _hit_keys(
    data: np.ndarray, offsets: np.ndarray, index: EvalIndex, doc: np.ndarray, pos: np.ndarray,
    length: np.ndarray, lo: np.ndarray, hi: np.ndarray,
) -> np.ndarray:
    """For each probe hit, the first table entry of its hash range [lo, hi) whose key is, byte for byte, the
    message window (-1: none, a hash collision). Hits with the same window text get the same entry, so it
    identifies the key. The first entry is tried for all hits at once; the others only after a mismatch."""
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


def train_frequent(
    msgs: pl.DataFrame, index: EvalIndex, data: np.ndarray, offsets: np.ndarray, hits: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, pl.DataFrame]:
    """The training-side cut-off. Returns (keep, frequent): ``keep`` is False for the probe hits (doc, pos, length,
    lo, hi) on a key found in ``max_train_rows`` or more distinct conversations of ``msgs``; ``frequent`` has one
    row per (benchmark, such key) with its conversation count, a key belonging to the benchmarks of the eval
    texts it is a key of (:data:`FREQUENT_SCHEMA`)."""
    doc, pos, length, lo, hi = hits
    key = _hit_keys(data, offsets, index, doc, pos, length, lo, hi)
    keyed = pl.DataFrame(
        {"hit": np.arange(doc.size), "key": key, "conversation_id": msgs["conversation_id"].gather(doc)},
        schema={"hit": pl.Int64, "key": pl.Int64, "conversation_id": pl.Utf8},
    ).filter(pl.col("key") >= 0)
    frequent = (
        keyed.group_by("key")
        .agg(pl.col("conversation_id").n_unique().cast(pl.Int64).alias("conversations"), pl.col("hit").first())
        .filter(pl.col("conversations") >= index.config.max_train_rows)
        .sort("key")
    )
    keep = np.ones(doc.size, dtype=bool)
    keep[keyed.join(frequent.select("key"), on="key", how="semi")["hit"].to_numpy()] = False
    if frequent.height == 0:
        return keep, pl.DataFrame(schema=FREQUENT_SCHEMA)
    # the eval texts holding each frequent key: the entries of its hash range with the same bytes
    first, hit = frequent["key"].to_numpy(), frequent["hit"].to_numpy()
    span = hi[hit] - lo[hit]
    rep = np.repeat(np.arange(hit.size), span)
    entry = lo[hit][rep] + np.arange(rep.size) - np.repeat(np.cumsum(span) - span, span)
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
    return keep, owners.unique().sort("benchmark", "key")

