"""The eval index of the n-gram and MinHash detectors (:class:`EvalIndex`): every eval text normalized, its
word windows hashed into one sorted table minus the boilerplate keys, and its MinHash signatures; built once,
reused for every shard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from assets.common.text.minhash.lsh import band_hashes, sorted_bands
from assets.common.text.minhash.signatures import signatures_from_normalized
from assets.common.text.normalize import normalize_expr, utf8_buffer
from assets.decontamination.config import EVAL_COLUMNS, DecontamConfig
from assets.decontamination.kernels import (
    base_powers,
    bloom_filter,
    eval_windows,
    first_word_hashes,
    probe_hits,
    short_starts,
    window_bytes,
)
from assets.decontamination.rephrase import RephraseJudge
from assets.decontamination.scan import MINHASH_ALL, MINHASH_OFF, MINHASH_SHARED, eval_shingle_set
from assets.decontamination.semantic import SemanticIndex


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
    minhash_shingles: MinHashShingles  # which messages the MinHash detector must sign
    starts: tuple[np.ndarray, ...]  # first words and lengths of the short ("whole") eval texts, for the scan
    semantic: SemanticIndex | None = None  # the semantic detector's eval side (``config.semantic_detector``)

    @classmethod
    def build(cls, eval_df: pl.DataFrame, cfg: DecontamConfig | None = None, *,
              embedding_cache: str | Path | None = None, judge: RephraseJudge | None = None) -> EvalIndex:
        """The index of ``eval_df``; the semantic detector's vectors go through ``embedding_cache`` (None: no cache)
        and its candidates to ``judge`` when its ``verify`` is on."""
        cfg = cfg or DecontamConfig()
        items = _eval_items(eval_df)
        data, offsets = utf8_buffer(items["normalized"])
        powers = base_powers(max(cfg.ngram, 1))
        table, table_items, table_pos, n_words = _eval_table(data, offsets, cfg, powers)
        short = (n_words < cfg.ngram) & (n_words >= cfg.min_words)

        # boilerplate cut-off: keys found in >= max_ngram_items distinct eval items leave the index
        excluded_entry = np.zeros(table.size, dtype=bool)
        key_items = np.zeros(table.size, np.int64)
        if cfg.max_ngram_items and table.size:
            key_items = _items_per_entry(data, offsets, items, table, table_items, short, n_words, powers)
            excluded_entry = key_items >= cfg.max_ngram_items
        status, all_boilerplate = _ngram_status(n_words, short, table_items, excluded_entry, cfg)
        items = items.with_columns(
            pl.Series("n_words", n_words, dtype=pl.Int64),
            pl.Series("ngram_status", status, dtype=pl.Utf8),
            pl.Series("ngram_all_boilerplate", all_boilerplate),
        )
        ex_rows = table_items[excluded_entry]
        boilerplate = _boilerplate_frame(
            items["benchmark"].gather(ex_rows),
            table[excluded_entry],
            np.minimum(n_words[ex_rows], cfg.ngram),
            key_items[excluded_entry],
            ex_rows,
            table_pos[excluded_entry],
        )
        kept_entry = ~excluded_entry
        table, table_items, table_pos = table[kept_entry], table_items[kept_entry], table_pos[kept_entry]
        lengths = np.unique(np.concatenate([[cfg.ngram], n_words[status == "whole"]])).astype(np.int64)
        bloom, mask = bloom_filter(table)
        mh_rows, mh_sigs, mh_sorted = _minhash_index(items, n_words, cfg)
        mh_shingles = MinHashShingles.build(items["normalized"].gather(mh_rows), n_words[mh_rows], cfg)
        whole = np.flatnonzero(status == "whole")
        starts = short_starts(first_word_hashes(data, offsets)[whole], n_words[whole])
        semantic = None
        if cfg.semantic_detector is not None:
            semantic = SemanticIndex.build(items, cfg.semantic_detector, embedding_cache, judge)
        return cls(
            cfg, items, table, table_items, table_pos, data, offsets, boilerplate, lengths, powers, bloom, mask,
            mh_rows, mh_sigs, mh_sorted, mh_shingles, starts, semantic,
        )

    def probe_args(self) -> tuple:
        """What the n-gram probe kernels take: (window lengths, powers, sorted table, bloom filter, mask)."""
        return self.lengths, self.powers, self.table, self.bloom, self.bloom_mask

    def scan_args(self) -> tuple:
        """What the scan's count of probe hits takes (see :func:`.kernels.count_hits`)."""
        return self.config.ngram, self.powers, self.table, self.bloom, self.bloom_mask, self.starts

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


    def entry_spans(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Byte spans, in ``eval_data``, of the key of table entries: an n-gram of a long eval text, or the
        whole of a short one."""
        rows = self.table_items[entries]
        length = np.minimum(self.items["n_words"].to_numpy()[rows], self.config.ngram)
        order = np.argsort(rows, kind="stable")
        start, end = np.empty(entries.size, np.int64), np.empty(entries.size, np.int64)
        start[order], end[order] = window_bytes(
            self.eval_data, self.eval_offsets, rows[order], self.table_pos[entries][order], length[order]
        )
        return start, end

    def entry_texts(self, entries: np.ndarray) -> list[str]:
        """The key of table entries as normalized text."""
        start, end = self.entry_spans(entries)
        return [self.eval_data[a:b].tobytes().decode("utf-8") for a, b in zip(start, end, strict=True)]


@dataclass(frozen=True)
class MinHashShingles:
    """Which messages the MinHash detector signs (``mode``, see :mod:`.scan`): none (detector off or nothing
    indexed), every message of at least ``min_words`` words, or only those also sharing a word ``n``-gram shingle
    hash with an indexed eval text (``shingles``, sorted, behind ``bloom``). The last needs the default shingles
    (words, xxh64) and indexed eval texts that all have words (an empty text's signature is a constant)."""

    mode: int
    n: int
    min_words: int
    shingles: np.ndarray
    bloom: np.ndarray
    mask: np.uint64

    @classmethod
    def build(cls, normalized: pl.Series, n_words: np.ndarray, cfg: DecontamConfig) -> MinHashShingles:
        """From the indexed eval texts (``normalized``, with their word counts)."""
        mh = cfg.minhash
        none = np.empty(0, np.uint64)
        off = cls(MINHASH_OFF, 1, 0, none, np.zeros(1, np.uint64), np.uint64(0))
        if mh is None or normalized.len() == 0:
            return off
        if mh.unit != "word" or mh.hash != "xxh64" or (n_words == 0).any():
            return cls(MINHASH_ALL, mh.ngram, cfg.minhash_min_words, none, off.bloom, off.mask)
        shingles = eval_shingle_set(*utf8_buffer(normalized), mh.ngram)
        return cls(MINHASH_SHARED, mh.ngram, cfg.minhash_min_words, *shingles)

    def args(self) -> tuple:
        """What :func:`.scan.scan` takes."""
        return self.mode, self.n, self.min_words, self.shingles, self.bloom, self.mask


def as_index(eval_df: pl.DataFrame | EvalIndex, cfg: DecontamConfig | None) -> EvalIndex:
    """``eval_df`` itself when it is an index (built with ``cfg``, if given), else the index built from it."""
    if isinstance(eval_df, EvalIndex):
        if cfg is not None and cfg != eval_df.config:
            raise ValueError("cfg differs from the config the EvalIndex was built with")
        return eval_df
    return EvalIndex.build(eval_df, cfg)


# --------------------------------------------------------------------------------------------------------
# building blocks of EvalIndex.build


def _eval_items(eval_df: pl.DataFrame) -> pl.DataFrame:
    """The eval texts (the four :data:`EVAL_COLUMNS` as strings) sorted by benchmark, item_id, field (stable),
    with their ``normalized`` text."""
    missing = [c for c in EVAL_COLUMNS if c not in eval_df.columns]
    if missing:
        raise ValueError(f"eval table lacks columns {missing} (columns: {eval_df.columns})")
    return (
        eval_df.select([pl.col(c).cast(pl.Utf8) for c in EVAL_COLUMNS])
        .sort(["benchmark", "item_id", "field"], maintain_order=True)
        .with_columns(normalize_expr("text").alias("normalized"))
    )


def _eval_table(
    data: np.ndarray, offsets: np.ndarray, cfg: DecontamConfig, powers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(table, table_items, table_pos, n_words): the hash of every window of the eval texts (all n-grams, or
    the whole text when ``min_words <= words < ngram``) sorted, the text row and word position of each, and
    the word count of every text."""
    n_words = np.zeros(offsets.size - 1, np.int64)
    empty_u, empty_i = np.empty(0, np.uint64), np.empty(0, np.int64)
    count = eval_windows(
        data, offsets, cfg.ngram, cfg.min_words, powers, False, empty_u, empty_i, empty_i, n_words
    )
    hashes, rows, pos = np.empty(count, np.uint64), np.empty(count, np.int64), np.empty(count, np.int64)
    eval_windows(data, offsets, cfg.ngram, cfg.min_words, powers, True, hashes, rows, pos, n_words)
    order = np.argsort(hashes, kind="stable")  # windows are emitted by (row, pos): ties stay in that order
    return hashes[order], rows[order], pos[order], n_words


def _items_per_entry(
    data: np.ndarray,
    offsets: np.ndarray,
    items: pl.DataFrame,
    table: np.ndarray,
    table_items: np.ndarray,
    short: np.ndarray,
    n_words: np.ndarray,
    powers: np.ndarray,
) -> np.ndarray:
    """Per table entry, the number of distinct eval items with a text containing its key (``short``: the texts
    matched as a whole sequence)."""
    keys, n_items = _items_per_key(
        data, offsets, _item_groups(items), table, table_items, table[short[table_items]],
        np.unique(n_words[short]).astype(np.int64), powers,
    )
    return n_items[np.searchsorted(keys, table)]


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
        bloom, mask = bloom_filter(short_lookup)
        doc, _pos, _len, lo, _hi = probe_hits(data, offsets, short_lengths, powers, short_lookup, bloom, mask)
        keys.append(short_lookup[lo])
        grp.append(groups[doc])
    keys, grp = np.concatenate(keys), np.concatenate(grp)
    order = np.lexsort((grp, keys))
    keys, grp = keys[order], grp[order]
    first = np.ones(keys.size, dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]) | (grp[1:] != grp[:-1])
    return np.unique(keys[first], return_counts=True)

def _ngram_status(
    n_words: np.ndarray, short: np.ndarray, table_items: np.ndarray, excluded_entry: np.ndarray, cfg: DecontamConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(status, all_boilerplate) per eval text: how the n-gram detector handles it (see :class:`EvalIndex`),
    and whether a long text lost every n-gram to the boilerplate cut-off."""
    excluded_row = np.zeros(n_words.size, dtype=bool)
    excluded_row[table_items[excluded_entry & short[table_items]]] = True
    kept_per_row = np.bincount(table_items[~excluded_entry], minlength=n_words.size)
    status = np.where(
        n_words >= cfg.ngram,
        "ngram",
        np.where(short, np.where(excluded_row, "boilerplate", "whole"), "too_short"),
    )
    return status, (n_words >= cfg.ngram) & (kept_per_row == 0)


def _boilerplate_frame(
    benchmark: pl.Series, hashes: np.ndarray, length: np.ndarray, items: np.ndarray, row: np.ndarray, pos: np.ndarray
) -> pl.DataFrame:
    """:attr:`EvalIndex.boilerplate` from the excluded table entries: one row per (benchmark, hash), its first
    occurrence by (row, pos)."""
    return (
        pl.DataFrame(
            {"benchmark": benchmark, "hash": hashes, "length": length, "items": items, "row": row, "pos": pos},
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


def _minhash_index(
    items: pl.DataFrame, n_words: np.ndarray, cfg: DecontamConfig
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """(rows, signatures, sorted bands) of the eval texts the MinHash detector indexes (empty when it is off)."""
    if cfg.minhash is None:
        return np.empty(0, np.int64), np.empty((0, 0), np.uint32), None
    rows = np.flatnonzero(n_words >= cfg.minhash_min_words).astype(np.int64)
    sigs = signatures_from_normalized(items["normalized"].gather(rows), cfg.minhash)
    return rows, sigs, sorted_bands(band_hashes(sigs, cfg.minhash))
