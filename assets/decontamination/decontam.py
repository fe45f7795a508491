"""Decontamination of training conversations against evaluation sets (no Dagster here).

The eval table has one row per (benchmark, item_id, field) with its ``text`` (``assets.eval_sets.core``'s
``EVAL_SET_SCHEMA``; only those four columns are used). Every user message ("prompt" side) and every
assistant message ("response" side) of a training conversation is compared, on its own, with every eval
text, after the same normalization as dedup (NFKC, lowercase, punctuation deleted, whitespace collapsed):

* ``detector="ngram"``: the message and the eval text share a word ``ngram`` (default 13, as in GPT-3 /
  Llama decontamination). An eval text with fewer than ``ngram`` words but at least ``min_words`` (default
  8) matches when its whole word sequence appears contiguously in the message; shorter eval texts (e.g. a
  one-word answer "42", or HumanEval's ``return x + y``) are ignored and counted as ``too_short`` in the
  report, never silently dropped. Candidate n-grams are found by 64-bit hash; every reported match is
  re-checked on the strings.
* boilerplate cut-off (``max_ngram_items``, default 3; 0 disables it): a key of the n-gram detector (an
  eval n-gram, or the whole word sequence of a short eval text) that occurs in at least ``max_ngram_items``
  distinct eval items (``(benchmark, item_id)``) is generic text ("let me know if you have any other
  questions ..."), not evidence of contamination, and is left out of the index. "Occurs in an item" means
  appears contiguously in one of the item's texts, any field, so a short text also counts the longer eval
  texts that contain it. The report gives, per benchmark, how many distinct n-grams and how many short
  texts were excluded (``boilerplate_ngrams``, ``boilerplate_texts``), how many long texts lost all their
  n-grams to it (``ngram_all_boilerplate``) and an example. :mod:`assets.decontamination.verify` applies the same
  rule with its own code.
* training-side frequency cut-off (``max_train_rows``, default 10; 0 disables it), as in the GPT-3 paper: a
  key of the n-gram detector found in at least ``max_train_rows`` distinct training conversations (distinct
  ``conversation_id``, in any message of the compared roles) of the table being decontaminated is generic
  text too, and matches on it are ignored. It catches chat boilerplate that a single eval item happens to
  share ("i hope this helps let me know if you have any other questions" in one Arena-Hard baseline answer),
  which the eval-side cut-off cannot see. Keys found in fewer conversations behave as before. "Found" means
  the key's word sequence appears in the message (every occurrence counts, checked byte for byte), so the
  count does not depend on which other keys the message matches; it is taken over the whole table passed
  to :func:`decontaminate` / :func:`find_contamination` (the asset passes the whole deduplicated table, not
  a shard). The trade-off: a real leak repeated in ``max_train_rows`` or more rows that are not
  near-duplicates of each other (e.g. the same eval prompt embedded in ten different conversations) is
  ignored by the n-gram detector. Near-duplicate removal runs before decontamination, so repeated copies of
  a leak are collapsed to one row first, and the MinHash detector (not subject to this cut-off) still
  catches a message that is, as a whole, close to an eval text. Set 0 to disable the cut-off. The report
  gives, per benchmark, how many distinct keys were ignored (``train_frequent_keys``) and the one found in
  most conversations (``example_train_frequent``); :mod:`assets.decontamination.verify` applies the same rule with
  its own code.
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

from assets.common.minhash.config import MinHashConfig
from assets.common.minhash.lsh import band_hashes, cross_candidates, sorted_bands
from assets.common.minhash.signatures import equal_counts, signatures_from_normalized
from assets.common.schema import REJECTED_DETAIL, REJECTED_REASON
from assets.common.text import fmix64, normalize_expr, token_spans, utf8_buffer, xxh64

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
    still checked, as a whole sequence when shorter than ``ngram``. max_ngram_items: an n-gram detector key
    (eval n-gram or whole short eval text) found in at least this many distinct eval items is boilerplate
    and ignored (0: no cut-off). max_train_rows: an n-gram detector key found in at least this many distinct
    training conversations of the table being decontaminated is generic text and ignored (0: no cut-off).
    roles: message roles compared. minhash: config of the similarity detector
    (None disables it). minhash_min_words: shortest message / eval text the similarity detector looks at."""

    ngram: int = 13
    min_words: int = 8
    max_ngram_items: int = 3
    max_train_rows: int = 10
    roles: tuple[str, ...] = ("user", "assistant")
    minhash: MinHashConfig | None = DEFAULT_MINHASH
    minhash_min_words: int = 10

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.min_words < 1:
            raise ValueError(f"ngram and min_words must be >= 1, got {self.ngram}, {self.min_words}")
        if self.max_ngram_items < 0 or self.max_ngram_items == 1:
            # 1 would exclude every key (each occurs in its own item) and silently disable the detector
            raise ValueError(f"max_ngram_items must be 0 (no cut-off) or >= 2, got {self.max_ngram_items}")
        if self.max_train_rows < 0 or self.max_train_rows == 1:
            # 1 would ignore every key found at all, i.e. silently disable the n-gram detector
            raise ValueError(f"max_train_rows must be 0 (no cut-off) or >= 2, got {self.max_train_rows}")
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
def _eval_windows(data, offsets, n, min_words, powers, fill, out_hash, out_item, out_pos, n_words):
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
                out_pos[count] = pos
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


