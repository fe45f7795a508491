"""Decontamination of training conversations against evaluation sets (no Dagster here).

The eval table has one row per (benchmark, item_id, field) with its ``text`` (``assets.eval_sets.core``'s
``EVAL_SET_SCHEMA``; only those four columns are used). Every user message ("prompt" side) and every
assistant message ("response" side) of a training conversation is compared, on its own, with every eval
text, after the same normalization as dedup (NFKC, lowercase, punctuation deleted, whitespace collapsed):

* ``detector="ngram"``: the message and the eval text share a word ``ngram`` (default 13, as in GPT-3 /
  Llama decontamination). An eval text with fewer than ``ngram`` words but at least ``min_words`` (default
  4) matches when its whole word sequence appears contiguously in the message; shorter eval texts (e.g. a
  one-word answer "42") are ignored and counted as ``too_short`` in the report, never silently dropped.
  Candidate n-grams are found by 64-bit hash; every reported match is re-checked on the strings.
* ``detector="minhash"``: estimated Jaccard of word 3-gram sets >= 0.5 (:data:`DEFAULT_MINHASH`), for
  messages and eval texts of at least ``minhash_min_words`` (default 10) words. It catches light rewording
  that leaves no 13-gram intact: one changed word every 12 words keeps J(3-grams) ~ 0.6, every 10 words
  ~ 0.5, while unrelated texts score near 0 (5-grams would need near-verbatim copies, which the n-gram
  detector already catches). Because every LSH candidate is verified, the banding favours recall
  (weights 0.1 false positive / 0.9 false negative -> 32 bands x 4 rows: a J = 0.55 pair is a candidate
  with probability 0.95, J = 0.62 with 0.99). It compares whole texts, so an eval item buried in a much
  longer response is left to the n-gram detector.

:func:`find_contamination` returns the matches; :func:`decontaminate` splits the table into kept and
rejected rows and builds a per-benchmark report. Build an :class:`EvalIndex` once to reuse across shards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import polars as pl

from assets.common.schema import REJECTED_DETAIL, REJECTED_REASON
from assets.dedup.minhash import (
    MinHashConfig,
    band_hashes,
    cross_candidates,
    equal_counts,
    signatures_from_normalized,
    sorted_bands,
)
from assets.dedup.text import fmix64, normalize_expr, token_spans, utf8_buffer, xxh64

EVAL_COLUMNS = ("benchmark", "item_id", "field", "text")
SIDES = {"user": "prompt", "assistant": "response"}
REASON_CONTAMINATION = "contamination"
DEFAULT_MINHASH = MinHashConfig(unit="word", ngram=3, num_perm=128, threshold=0.5, weights=(0.1, 0.9))

MATCH_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.Utf8,
    "message_index": pl.Int64,  # position in ``messages`` (system message included)
    "role": pl.Utf8,  # "user" | "assistant"
    "side": pl.Utf8,  # "prompt" | "response"
    "benchmark": pl.Utf8,
    "item_id": pl.Utf8,
    "field": pl.Utf8,
    "detector": pl.Utf8,  # "ngram" | "minhash"
    "matched_ngram": pl.Utf8,  # normalized matched words (ngram detector), else null
    "similarity": pl.Float64,  # estimated Jaccard (minhash detector), else null
}

_U64 = np.uint64
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial rolling hash over word hashes
_LEN_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


@dataclass(frozen=True)
class DecontamConfig:
    """ngram: word n-gram length of the overlap detector. min_words: shortest eval text (in normalized words)
    still checked, as a whole sequence when shorter than ``ngram``. roles: message roles compared.
    minhash: config of the similarity detector (None disables it). minhash_min_words: shortest message /
    eval text the similarity detector looks at."""

    ngram: int = 13
    min_words: int = 4
    roles: tuple[str, ...] = ("user", "assistant")
    minhash: MinHashConfig | None = DEFAULT_MINHASH
    minhash_min_words: int = 10

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.min_words < 1:
            raise ValueError(f"ngram and min_words must be >= 1, got {self.ngram}, {self.min_words}")
        unknown = set(self.roles) - set(SIDES)
        if unknown:
            raise ValueError(f"roles must be among {sorted(SIDES)}, got {sorted(unknown)}")
        object.__setattr__(self, "roles", tuple(self.roles))

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["roles"] = list(self.roles)
        out["minhash"] = self.minhash.to_json() if self.minhash else None
        return out


# --------------------------------------------------------------------------------------------------------
# numba kernels: word hashes -> polynomial prefix -> O(1) hash of any window of L words


@numba.njit(cache=True)
def _prefix(data, start, end, spans, ends, prefix):
    """Word count of data[start:end]; fills prefix[t+1] = prefix[t] * BASE + xxh64(word t)."""
    count = token_spans(data, start, end, spans, ends)
    prefix[0] = _U64(0)
    for t in range(count):
        prefix[t + 1] = prefix[t] * _BASE + xxh64(data, spans[t], ends[t], _U64(0))
    return count


@numba.njit(cache=True)
def _window(prefix, powers, pos, length):
    return fmix64(prefix[pos + length] - prefix[pos] * powers[length] + _U64(length) * _LEN_MIX)


@numba.njit(cache=True)
def _powers(max_len):
    out = np.empty(max_len + 1, np.uint64)
    out[0] = _U64(1)
    for k in range(max_len):
        out[k + 1] = out[k] * _BASE
    return out


@numba.njit(cache=True)
def _eval_windows(data, offsets, n, min_words, powers, fill, out_hash, out_item, n_words):
    """Windows of every eval text: all n-grams, or the whole text when min_words <= words < n."""
    count = 0
    for i in range(offsets.size - 1):
        start = offsets[i]
        end = offsets[i + 1]
        spans = np.empty(end - start + 2, np.int64)
        ends = np.empty(end - start + 2, np.int64)
        prefix = np.empty(end - start + 3, np.uint64)
        words = _prefix(data, start, end, spans, ends, prefix)
        n_words[i] = words
        if words >= n:
            length = n
            windows = words - n + 1
        elif words >= min_words:
            length = words
            windows = 1
        else:
            continue
        for pos in range(windows):
            if fill:
                out_hash[count] = _window(prefix, powers, pos, length)
                out_item[count] = i
            count += 1
    return count


@numba.njit(cache=True)
def _bloom_hit(bloom, mask, h):
    slot = (h >> _U64(7)) & mask
    return (bloom[slot >> _U64(6)] >> (slot & _U64(63))) & _U64(1)


@numba.njit(parallel=True, cache=True)
def _probe(
    data,
    offsets,
    docs,
    lengths,
    powers,
    table,
    bloom,
    mask,
    fill,
    counts,
    starts,
    o_doc,
    o_pos,
    o_len,
    o_lo,
    o_hi,
):
    """Probe the windows of messages ``docs`` against the sorted ``table``.

    Count pass (``fill=False``): ``counts[i]`` = number of hits of message ``i``. Fill pass: write each hit of
    message ``docs[d]`` from ``starts[d]`` on: message, word position, window length, and the range
    [lo, hi) of equal hashes in ``table``."""
    for d in numba.prange(docs.size):
        i = docs[d]
        start = offsets[i]
        end = offsets[i + 1]
        spans = np.empty(end - start + 2, np.int64)
        ends = np.empty(end - start + 2, np.int64)
        prefix = np.empty(end - start + 3, np.uint64)
        words = _prefix(data, start, end, spans, ends, prefix)
        c = starts[d] if fill else 0
        for li in range(lengths.size):
            length = lengths[li]
            for pos in range(words - length + 1):
                h = _window(prefix, powers, pos, length)
                if _bloom_hit(bloom, mask, h):
                    k = np.searchsorted(table, h)
                    if k < table.size and table[k] == h:
                        if fill:
                            e = k + 1
                            while e < table.size and table[e] == h:
                                e += 1
                            o_doc[c] = i
                            o_pos[c] = pos
                            o_len[c] = length
                            o_lo[c] = k
                            o_hi[c] = e
                        c += 1
        if not fill:
            counts[i] = c


def _bloom(table: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    """A one-hash bit filter over ``table`` (>= 16 bits per entry): most windows skip the binary search."""
    bits = 1 << max(16, int(np.ceil(np.log2(max(table.size, 1) * 16))))
    words = np.zeros(bits // 64, dtype=np.uint64)
    slots = (table >> np.uint64(7)) & np.uint64(bits - 1)
    np.bitwise_or.at(words, (slots >> np.uint64(6)).astype(np.int64), np.uint64(1) << (slots & np.uint64(63)))
    return words, np.uint64(bits - 1)


# --------------------------------------------------------------------------------------------------------
# eval index


@dataclass(eq=False)
class EvalIndex:
    """Everything needed to probe training messages against an eval table; build once, reuse per shard.

    ``items``: one row per eval text with ``normalized``, ``n_words`` and ``ngram_status`` ("ngram": all its
    n-grams are indexed; "whole": shorter than ``ngram``, matched as a whole sequence; "too_short": fewer
    than ``min_words`` words, ignored by the n-gram detector).
    """

    config: DecontamConfig
    items: pl.DataFrame
    table: np.ndarray  # sorted uint64 window hashes
    table_items: np.ndarray  # item row of each table entry
    lengths: np.ndarray  # window lengths to probe (ngram + the lengths of "whole" items)
    powers: np.ndarray
    bloom: np.ndarray
    bloom_mask: np.uint64
    minhash_rows: np.ndarray  # item rows indexed by the minhash detector
    minhash_signatures: np.ndarray
    minhash_sorted: tuple[np.ndarray, np.ndarray] | None

    @classmethod
    def build(cls, eval_df: pl.DataFrame, cfg: DecontamConfig | None = None) -> EvalIndex:
        cfg = cfg or DecontamConfig()
        missing = [c for c in EVAL_COLUMNS if c not in eval_df.columns]
        if missing:
            raise ValueError(f"eval table lacks columns {missing} (columns: {eval_df.columns})")
        items = (
            eval_df.select([pl.col(c).cast(pl.Utf8) for c in EVAL_COLUMNS])
            .sort(["benchmark", "item_id", "field"], maintain_order=True)
            .with_columns(normalize_expr("text").alias("normalized"))
        )
        data, offsets = utf8_buffer(items["normalized"])
        n_words = np.zeros(items.height, np.int64)
        max_len = max(cfg.ngram, 1)
        powers = _powers(max_len)
        empty_u, empty_i = np.empty(0, np.uint64), np.empty(0, np.int64)
        count = _eval_windows(
            data, offsets, cfg.ngram, cfg.min_words, powers, False, empty_u, empty_i, n_words
        )
        hashes, rows = np.empty(count, np.uint64), np.empty(count, np.int64)
        _eval_windows(data, offsets, cfg.ngram, cfg.min_words, powers, True, hashes, rows, n_words)
        order = np.lexsort((rows, hashes))
        table, table_items = hashes[order], rows[order]
        status = np.where(
            n_words >= cfg.ngram, "ngram", np.where(n_words >= cfg.min_words, "whole", "too_short")
        )
        items = items.with_columns(
            pl.Series("n_words", n_words, dtype=pl.Int64), pl.Series("ngram_status", status, dtype=pl.Utf8)
        )
        whole_lengths = np.unique(n_words[status == "whole"])
        lengths = np.unique(np.concatenate([[cfg.ngram], whole_lengths])).astype(np.int64)
        bloom, mask = _bloom(table)

        mh_rows = np.empty(0, np.int64)
        mh_sigs = np.empty((0, cfg.minhash.num_perm if cfg.minhash else 0), np.uint32)
        mh_sorted = None
        if cfg.minhash is not None:
            mh_rows = np.flatnonzero(n_words >= cfg.minhash_min_words).astype(np.int64)
            mh_sigs = signatures_from_normalized(items["normalized"].gather(mh_rows), cfg.minhash)
            mh_sorted = sorted_bands(band_hashes(mh_sigs, cfg.minhash))
        return cls(cfg, items, table, table_items, lengths, powers, bloom, mask, mh_rows, mh_sigs, mh_sorted)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per benchmark: eval texts, how each is handled by the n-gram detector, and minhash coverage."""
        mh = np.zeros(self.items.height, dtype=bool)
        mh[self.minhash_rows] = True
        frame = (
            self.items.with_columns(pl.Series("mh", mh))
            .group_by("benchmark")
            .agg(
                eval_texts=pl.len(),
                ngram_indexed=(pl.col("ngram_status") == "ngram").sum(),
                whole_sequence=(pl.col("ngram_status") == "whole").sum(),
                too_short=(pl.col("ngram_status") == "too_short").sum(),
                minhash_indexed=pl.col("mh").sum(),
            )
        )
        return {
            row.pop("benchmark"): {k: int(v) for k, v in row.items()}
            for row in frame.sort("benchmark").iter_rows(named=True)
        }


