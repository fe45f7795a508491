"""The one pass over the raw text of the training messages (numba, all cores): each message is normalized (a
pure-ASCII message on the fly, byte by byte; the others by polars first), its words are hashed once, and the word
hashes serve both detectors:

* the n-gram detector's window hashes are probed against the eval table: hits are only counted here, and the few
  messages with hits are normalized again into a buffer of their own for the exact steps (:func:`normalized_rows`);
* the MinHash detector's word shingles are looked up in the set of the indexed eval texts' shingle hashes. A
  signature value is the minimum over a text's shingle hashes under a bijective permutation, so a message and an
  eval text have an equal value only if they share a shingle hash: a message sharing none with every indexed eval
  text is never an LSH candidate nor a match, and its signature is not computed. The look-up needs the default
  shingles (words, xxh64); with other MinHash settings every message long enough is signed.

Results depend on each message alone, never on how messages are split among threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import polars as pl
import pyarrow as pa

from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.minhash.signatures import signatures_from_buffer, word_hashes_signature
from assets.common.text.normalize import (
    ASCII_CLASSES,
    ascii_word_hashes,
    fmix64,
    hash_sequence,
    normalize,
    normalize_ascii_row,
    utf8_buffer,
    utf8_view,
    xxh64,
)
from assets.decontamination.kernels import bloom_filter, bloom_hit, count_hits, fill_prefix

_U64 = np.uint64
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_CHUNKS = 256  # messages are scanned in this many contiguous chunks (scratch arrays are allocated per chunk)

MINHASH_OFF, MINHASH_ALL, MINHASH_SHARED = 0, 1, 2  # which messages the MinHash detector signs (see scan)


# --------------------------------------------------------------------------------------------------------
# numba kernels


@numba.njit(inline="always")
def _normalized_word_hashes(data, start, end, hashes):
    """xxh64 of every word of the already-normalized text ``data[start:end]``; the word count."""
    if end <= start:
        return 0
    count = 0
    tok = start
    for i in range(start, end):
        if data[i] == 0x20:
            hashes[count] = xxh64(data, tok, i, _U64(0))
            count += 1
            tok = i + 1
    hashes[count] = xxh64(data, tok, end, _U64(0))
    return count + 1


@numba.njit(inline="always")
def _word_hashes(data, start, end, raw, classes, word, hashes):
    """(word count, normalized length) of a raw text (-1, -1: not pure ASCII) or of a normalized one."""
    if raw:
        return ascii_word_hashes(data, start, end, classes, word, hashes)
    return _normalized_word_hashes(data, start, end, hashes), end - start


@numba.njit(inline="always")
def _longest(offsets, rows, lo, hi):
    """The longest text in bytes among ``rows[lo:hi]``: the size of a chunk's scratch arrays."""
    longest = 0
    for k in range(lo, hi):
        longest = max(longest, offsets[rows[k] + 1] - offsets[rows[k]])
    return longest


@numba.njit(inline="always")
def _shingle_hash(hashes, k, width):
    """The 32-bit hash of the word shingle of ``width`` words from word ``k`` (the MinHash signatures' own)."""
    x = hash_sequence(hashes, k, width)
    return (x ^ (x >> _S32)) & _M32


@numba.njit(inline="always")
def _shares_shingle(hashes, count, n, shingles, bloom, mask):
    """Whether a text of ``count`` words (hashes) has a word ``n``-gram shingle whose hash is in ``shingles``
    (sorted); a text without words counts as sharing (its signature is the empty one)."""
    if count == 0:
        return True
    width = count if count < n else n
    for k in range(1 if count < n else count - n + 1):
        h = _shingle_hash(hashes, k, width)
        if bloom_hit(bloom, mask, fmix64(h)):
            j = np.searchsorted(shingles, h)
            if j < shingles.size and shingles[j] == h:
                return True
    return False