@numba.njit(cache=True)
def _window_bytes(data, offsets, text, pos, length):
    """Byte span [start, end) in ``data`` of words [pos, pos + length) of text ``text[k]``, for every k (texts
    retokenized only when ``text`` changes, so order by text to tokenize each once)."""
    start = np.empty(text.size, np.int64)
    end = np.empty(text.size, np.int64)
    last = -1
    spans = np.empty(0, np.int64)
    ends = np.empty(0, np.int64)
    for k in range(text.size):
        i = text[k]
        if i != last:
            spans = np.empty(offsets[i + 1] - offsets[i] + 2, np.int64)
            ends = np.empty(offsets[i + 1] - offsets[i] + 2, np.int64)
            token_spans(data, offsets[i], offsets[i + 1], spans, ends)
            last = i
        start[k] = spans[pos[k]]
        end[k] = ends[pos[k] + length[k] - 1]
    return start, end


@numba.njit(cache=True)
def _same_bytes(a, a_start, a_end, b, b_start, b_end):
    """a[a_start[k]:a_end[k]] == b[b_start[k]:b_end[k]] for every k."""
    out = np.zeros(a_start.size, dtype=np.bool_)
    for k in range(a_start.size):
        n = a_end[k] - a_start[k]
        if n != b_end[k] - b_start[k]:
            continue
        same = True
        for j in range(n):
            if a[a_start[k] + j] != b[b_start[k] + j]:
                same = False
                break
        out[k] = same
    return out


def _bloom(table: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    """A one-hash bit filter over ``table`` (>= 16 bits per entry): most windows skip the binary search."""
    bits = 1 << max(16, int(np.ceil(np.log2(max(table.size, 1) * 16))))
    words = np.zeros(bits // 64, dtype=np.uint64)
    slots = (table >> np.uint64(7)) & np.uint64(bits - 1)
    np.bitwise_or.at(words, (slots >> np.uint64(6)).astype(np.int64), np.uint64(1) << (slots & np.uint64(63)))
    return words, np.uint64(bits - 1)


def _probe_hits(
    data: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    powers: np.ndarray,
    table: np.ndarray,
    bloom: np.ndarray,
    mask: np.uint64,
) -> tuple[np.ndarray, ...]:
    """Every window of every text (``data``/``offsets``) whose hash is in the sorted ``table``, for window
    lengths ``lengths``: arrays (text, word position, window length, lo, hi), [lo, hi) being the range of
    equal hashes in ``table``; ordered by text, then length, then position."""
    n_docs = offsets.size - 1
    counts = np.zeros(n_docs, np.int64)
    none = np.empty(0, np.int64)
    if table.size == 0 or n_docs == 0:
        return none, none, none, none, none
    probe = (lengths, powers, table, bloom, mask)
    all_docs = np.arange(n_docs, dtype=np.int64)
    _probe(data, offsets, all_docs, *probe, False, counts, all_docs, none, none, none, none, none)
    docs = np.flatnonzero(counts).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts[docs])[:-1]]).astype(np.int64)
    total = int(counts[docs].sum())
    out = tuple(np.empty(total, np.int64) for _ in range(5))
    if total:
        _probe(data, offsets, docs, *probe, True, counts, starts, *out)
    return out