# --------------------------------------------------------------------------------------------------------
# matching


def _training_messages(df: pl.DataFrame, roles: tuple[str, ...]) -> pl.DataFrame:
    """One row per message with a compared role: row position, conversation_id, message_index, role, text."""
    exploded = (
        df.select(pl.col("conversation_id").cast(pl.Utf8), "messages")
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))
        .with_columns(pl.int_ranges(0, pl.col("messages").list.len(), dtype=pl.Int64).alias("message_index"))
        .explode(["messages", "message_index"])
        .filter(pl.col("messages").is_not_null())
        .with_columns(
            pl.col("messages").struct.field("role").alias("role"),
            pl.col("messages").struct.field("content").alias("content"),
        )
        .filter(pl.col("role").is_in(list(roles)))
        .select("row", "conversation_id", "message_index", "role", "content")
    )
    return exploded.with_columns(normalize_expr("content").alias("normalized")).drop("content")


def _ngram_matches(msgs: pl.DataFrame, index: EvalIndex) -> pl.DataFrame:
    """(msg, item, matched_ngram) for every message/eval-text pair sharing a verified window."""
    empty = pl.DataFrame(schema={"msg": pl.Int64, "item": pl.Int64, "matched_ngram": pl.Utf8})
    if index.table.size == 0 or msgs.height == 0:
        return empty
    data, offsets = utf8_buffer(msgs["normalized"])
    counts = np.zeros(msgs.height, np.int64)
    probe = (index.lengths, index.powers, index.table, index.bloom, index.bloom_mask)
    none = np.empty(0, np.int64)
    all_docs = np.arange(msgs.height, dtype=np.int64)
    _probe(data, offsets, all_docs, *probe, False, counts, all_docs, none, none, none, none, none)
    docs = np.flatnonzero(counts).astype(np.int64)
    if docs.size == 0:
        return empty
    starts = np.concatenate([[0], np.cumsum(counts[docs])[:-1]]).astype(np.int64)
    total = int(counts[docs].sum())
    o_doc, o_pos, o_len, o_lo, o_hi = (np.empty(total, np.int64) for _ in range(5))
    _probe(data, offsets, docs, *probe, True, counts, starts, o_doc, o_pos, o_len, o_lo, o_hi)
    # expand each hit to the eval rows holding that window
    span = o_hi - o_lo
    rep = np.repeat(np.arange(total), span)
    within = np.arange(rep.size) - np.repeat(np.cumsum(span) - span, span)
    hits = pl.DataFrame(
        {
            "msg": o_doc[rep],
            "pos": o_pos[rep],
            "length": o_len[rep],
            "item": index.table_items[o_lo[rep] + within],
        }
    )
    # keep windows whose length fits the item (an n-gram for long items, the whole text for short ones)
    item_len = index.items["n_words"].to_numpy()
    wanted = np.minimum(item_len[hits["item"].to_numpy()], index.config.ngram)
    hits = hits.filter(pl.Series(hits["length"].to_numpy() == wanted)).unique().sort(["msg", "item", "pos"])
    # verify on strings, earliest window first; a (rare) hash collision falls through to the next window
    found = []
    pending = hits
    norm_msgs = msgs.select(pl.col("normalized").alias("msg_text"))
    norm_items = index.items.select(pl.col("normalized").alias("item_text"))
    while pending.height:
        first = pending.group_by(["msg", "item"], maintain_order=True).first()
        checked = (
            first.with_columns(
                norm_msgs["msg_text"].gather(first["msg"]).alias("msg_text"),
                norm_items["item_text"].gather(first["item"]).alias("item_text"),
            )
            .with_columns(
                pl.col("msg_text")
                .str.split(" ")
                .list.slice(pl.col("pos"), pl.col("length"))
                .list.join(" ")
                .alias("matched_ngram")
            )
            .with_columns(
                (pl.lit(" ") + pl.col("item_text") + pl.lit(" "))
                .str.contains(pl.lit(" ") + pl.col("matched_ngram") + pl.lit(" "), literal=True)
                .alias("ok")
            )
        )
        found.append(checked.filter("ok").select("msg", "item", "matched_ngram"))
        failed = checked.filter(~pl.col("ok")).select("msg", "item", "pos")
        pending = pending.join(failed, on=["msg", "item"], how="semi").join(
            failed, on=["msg", "item", "pos"], how="anti"
        )
    return pl.concat(found).with_columns(pl.col("msg", "item").cast(pl.Int64))


