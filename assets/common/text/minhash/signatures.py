"""MinHash signatures of a batch of texts (numba kernels) and their comparison.

See :mod:`assets.common.text.minhash` for the hashing scheme and its datasketch compatibility.
"""

from __future__ import annotations

import numba
import numpy as np
import polars as pl

from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.normalize import (
    ASCII_CLASSES,
    HASH_SHA1,
    HASH_XXH64,
    ascii_word_hashes,
    char_starts,
    fmix32,
    hash_sequence,
    normalize,
    normalized_spans,
    sha1_hash32,
    token_spans,
    utf8_buffer,
    utf8_view,
    xxh64,
)

_U64 = np.uint64
_M32 = np.uint64(0xFFFFFFFF)
_EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document with no shingles (datasketch's init value)
_S32 = np.uint64(32)


# --------------------------------------------------------------------------------------------------------
# numba kernels


@numba.njit(inline="always")
def _add_shingle(sig, h, perm_a, perm_b):
    """Fold one shingle's 32-bit hash ``h`` into the running minima ``sig``."""
    hv = np.uint32(fmix32(h))
    # shingle outer, permutation inner: the uint32 loop over num_perm vectorizes (SIMD mul/add/min)
    for p in range(perm_a.size):
        sig[p] = min(sig[p], np.uint32(perm_a[p] * hv + perm_b[p]))


@numba.njit(inline="always")
def word_hashes_signature(word_hashes, count, n, perm_a, perm_b, out, i):
    """``out[i]`` from the xxh64 hashes of a text's ``count`` words (word shingles): n-grams combine word hashes.
    Also used by the decontamination's scan, which hashes words itself."""
    sig = np.full(perm_a.size, _EMPTY, np.uint32)
    if count:
        width = count if count < n else n
        for k in range(1 if count < n else count - n + 1):
            x = hash_sequence(word_hashes, k, width)
            _add_shingle(sig, (x ^ (x >> _S32)) & _M32, perm_a, perm_b)
    out[i, :] = sig


@numba.njit(parallel=True, cache=True)
def _signature_kernel(data, starts, ends_, char_unit, n, hash_kind, perm_a, perm_b, out):
    for i in numba.prange(starts.size):
        start = starts[i]
        end = ends_[i]
        spans = np.empty(end - start + 2, np.int64)
        ends = np.empty(end - start + 2, np.int64)
        if char_unit:
            count = char_starts(data, start, end, spans)
        else:
            count = token_spans(data, start, end, spans, ends)
        if hash_kind == HASH_XXH64 and not char_unit:
            word_hashes = np.empty(count, np.uint64)
            for t in range(count):
                word_hashes[t] = xxh64(data, spans[t], ends[t], _U64(0))
            word_hashes_signature(word_hashes, count, n, perm_a, perm_b, out, i)
            continue
        sig = np.full(perm_a.size, _EMPTY, np.uint32)
        scratch = np.empty(80, np.uint64)
        for k in range(0 if count == 0 else 1 if count < n else count - n + 1):
            if count < n:
                lo = start
                hi = end
            elif char_unit:
                lo = spans[k]
                hi = spans[k + n]
            else:
                lo = spans[k]
                hi = ends[k + n - 1]
            if hash_kind == HASH_SHA1:
                h = sha1_hash32(data, lo, hi, scratch)
            else:
                x = xxh64(data, lo, hi, _U64(0))
                h = (x ^ (x >> _S32)) & _M32
            _add_shingle(sig, h, perm_a, perm_b)
        out[i, :] = sig


@numba.njit(parallel=True, cache=True)
def _raw_word_signature_kernel(data, offsets, classes, n, perm_a, perm_b, out, ascii_row):
    """Word shingles + xxh64 (the default), straight from raw text: each pure-ASCII row is normalized, split into
    words and its words hashed in one pass (same words, same hashes, same signature as normalizing first); a row
    with a non-ASCII byte is flagged (``ascii_row[i] = 0``) and left to the caller.

    The words are hashed by :func:`assets.common.text.normalize.ascii_word_hashes` as the bytes are read."""
    for i in numba.prange(offsets.size - 1):
        start = offsets[i]
        end = offsets[i + 1]
        word = np.empty(end - start + 1, np.uint8)  # the current word, normalized
        word_hashes = np.empty((end - start) // 2 + 2, np.uint64)
        count, _ = ascii_word_hashes(data, start, end, classes, word, word_hashes)
        ascii_row[i] = 1 if count >= 0 else 0
        if count < 0:
            continue
        word_hashes_signature(word_hashes, count, n, perm_a, perm_b, out, i)


@numba.njit(cache=True)
def equal_counts(sig_a, rows_a, sig_b, rows_b):
    """Number of equal signature values of each pair (``sig_a[rows_a[k]]``, ``sig_b[rows_b[k]]``)."""
    out = np.empty(rows_a.size, np.int64)
    n_perm = sig_a.shape[1]
    for k in range(rows_a.size):
        ra = rows_a[k]
        rb = rows_b[k]
        c = 0
        for p in range(n_perm):
            if sig_a[ra, p] == sig_b[rb, p]:
                c += 1
        out[k] = c
    return out


# --------------------------------------------------------------------------------------------------------
# signatures


def signatures_from_normalized(normalized: pl.Series, cfg: MinHashConfig) -> np.ndarray:
    """(rows, num_perm) uint32 signatures of already-normalized texts."""
    return signatures_from_buffer(*utf8_buffer(normalized), cfg)


def signatures_from_buffer(data: np.ndarray, offsets: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """(rows, num_perm) uint32 signatures of normalized texts given as a UTF-8 buffer and row offsets."""
    return signatures_from_spans(data, offsets[:-1], offsets[1:], cfg)


def signatures_from_spans(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """(rows, num_perm) uint32 signatures of normalized texts: row i is ``data[starts[i]:ends[i]]``."""
    perm_a, perm_b = cfg.permutations()
    out = np.empty((starts.size, cfg.num_perm), dtype=np.uint32)
    if out.shape[0]:
        kind = HASH_SHA1 if cfg.hash == "sha1" else HASH_XXH64
        _signature_kernel(
            data,
            np.ascontiguousarray(starts, dtype=np.int64),
            np.ascontiguousarray(ends, dtype=np.int64),
            cfg.unit == "char",
            cfg.ngram,
            kind,
            np.ascontiguousarray(perm_a),
            np.ascontiguousarray(perm_b),
            out,
        )
    return out


def compute_signatures(texts: pl.Series | list[str], cfg: MinHashConfig) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures of raw texts (normalized here)."""
    series = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.Utf8)
    if cfg.unit != "word" or cfg.hash != "xxh64" or series.len() == 0:
        return signatures_from_spans(*normalized_spans(series), cfg)
    # the default configuration: normalization, words and signatures fused in one kernel for ASCII rows
    data, offsets = utf8_view(series)
    perm_a, perm_b = cfg.permutations()
    out = np.empty((series.len(), cfg.num_perm), dtype=np.uint32)
    ascii_row = np.empty(series.len(), np.uint8)
    _raw_word_signature_kernel(data, offsets, ASCII_CLASSES, cfg.ngram, np.ascontiguousarray(perm_a),
                               np.ascontiguousarray(perm_b), out, ascii_row)
    others = np.flatnonzero(ascii_row == 0)
    if others.size:
        out[others] = signatures_from_normalized(normalize(series.gather(others)), cfg)
    return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature values (datasketch's ``MinHash.jaccard``)."""
    return float(np.count_nonzero(sig_a == sig_b)) / float(sig_a.shape[-1])