def _item_groups(items: pl.DataFrame) -> np.ndarray:
    """Group number of each row of ``items`` (sorted by benchmark, item_id): one per (benchmark, item_id)."""
    new = pl.col("benchmark").ne_missing(pl.col("benchmark").shift()) | pl.col("item_id").ne_missing(
        pl.col("item_id").shift()
    )
    return items.select(new.fill_null(True).cum_sum().cast(pl.Int64)).to_series().to_numpy()


def _items_per_key(
    data: np.ndarray,
    offsets: np.ndarray,
    groups: np.ndarray,
    table: np.ndarray,
    table_items: np.ndarray,
    short_keys: np.ndarray,
    short_lengths: np.ndarray,
    powers: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, counts): for each distinct hash of ``table``, the number of distinct eval items (``groups`` of
    the texts) with a text containing a window of that hash. An n-gram is contained exactly in the texts
    whose table entries hold it; the whole sequences of short texts (hashes ``short_keys``, lengths
    ``short_lengths``) are looked for in every eval text, so they also count the longer texts holding them."""
    keys, grp = [table], [groups[table_items]]
    if short_keys.size:
        short_lookup = np.unique(short_keys)
        bloom, mask = _bloom(short_lookup)
        doc, _pos, _len, lo, _hi = _probe_hits(data, offsets, short_lengths, powers, short_lookup, bloom, mask)
        keys.append(short_lookup[lo])
        grp.append(groups[doc])
    keys, grp = np.concatenate(keys), np.concatenate(grp)
    order = np.lexsort((grp, keys))
    keys, grp = keys[order], grp[order]
    first = np.ones(keys.size, dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]) | (grp[1:] != grp[:-1])
    return np.unique(keys[first], return_counts=True)


# --------------------------------------------------------------------------------------------------------
# eval index


@dataclass(eq=False)
class EvalIndex:
    """Everything needed to probe training messages against an eval table; build once, reuse per shard.

    ``items``: one row per eval text with ``normalized``, ``n_words`` and ``ngram_status`` ("ngram": its
    n-grams are indexed, minus boilerplate ones; "whole": shorter than ``ngram``, matched as a whole
    sequence; "boilerplate": short, but its word sequence occurs in ``max_ngram_items`` or more eval items,
    so ignored; "too_short": fewer than ``min_words`` words, ignored by the n-gram detector).
    ``boilerplate``: one row per (benchmark, excluded key occurring in it): ``hash``, ``length`` (words),
    ``items`` (distinct eval items, all benchmarks, containing it) and ``row``/``pos`` of one occurrence.
    """

    config: DecontamConfig
    items: pl.DataFrame
    table: np.ndarray  # sorted uint64 window hashes (boilerplate excluded)
    table_items: np.ndarray  # item row of each table entry
    table_pos: np.ndarray  # word position of each table entry in its item's normalized text
    eval_data: np.ndarray  # UTF-8 bytes of the items' normalized texts (for string checks of table entries)
    eval_offsets: np.ndarray
    boilerplate: pl.DataFrame
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
            data, offsets, cfg.ngram, cfg.min_words, powers, False, empty_u, empty_i, empty_i, n_words
        )
        hashes, rows, pos = np.empty(count, np.uint64), np.empty(count, np.int64), np.empty(count, np.int64)
        _eval_windows(data, offsets, cfg.ngram, cfg.min_words, powers, True, hashes, rows, pos, n_words)
        order = np.argsort(hashes, kind="stable")  # windows are emitted by (row, pos): ties stay in that order
        table, table_items, table_pos = hashes[order], rows[order], pos[order]
        short = (n_words < cfg.ngram) & (n_words >= cfg.min_words)

        # boilerplate cut-off: keys found in >= max_ngram_items distinct eval items leave the index
        excluded_entry = np.zeros(table.size, dtype=bool)
        key_items = np.zeros(table.size, np.int64)
        if cfg.max_ngram_items and table.size:
            short_entry = short[table_items]
            keys, n_items = _items_per_key(
                data, offsets, _item_groups(items), table, table_items, table[short_entry],
                np.unique(n_words[short]).astype(np.int64), powers,
            )
            key_items = n_items[np.searchsorted(keys, table)]
            excluded_entry = key_items >= cfg.max_ngram_items
        excluded_row = np.zeros(items.height, dtype=bool)
        excluded_row[table_items[excluded_entry & short[table_items]]] = True
        kept_per_row = np.bincount(table_items[~excluded_entry], minlength=items.height)
        status = np.where(
            n_words >= cfg.ngram,
            "ngram",
            np.where(short, np.where(excluded_row, "boilerplate", "whole"), "too_short"),
        )
        items = items.with_columns(
            pl.Series("n_words", n_words, dtype=pl.Int64),
            pl.Series("ngram_status", status, dtype=pl.Utf8),
            pl.Series("ngram_all_boilerplate", (n_words >= cfg.ngram) & (kept_per_row == 0)),
        )
        ex_rows = table_items[excluded_entry]
        boilerplate = (
            pl.DataFrame(
                {
                    "benchmark": items["benchmark"].gather(ex_rows),
                    "hash": table[excluded_entry],
                    "length": np.minimum(n_words[ex_rows], cfg.ngram),
                    "items": key_items[excluded_entry],
                    "row": ex_rows,
                    "pos": table_pos[excluded_entry],
                },
                schema={
                    "benchmark": pl.Utf8,
                    "hash": pl.UInt64,
                    "length": pl.Int64,
                    "items": pl.Int64,
                    "row": pl.Int64,
                    "pos": pl.Int64,
                },
            )
            .sort("benchmark", "hash", "row", "pos", nulls_last=True)
            .unique(["benchmark", "hash"], keep="first", maintain_order=True)
            .select("benchmark", "hash", "length", "items", "row", "pos")
        )
        kept_entry = ~excluded_entry
        table, table_items, table_pos = table[kept_entry], table_items[kept_entry], table_pos[kept_entry]
        lengths = np.unique(np.concatenate([[cfg.ngram], n_words[status == "whole"]])).astype(np.int64)
        bloom, mask = _bloom(table)

        mh_rows = np.empty(0, np.int64)
        mh_sigs = np.empty((0, cfg.minhash.num_perm if cfg.minhash else 0), np.uint32)
        mh_sorted = None
        if cfg.minhash is not None:
            mh_rows = np.flatnonzero(n_words >= cfg.minhash_min_words).astype(np.int64)
            mh_sigs = signatures_from_normalized(items["normalized"].gather(mh_rows), cfg.minhash)
            mh_sorted = sorted_bands(band_hashes(mh_sigs, cfg.minhash))
        return cls(
            cfg, items, table, table_items, table_pos, data, offsets, boilerplate, lengths, powers, bloom, mask,
            mh_rows, mh_sigs, mh_sorted,
        )

    def stats(self) -> dict[str, dict[str, int]]:
        """Per benchmark: eval texts, how each is handled by the n-gram detector (``boilerplate_texts``: short
        texts excluded by the cut-off; ``ngram_all_boilerplate``: long texts none of whose n-grams is left),
        distinct n-grams excluded as boilerplate (``boilerplate_ngrams``), and minhash coverage."""
        mh = np.zeros(self.items.height, dtype=bool)
        mh[self.minhash_rows] = True
        excluded = (
            self.boilerplate.filter(pl.col("length") == self.config.ngram)
            .group_by("benchmark")
            .agg(boilerplate_ngrams=pl.len())
        )
        frame = (
            self.items.with_columns(pl.Series("mh", mh))
            .group_by("benchmark")
            .agg(
                eval_texts=pl.len(),
                ngram_indexed=(pl.col("ngram_status") == "ngram").sum(),
                whole_sequence=(pl.col("ngram_status") == "whole").sum(),
                too_short=(pl.col("ngram_status") == "too_short").sum(),
                boilerplate_texts=(pl.col("ngram_status") == "boilerplate").sum(),
                ngram_all_boilerplate=pl.col("ngram_all_boilerplate").sum(),
                minhash_indexed=pl.col("mh").sum(),
            )
            .join(excluded, on="benchmark", how="left", nulls_equal=True)
            .with_columns(pl.col("boilerplate_ngrams").fill_null(0))
        )
        return {
            row.pop("benchmark"): {k: int(v) for k, v in row.items()}
            for row in frame.sort("benchmark").iter_rows(named=True)
        }

    def boilerplate_examples(self) -> dict[str, str]:
        """Per benchmark with excluded keys: the excluded n-gram (or short text) found in the most eval items,
        as normalized text (ties: first in eval order)."""
        top = (
            self.boilerplate.sort(["items", "row", "pos"], descending=[True, False, False])
            .unique("benchmark", keep="first", maintain_order=True)
            .sort("benchmark")
        )
        texts = self.items["normalized"].gather(top["row"])
        return {
            b: " ".join(t.split(" ")[p : p + n])
            for b, t, p, n in zip(top["benchmark"], texts, top["pos"], top["length"], strict=True)
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


FREQUENT_SCHEMA: dict[str, pl.DataType] = {"benchmark": pl.Utf8, "key": pl.Utf8, "conversations": pl.Int64}


def _entry_spans(index: EvalIndex, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte spans, in ``index.eval_data``, of the key of table entries: an n-gram of a long eval text, or the
    whole of a short one."""
    rows = index.table_items[entries]
    length = np.minimum(index.items["n_words"].to_numpy()[rows], index.config.ngram)
    order = np.argsort(rows, kind="stable")
    start, end = np.empty(entries.size, np.int64), np.empty(entries.size, np.int64)
    start[order], end[order] = _window_bytes(
        index.eval_data, index.eval_offsets, rows[order], index.table_pos[entries][order], length[order]
    )
    return start, end