def _minhash_matches(msgs: pl.DataFrame, index: EvalIndex) -> pl.DataFrame:
    """(msg, item, similarity) for message/eval-text pairs with estimated Jaccard >= threshold."""
    cfg = index.config
    empty = pl.DataFrame(schema={"msg": pl.Int64, "item": pl.Int64, "similarity": pl.Float64})
    if cfg.minhash is None or index.minhash_rows.size == 0 or msgs.height == 0:
        return empty
    n_words = (
        msgs.select(
            pl.when(pl.col("normalized").str.len_bytes() == 0)
            .then(0)
            .otherwise(pl.col("normalized").str.count_matches(" ", literal=True) + 1)
        )
        .to_series()
        .to_numpy()
    )
    rows = np.flatnonzero(n_words >= cfg.minhash_min_words).astype(np.int64)
    if rows.size == 0:
        return empty
    sigs = signatures_from_normalized(msgs["normalized"].gather(rows), cfg.minhash)
    eval_pos, msg_pos = cross_candidates(index.minhash_sorted, band_hashes(sigs, cfg.minhash))
    if eval_pos.size == 0:
        return empty
    sims = equal_counts(index.minhash_signatures, eval_pos, sigs, msg_pos) / float(cfg.minhash.num_perm)
    ok = sims >= cfg.minhash.threshold
    return pl.DataFrame(
        {"msg": rows[msg_pos[ok]], "item": index.minhash_rows[eval_pos[ok]], "similarity": sims[ok]},
        schema={"msg": pl.Int64, "item": pl.Int64, "similarity": pl.Float64},
    )