@numba.njit(parallel=True, cache=True)
def _scan(data, offsets, raw, classes, probe, minhash, n_words, n_bytes, hits, signed):
    """For every text of ``data``/``offsets`` (raw, or already normalized): word count and normalized length (-1:
    non-ASCII raw text, left to the caller), n-gram probe hits, and whether the MinHash detector must sign it.

    ``probe`` = (ngram, powers, table, bloom, mask, starts) (see :func:`.kernels.count_hits`); ``minhash`` = (mode,
    n, min_words, shingles, bloom, mask)."""
    ngram, powers, table, t_bloom, t_mask, starts = probe
    mode, n, min_words, shingles, s_bloom, s_mask = minhash
    rows = np.arange(offsets.size - 1)
    n_chunks = min(rows.size, _CHUNKS)
    for c in numba.prange(n_chunks):
        lo = c * rows.size // n_chunks
        hi = (c + 1) * rows.size // n_chunks
        longest = _longest(offsets, rows, lo, hi)
        word = np.empty(longest + 1, np.uint8)
        hashes = np.empty(longest // 2 + 2, np.uint64)
        prefix = np.empty(longest // 2 + 3, np.uint64)
        for i in range(lo, hi):
            count, n_bytes[i] = _word_hashes(data, offsets[i], offsets[i + 1], raw, classes, word, hashes)
            n_words[i] = count
            if count < 0:
                continue
            if table.size:
                fill_prefix(hashes, count, prefix)
                hits[i] = count_hits(hashes, prefix, count, ngram, powers, table, t_bloom, t_mask, starts)
            if mode == MINHASH_ALL:
                signed[i] = count >= min_words
            elif mode == MINHASH_SHARED:
                signed[i] = count >= min_words and _shares_shingle(hashes, count, n, shingles, s_bloom, s_mask)


@numba.njit(parallel=True, cache=True)
def _sign(data, offsets, raw, rows, dest, classes, n, perm_a, perm_b, out):
    """MinHash signatures (word ``n``-gram shingles, xxh64: the default settings) of texts ``rows`` (raw, or already
    normalized) into ``out[dest[k]]``, from the same word hashes as the scan."""
    n_chunks = min(rows.size, _CHUNKS)
    for c in numba.prange(n_chunks):
        lo = c * rows.size // n_chunks
        hi = (c + 1) * rows.size // n_chunks
        longest = _longest(offsets, rows, lo, hi)
        word = np.empty(longest + 1, np.uint8)
        hashes = np.empty(longest // 2 + 2, np.uint64)
        for k in range(lo, hi):
            i = rows[k]
            count, _ = _word_hashes(data, offsets[i], offsets[i + 1], raw, classes, word, hashes)
            word_hashes_signature(hashes, count, n, perm_a, perm_b, out, dest[k])


@numba.njit(cache=True)
def _eval_shingles(data, offsets, n, fill, out):
    """The word ``n``-gram shingle hashes of every normalized text (count pass, then ``fill``)."""
    total = 0
    for i in range(offsets.size - 1):
        hashes = np.empty((offsets[i + 1] - offsets[i]) // 2 + 2, np.uint64)
        count = _normalized_word_hashes(data, offsets[i], offsets[i + 1], hashes)
        if count == 0:
            continue
        width = count if count < n else n
        for k in range(1 if count < n else count - n + 1):
            if fill:
                out[total] = _shingle_hash(hashes, k, width)
            total += 1
    return total


@numba.njit(parallel=True, cache=True)
def _normalize_rows(data, offsets, other_data, other_offsets, other_of, rows, classes, out, out_offsets):
    """Normalized text of messages ``rows`` into ``out[out_offsets[k]:out_offsets[k + 1]]``: pure-ASCII ones from
    the raw text, the others (``other_of[i] >= 0``) copied from their polars normalization."""
    for k in numba.prange(rows.size):
        i = rows[k]
        j = other_of[i]
        if j < 0:
            normalize_ascii_row(data, offsets[i], offsets[i + 1], classes, out, out_offsets[k])
        else:
            out[out_offsets[k] : out_offsets[k + 1]] = other_data[other_offsets[j] : other_offsets[j + 1]]


@numba.njit(cache=True)
def _fmix64_all(values):
    """fmix64 of every value (a bloom filter wants well-mixed 64-bit keys)."""
    out = np.empty(values.size, np.uint64)
    for k in range(values.size):
        out[k] = fmix64(values[k])
    return out


# --------------------------------------------------------------------------------------------------------
# the eval side's shingle set, the messages, and their normalized subsets


def eval_shingle_set(data: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.uint64]:
    """(sorted distinct word ``n``-gram shingle hashes, bloom filter, mask) of normalized texts."""
    empty = np.empty(0, np.uint64)
    total = _eval_shingles(data, offsets, n, False, empty)
    out = np.empty(total, np.uint64)
    _eval_shingles(data, offsets, n, True, out)
    shingles = np.unique(out)
    bloom, mask = bloom_filter(_fmix64_all(shingles))
    return shingles, bloom, mask


@dataclass
class MessageTexts:
    """The raw UTF-8 text of the messages (``data``/``offsets``), the polars normalization of those with a non-ASCII
    byte (``other_of[i]``: their position in ``other_data``/``other_offsets``, -1 for pure-ASCII ones), and the
    length of every normalized text (``n_bytes``)."""

    data: np.ndarray
    offsets: np.ndarray
    other_of: np.ndarray
    other_data: np.ndarray
    other_offsets: np.ndarray
    n_bytes: np.ndarray

    def normalized_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The normalized texts of messages ``rows`` (as :func:`assets.common.text.normalize`), as one UTF-8 buffer
        and offsets."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out_offsets = np.zeros(rows.size + 1, np.int64)
        np.cumsum(self.n_bytes[rows], out=out_offsets[1:])
        out = np.empty(int(out_offsets[-1]), np.uint8)
        if rows.size:
            _normalize_rows(self.data, self.offsets, self.other_data, self.other_offsets, self.other_of, rows,
                            ASCII_CLASSES, out, out_offsets)
        return out, out_offsets

    def signatures(self, rows: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
        """(rows, num_perm) MinHash signatures of messages ``rows``, as
        :func:`assets.common.text.minhash.signatures.signatures_from_normalized` of their normalized texts."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if cfg.unit != "word" or cfg.hash != "xxh64":
            return signatures_from_buffer(*self.normalized_rows(rows), cfg)
        perm_a, perm_b = (np.ascontiguousarray(p) for p in cfg.permutations())
        out = np.empty((rows.size, cfg.num_perm), np.uint32)
        other = self.other_of[rows]
        for raw, data, offsets, which in ((True, self.data, self.offsets, other < 0),
                                          (False, self.other_data, self.other_offsets, other >= 0)):
            dest = np.flatnonzero(which).astype(np.int64)
            if dest.size:
                texts = rows[dest] if raw else other[dest]
                _sign(data, offsets, raw, texts, dest, ASCII_CLASSES, cfg.ngram, perm_a, perm_b, out)
        return out


def as_series(data: np.ndarray, offsets: np.ndarray) -> pl.Series:
    """A Utf8 series of the texts of a UTF-8 buffer and its offsets."""
    array = pa.LargeStringArray.from_buffers(offsets.size - 1, pa.py_buffer(offsets), pa.py_buffer(data))
    return pl.Series(array, dtype=pl.Utf8)


@dataclass
class Scan:
    """What :func:`scan` found per message: ``n_words`` (normalized), ``hits`` (n-gram probe hits) and ``signed``
    (the MinHash detector must compute its signature)."""

    texts: MessageTexts
    n_words: np.ndarray
    hits: np.ndarray
    signed: np.ndarray


def scan(content: pl.Series, probe: tuple, minhash: tuple) -> Scan:
    """Scan every message of ``content`` (raw text); ``probe`` and ``minhash`` as in :func:`_scan`. Messages with a
    non-ASCII byte are normalized by polars, then scanned."""
    raw = content.fill_null("").cast(pl.Utf8).rechunk()
    data, offsets = utf8_view(raw)
    n_words, n_bytes, hits, signed = _scan_all(data, offsets, True, probe, minhash)
    others = np.flatnonzero(n_words < 0).astype(np.int64)
    other_data, other_offsets = utf8_buffer(normalize(raw.gather(others)))
    if others.size:
        found = _scan_all(other_data, other_offsets, False, probe, minhash)
        n_words[others], n_bytes[others], hits[others], signed[others] = found
    other_of = np.full(n_words.size, -1, np.int64)
    other_of[others] = np.arange(others.size)
    return Scan(MessageTexts(data, offsets, other_of, other_data, other_offsets, n_bytes), n_words, hits, signed)


def _scan_all(
    data: np.ndarray, offsets: np.ndarray, raw: bool, probe: tuple, minhash: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n_words, n_bytes, hits, signed) of every text of ``data``/``offsets`` (see :func:`_scan`)."""
    n = offsets.size - 1
    n_words, n_bytes, hits, signed = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
                                      np.zeros(n, np.bool_))
    if n:
        _scan(data, offsets, raw, ASCII_CLASSES, probe, minhash, n_words, n_bytes, hits, signed)
    return n_words, n_bytes, hits, signed