def _entry_texts(index: EvalIndex, entries: np.ndarray) -> list[str]:
    start, end = _entry_spans(index, entries)
    return [index.eval_data[a:b].tobytes().decode("utf-8") for a, b in zip(start, end, strict=True)]


def _hit_keys(
    data: np.ndarray, offsets: np.ndarray, index: EvalIndex, doc: np.ndarray, pos: np.ndarray,
    length: np.ndarray, lo: np.ndarray, hi: np.ndarray,
) -> np.ndarray:
    """For each probe hit, the first table entry of its hash range [lo, hi) whose key is, byte for byte, the
    message window (-1: none, a hash collision). Hits with the same window text get the same entry, so it
    identifies the key. The first entry is tried for all hits at once; the others only after a mismatch."""
    w_start, w_end = _window_bytes(data, offsets, doc, pos, length)  # hits are ordered by message
    key = np.full(doc.size, -1, np.int64)
    e_start, e_end = _entry_spans(index, lo)
    same = _same_bytes(data, w_start, w_end, index.eval_data, e_start, e_end)
    key[same] = lo[same]
    rest = np.flatnonzero(~same & (hi - lo > 1))
    if rest.size:
        span = hi[rest] - lo[rest] - 1
        rep = np.repeat(rest, span)
        entry = lo[rep] + 1 + np.arange(rep.size) - np.repeat(np.cumsum(span) - span, span)
        e_start, e_end = _entry_spans(index, entry)
        ok = _same_bytes(data, w_start[rep], w_end[rep], index.eval_data, e_start, e_end)
        for h, e in zip(rep[ok][::-1], entry[ok][::-1], strict=True):  # the first matching entry wins
            key[h] = e
    return key