def _find(df: pl.DataFrame, index: EvalIndex) -> pl.DataFrame:
    """Matches with the training row position (``row``) kept for ordering and grouping."""
    msgs = _training_messages(df, index.config.roles)
    ngram = _ngram_matches(msgs, index).with_columns(
        pl.lit("ngram").alias("detector"), pl.lit(None, pl.Float64).alias("similarity")
    )
    minhash = _minhash_matches(msgs, index).with_columns(
        pl.lit("minhash").alias("detector"), pl.lit(None, pl.Utf8).alias("matched_ngram")
    )
    cols = ["msg", "item", "detector", "matched_ngram", "similarity"]
    matches = pl.concat([ngram.select(cols), minhash.select(cols)])
    meta = msgs.select("row", "conversation_id", "message_index", "role")
    items = index.items.select("benchmark", "item_id", "field")
    out = pl.concat(
        [
            meta.select(pl.all().gather(matches["msg"])),
            items.select(pl.all().gather(matches["item"])),
            matches.select("detector", "matched_ngram", "similarity"),
        ],
        how="horizontal",
    ).with_columns(pl.col("role").replace_strict(SIDES, return_dtype=pl.Utf8).alias("side"))
    return (
        out.sort(["row", "message_index", "benchmark", "item_id", "field", "detector"])
        .select("row", *MATCH_SCHEMA)
        .cast(MATCH_SCHEMA)
    )


