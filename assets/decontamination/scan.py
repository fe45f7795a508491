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

from assets.common.text import (
    ASCII_CLASSES,
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
def _raw_word_hashes(data, start, end, classes, word, hashes):
    """xxh64 of every word of the normalization of the raw text ``data[start:end]`` into ``hashes``: the word
    count, or -1 if the text has a non-ASCII byte (polars normalizes it instead). The byte loop is
    :func:`assets.common.text.normalize_ascii_row`'s, each word hashed as it ends."""
    count = 0
    length = 0
    pending_space = False
    for k in range(start, end):
        byte = data[k]
        kind = classes[byte]
        if kind == 0:
            if pending_space:
                hashes[count] = xxh64(word, 0, length, _U64(0))
                count += 1
                length = 0
                pending_space = False
            word[length] = byte + 32 if 0x41 <= byte <= 0x5A else byte
            length += 1
        elif kind == 2:
            pending_space = length > 0
        elif kind == 3:
            return -1
    if length > 0:
        hashes[count] = xxh64(word, 0, length, _U64(0))
        count += 1
    return count


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
def _scan(data, offsets, raw, classes, probe, minhash, n_words, hits, signed):
    """For every text of ``data``/``offsets`` (raw, or already normalized): word count (-1: non-ASCII raw text,
    left to the caller), n-gram probe hits, and whether the MinHash detector must sign it.

    ``probe`` = (lengths, powers, table, bloom, mask); ``minhash`` = (mode, n, min_words, shingles, bloom, mask)."""
    lengths, powers, table, t_bloom, t_mask = probe
    mode, n, min_words, shingles, s_bloom, s_mask = minhash
    texts = offsets.size - 1
    n_chunks = min(texts, _CHUNKS)
    for c in numba.prange(n_chunks):
        lo = c * texts // n_chunks
        hi = (c + 1) * texts // n_chunks
        longest = 0
        for i in range(lo, hi):
            longest = max(longest, offsets[i + 1] - offsets[i])
        word = np.empty(longest + 1, np.uint8)
        hashes = np.empty(longest // 2 + 2, np.uint64)
        prefix = np.empty(longest // 2 + 3, np.uint64)
        for i in range(lo, hi):
            if raw:
                count = _raw_word_hashes(data, offsets[i], offsets[i + 1], classes, word, hashes)
            else:
                count = _normalized_word_hashes(data, offsets[i], offsets[i + 1], hashes)
            n_words[i] = count
            if count < 0:
                continue
            if table.size:
                fill_prefix(hashes, count, prefix)
                hits[i] = count_hits(prefix, count, lengths, powers, table, t_bloom, t_mask)
            if mode == MINHASH_ALL:
                signed[i] = count >= min_words
            elif mode == MINHASH_SHARED:
                signed[i] = count >= min_words and _shares_shingle(hashes, count, n, shingles, s_bloom, s_mask)


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
def _normalize_rows(data, offsets, other_data, other_offsets, other_of, rows, classes, slots, out, lengths):
    """Normalized text of messages ``rows`` into ``out`` from ``slots[k]`` on: pure-ASCII ones from the raw text,
    the others (``other_of[i] >= 0``) copied from their polars normalization."""
    for k in numba.prange(rows.size):
        i = rows[k]
        j = other_of[i]
        if j < 0:
            lengths[k] = normalize_ascii_row(data, offsets[i], offsets[i + 1], classes, out, slots[k])
        else:
            a = other_offsets[j]
            for t in range(other_offsets[j + 1] - a):
                out[slots[k] + t] = other_data[a + t]
            lengths[k] = other_offsets[j + 1] - a


@numba.njit(cache=True)
def _compact(out, slots, lengths, packed, packed_offsets):
    """Copy the spans [slots[k], slots[k] + lengths[k]) of ``out`` one after the other into ``packed``."""
    packed_offsets[0] = 0
    for k in range(slots.size):
        for t in range(lengths[k]):
            packed[packed_offsets[k] + t] = out[slots[k] + t]
        packed_offsets[k + 1] = packed_offsets[k] + lengths[k]


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
    """The raw UTF-8 text of the messages (``data``/``offsets``) and the polars normalization of those with a
    non-ASCII byte (``other_of[i]``: their position in ``other_data``/``other_offsets``, -1 for pure-ASCII ones)."""

    data: np.ndarray
    offsets: np.ndarray
    other_of: np.ndarray
    other_data: np.ndarray
    other_offsets: np.ndarray

    def normalized_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The normalized texts of messages ``rows`` (as :func:`assets.common.text.normalize`), as one UTF-8 buffer
        and offsets."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        other = self.other_of[rows]
        bound = np.where(other < 0, self.offsets[rows + 1] - self.offsets[rows],
                         self.other_offsets[other + 1] - self.other_offsets[np.maximum(other, 0)])
        slots = np.concatenate([[0], np.cumsum(bound)]).astype(np.int64)
        out = np.empty(int(slots[-1]), np.uint8)
        lengths = np.empty(rows.size, np.int64)
        if rows.size:
            _normalize_rows(self.data, self.offsets, self.other_data, self.other_offsets, self.other_of, rows,
                            ASCII_CLASSES, slots, out, lengths)
        packed_offsets = np.empty(rows.size + 1, np.int64)
        packed = np.empty(int(lengths.sum()), np.uint8)
        _compact(out, slots[:-1], lengths, packed, packed_offsets)
        return packed, packed_offsets


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
    n_words, hits, signed = _scan_all(data, offsets, True, probe, minhash)
    others = np.flatnonzero(n_words < 0).astype(np.int64)
    other_data, other_offsets = utf8_buffer(normalize(raw.gather(others)))
    if others.size:
        n_words[others], hits[others], signed[others] = _scan_all(other_data, other_offsets, False, probe, minhash)
    other_of = np.full(n_words.size, -1, np.int64)
    other_of[others] = np.arange(others.size)
    return Scan(MessageTexts(data, offsets, other_of, other_data, other_offsets), n_words, hits, signed)


def _scan_all(
    data: np.ndarray, offsets: np.ndarray, raw: bool, probe: tuple, minhash: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_words, hits, signed) of every text of ``data``/``offsets`` (see :func:`_scan`)."""
    n = offsets.size - 1
    n_words, hits, signed = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.bool_)
    if n:
        _scan(data, offsets, raw, ASCII_CLASSES, probe, minhash, n_words, hits, signed)
    return n_words, hits, signed