def _train_frequent(
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
    k_start, k_end = _entry_spans(index, first[rep])
    e_start, e_end = _entry_spans(index, entry)
    same = _same_bytes(index.eval_data, k_start, k_end, index.eval_data, e_start, e_end)
    owners = pl.DataFrame(
        {
            "benchmark": index.items["benchmark"].gather(index.table_items[entry[same]]),
            "key": pl.Series(_entry_texts(index, first), dtype=pl.Utf8).gather(rep[same]),
            "conversations": frequent["conversations"].gather(rep[same]),
        },
        schema=FREQUENT_SCHEMA,
    )
    return keep, owners.unique().sort("benchmark", "key")


def _ngram_matches(msgs: pl.DataFrame, index: EvalIndex) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(matches, frequent): ``matches`` has (msg, item, matched_ngram) for every message/eval-text pair sharing
    a verified window whose key is not train-frequent; ``frequent`` the keys ignored as train-frequent
    (:data:`FREQUENT_SCHEMA`)."""
    empty = pl.DataFrame(schema={"msg": pl.Int64, "item": pl.Int64, "matched_ngram": pl.Utf8})
    frequent = pl.DataFrame(schema=FREQUENT_SCHEMA)
    if index.table.size == 0 or msgs.height == 0:
        return empty, frequent
    data, offsets = utf8_buffer(msgs["normalized"])
    probe = (index.lengths, index.powers, index.table, index.bloom, index.bloom_mask)
    o_doc, o_pos, o_len, o_lo, o_hi = _probe_hits(data, offsets, *probe)
    if index.config.max_train_rows and o_doc.size:
        keep, frequent = _train_frequent(msgs, index, data, offsets, (o_doc, o_pos, o_len, o_lo, o_hi))
        o_doc, o_pos, o_len, o_lo, o_hi = (a[keep] for a in (o_doc, o_pos, o_len, o_lo, o_hi))
    total = o_doc.size
    if total == 0:
        return empty, frequent
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
    return pl.concat(found).with_columns(pl.col("msg", "item").cast(pl.Int64)), frequent


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


def _find(df: pl.DataFrame, index: EvalIndex) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(matches, frequent): the matches with the training row position (``row``) kept for ordering and grouping,
    and the keys ignored by the training-side cut-off (:data:`FREQUENT_SCHEMA`)."""
    msgs = _training_messages(df, index.config.roles)
    ngram, frequent = _ngram_matches(msgs, index)
    ngram = ngram.with_columns(
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
    matches = (
        out.sort(["row", "message_index", "benchmark", "item_id", "field", "detector"])
        .select("row", *MATCH_SCHEMA)
        .cast(MATCH_SCHEMA)
    )
    return matches, frequent


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
    training row, message_index, benchmark, item_id, field, detector. Keys found in ``max_train_rows`` or more
    distinct conversations of ``df`` are ignored (the training-side cut-off counts over ``df``)."""
    return _find(df, _as_index(eval_df, cfg))[0].drop("row")


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
    matched n-gram, the eval-side stats (``too_short``, ``boilerplate_ngrams`` etc.) and an example of the
    boilerplate excluded by the ``max_ngram_items`` cut-off (``example_boilerplate``), the number of distinct keys
    ignored by the ``max_train_rows`` cut-off (``train_frequent_keys``) and the one found in most conversations
    (``example_train_frequent``: ``{"key", "conversations"}``, ties by key text).
    """
    index = _as_index(eval_df, cfg)
    matches, frequent = _find(df, index)
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
    boilerplate_examples = index.boilerplate_examples()
    for name, stats in eval_stats.items():
        sub = matches.filter(pl.col("benchmark") == name)
        ngram = sub.filter(pl.col("detector") == "ngram")
        train_frequent = frequent.filter(pl.col("benchmark") == name).sort(
            ["conversations", "key"], descending=[True, False]
        )
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
            "example_boilerplate": boilerplate_examples.get(name),
            "train_frequent_keys": train_frequent.height,
            "example_train_frequent": (
                {"key": train_frequent["key"][0], "conversations": int(train_frequent["conversations"][0])}
                if train_frequent.height
                else None
            ),
        }
    report = {
        "rows_in": df.height,
        "rows_kept": int((~mask).sum()),
        "rows_removed": int(mask.sum()),
        "matches": matches.height,
        "config": index.config.to_json(),
        "boilerplate_ngrams": int(
            index.boilerplate.filter(pl.col("length") == index.config.ngram)["hash"].n_unique()
        ),
        "boilerplate_texts": int((index.items["ngram_status"] == "boilerplate").sum()),
        "train_frequent_keys": int(frequent["key"].n_unique()),
        "benchmarks": benchmarks,
    }
    return kept, rejected, report