def _as_index(eval_df: pl.DataFrame | EvalIndex, cfg: DecontamConfig | None) -> EvalIndex:
    if isinstance(eval_df, EvalIndex):
        if cfg is not None and cfg != eval_df.config:
            raise ValueError("cfg differs from the config the EvalIndex was built with")
        return eval_df
    return EvalIndex.build(eval_df, cfg)


def find_contamination(
    df: pl.DataFrame, eval_df: pl.DataFrame | EvalIndex, cfg: DecontamConfig | None = None
) -> pl.DataFrame:
    """Every (training message, eval text, detector) match, columns :data:`MATCH_SCHEMA`, ordered by
    training row, message_index, benchmark, item_id, field, detector."""
    return _find(df, _as_index(eval_df, cfg)).drop("row")


def _describe(prefix: pl.Expr) -> pl.Expr:
    return (
        pl.when(pl.col("detector") == "ngram")
        .then(
            pl.format(
                "{} {}/{}:{} in {}: '{}'", prefix, "benchmark", "item_id", "field", "side", "matched_ngram"
            )
        )
        .otherwise(
            pl.format(
                "{} {}/{}:{} in {}: jaccard {}",
                prefix,
                "benchmark",
                "item_id",
                "field",
                "side",
                pl.col("similarity").round(3),
            )
        )
    )


def decontaminate(
    df: pl.DataFrame,
    eval_df: pl.DataFrame | EvalIndex,
    cfg: DecontamConfig | None = None,
    *,
    max_detail: int = 3,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Split ``df`` into (kept, rejected, report).

    ``rejected`` keeps the input columns and order and adds ``reason`` ("contamination") and ``detail`` (the
    first ``max_detail`` matches). ``report``: row counts, the config, and per benchmark (every benchmark of
    the eval table, matched or not) the rows removed, matched item ids, match counts per detector, an example
    matched n-gram and the eval-side stats (``too_short`` etc.).
    """
    index = _as_index(eval_df, cfg)
    matches = _find(df, index)
    bad_rows = matches["row"].unique().sort()
    mask = np.zeros(df.height, dtype=bool)
    mask[bad_rows.to_numpy()] = True
    details = (
        matches.with_columns(_describe(pl.col("detector")).alias("d"))
        .group_by("row", maintain_order=True)
        .agg(pl.col("d").head(max_detail), pl.len().alias("n"))
        .with_columns(
            (
                pl.col("d").list.join("; ")
                + pl.when(pl.col("n") > max_detail)
                .then(pl.format(" (+{} more)", pl.col("n") - max_detail))
                .otherwise(pl.lit(""))
            ).alias(REJECTED_DETAIL)
        )
        .select(pl.col("row").cast(pl.Int64), REJECTED_DETAIL)
    )
    rejected = (
        df.with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))
        .join(details, on="row", how="inner")
        .sort("row")
        .drop("row")
        .with_columns(pl.lit(REASON_CONTAMINATION).alias(REJECTED_REASON))
        .select(*df.columns, REJECTED_REASON, REJECTED_DETAIL)
    )
    kept = df.filter(pl.Series(~mask))

    benchmarks: dict[str, dict[str, Any]] = {}
    eval_stats = index.stats()
    for name, stats in eval_stats.items():
        sub = matches.filter(pl.col("benchmark") == name)
        ngram = sub.filter(pl.col("detector") == "ngram")
        benchmarks[name] = {
            "rows_removed": int(sub["row"].n_unique()),
            "matched_item_ids": sorted(sub["item_id"].unique().to_list()),
            "matches": {
                "ngram": ngram.height,
                "minhash": sub.height - ngram.height,
            },
            "example_ngram": ngram["matched_ngram"][0] if ngram.height else None,
            "example_conversation_id": sub["conversation_id"][0] if sub.height else None,
            "eval": stats,
        }
    report = {
        "rows_in": df.height,
        "rows_kept": int((~mask).sum()),
        "rows_removed": int(mask.sum()),
        "matches": matches.height,
        "config": index.config.to_json(),
        "benchmarks": benchmarks,
    }
    return kept, rejected, report
