"""LSH banding: one 64-bit hash per band of each signature, and the candidate pairs of rows sharing a band
hash, within one set of rows (:func:`within_pairs`) or between an old and a new set (:func:`cross_candidates`).

Candidates are not verified here: callers compare their signatures
(:func:`assets.common.text.minhash.signatures.equal_counts`).
"""

from __future__ import annotations

import numba
import numpy as np

from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.normalize import fmix64

_U64 = np.uint64
_BAND_SEED = np.uint64(2870177450012600261)
_BAND_MUL1 = np.uint64(11400714785074694791)
_BAND_MUL2 = np.uint64(14029467366897019727)
_S31 = np.uint64(31)

# A bucket with at most this many rows yields all its pairs; a larger one (e.g. thousands of exact copies)
# yields a star from its first row plus the chain of consecutive rows, so work stays linear.
ALL_PAIRS_BUCKET_SIZE = 64


# --------------------------------------------------------------------------------------------------------
# numba kernels


@numba.njit(cache=True)  # cheap next to signatures; serial keeps the cold JIT compile short
def _band_hash_kernel(sig, n_bands, n_rows, out):
    for i in range(sig.shape[0]):
        for j in range(n_bands):
            h = _BAND_SEED + _U64(j)
            for k in range(n_rows):
                h = h ^ (_U64(sig[i, j * n_rows + k]) * _BAND_MUL2)
                h = ((h << _S31) | (h >> _U64(33))) * _BAND_MUL1
            out[i, j] = fmix64(h)


@numba.njit(cache=True)
def _bucket_pairs_kernel(sorted_hashes, orders, cap, fill, out_i, out_j):
    """Pairs (i < j) of rows sharing a band hash. ``sorted_hashes``/``orders``: (bands, n), each band sorted
    stably so rows of a bucket come in ascending order. Returns the pair count; writes only when ``fill``."""
    n_bands, n = sorted_hashes.shape
    count = 0
    for band in range(n_bands):
        hs = sorted_hashes[band]
        order = orders[band]
        s = 0
        while s < n:
            e = s + 1
            while e < n and hs[e] == hs[s]:
                e += 1
            size = e - s
            if size > 1:
                if size <= cap:
                    for x in range(s, e):
                        for y in range(x + 1, e):
                            if fill:
                                out_i[count] = order[x]
                                out_j[count] = order[y]
                            count += 1
                else:
                    for y in range(s + 1, e):  # star from the first row
                        if fill:
                            out_i[count] = order[s]
                            out_j[count] = order[y]
                        count += 1
                    for y in range(s + 2, e):  # chain of consecutive rows
                        if fill:
                            out_i[count] = order[y - 1]
                            out_j[count] = order[y]
                        count += 1
            s = e
    return count


@numba.njit(inline="always")
def _lower_bounds(old_hashes, values, base):
    """``base[band]`` = first position of ``old_hashes[band]`` (sorted, all of one length > 0) whose value is >=
    ``values[band]``, for every band at once: each step of the binary searches is branch-free and the bands'
    loads are independent, so they overlap instead of waiting on each other (a search mostly misses)."""
    n_bands = values.size
    for band in range(n_bands):
        base[band] = 0
    n = old_hashes.shape[1]
    while n > 1:
        half = n >> 1
        for band in range(n_bands):
            b = base[band]
            base[band] = b + half if old_hashes[band, b + half] < values[band] else b
        n -= half
    for band in range(n_bands):
        base[band] += 1 if old_hashes[band, base[band]] < values[band] else 0


@numba.njit(inline="always")
def _bucket_end(row, v, start, size):
    """End of the run of ``v`` starting at ``start`` in the sorted ``row`` (a few steps, then a binary search)."""
    end = start
    while end < size and end < start + 8 and row[end] == v:
        end += 1
    if end < start + 8:
        return end
    hi = size
    while end < hi:
        mid = (end + hi) >> 1
        if row[mid] == v:
            end = mid + 1
        else:
            hi = mid
    return end


@numba.njit(parallel=True, cache=True)
def _band_ranges_kernel(old_hashes, bands, lo, hi):
    """``[lo, hi)``: the range of each new row's band hash among the old rows' sorted hashes of that band."""
    n_new, n_bands = bands.shape
    size = old_hashes.shape[1]
    n_chunks = min(n_new, 64)
    for c in numba.prange(n_chunks):
        base = np.empty(n_bands, np.int64)
        for i in range(c * n_new // n_chunks, (c + 1) * n_new // n_chunks):
            _lower_bounds(old_hashes, bands[i], base)
            for band in range(n_bands):
                lo[i, band] = base[band]
                hi[i, band] = _bucket_end(old_hashes[band], bands[i, band], base[band], size)


@numba.njit(cache=True)
def _cross_pairs_kernel(lo, hi, old_orders, cap, fill, out_old, out_new):
    """Pairs (old, new) from per-(new row, band) ranges ``[lo, hi)`` into each band's sorted old rows."""
    n_new, n_bands = lo.shape
    count = 0
    for i in range(n_new):
        for band in range(n_bands):
            stop = min(hi[i, band], lo[i, band] + cap)
            for k in range(lo[i, band], stop):
                if fill:
                    out_old[count] = old_orders[band, k]
                    out_new[count] = i
                count += 1
    return count


# --------------------------------------------------------------------------------------------------------
# band hashes and candidate pairs


def band_hashes(signatures: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """(rows, bands) uint64: one hash per LSH band of each signature."""
    n_bands, n_rows = cfg.params
    out = np.empty((signatures.shape[0], n_bands), dtype=np.uint64)
    if out.shape[0]:
        _band_hash_kernel(np.ascontiguousarray(signatures), n_bands, n_rows, out)
    return out


def sorted_bands(bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per band: the hashes sorted (stable) and the row of each, as (bands, n) arrays."""
    orders = np.argsort(bands, axis=0, kind="stable").T.copy()
    hashes = np.take_along_axis(bands, orders.T, axis=0).T.copy()
    return hashes, orders


def within_pairs(bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique pairs (i < j) of rows sharing a band hash (``bands``: one set's band hashes)."""
    hashes, orders = sorted_bands(bands)
    empty = np.empty(0, np.int64)
    n = _bucket_pairs_kernel(hashes, orders, ALL_PAIRS_BUCKET_SIZE, False, empty, empty)
    out_i, out_j = np.empty(n, np.int64), np.empty(n, np.int64)
    _bucket_pairs_kernel(hashes, orders, ALL_PAIRS_BUCKET_SIZE, True, out_i, out_j)
    return _unique_pairs(out_i, out_j, bands.shape[0])


def cross_candidates(
    old_sorted: tuple[np.ndarray, np.ndarray], bands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (old row, new row) pairs sharing a band hash. ``old_sorted`` comes from :func:`sorted_bands`
    of the old rows' band hashes, ``bands`` are the new rows' band hashes (same config)."""
    old_hashes, old_orders = old_sorted
    if bands.shape[0] == 0 or old_hashes.shape[1] == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo = np.empty(bands.shape, np.int64)
    hi = np.empty(bands.shape, np.int64)
    _band_ranges_kernel(old_hashes, np.ascontiguousarray(bands), lo, hi)
    empty = np.empty(0, np.int64)
    count = _cross_pairs_kernel(lo, hi, old_orders, ALL_PAIRS_BUCKET_SIZE, False, empty, empty)
    out_old, out_new = np.empty(count, np.int64), np.empty(count, np.int64)
    _cross_pairs_kernel(lo, hi, old_orders, ALL_PAIRS_BUCKET_SIZE, True, out_old, out_new)
    return _unique_pairs(out_old, out_new, bands.shape[0])


def _unique_pairs(a: np.ndarray, b: np.ndarray, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    if a.size == 0:
        return a, b
    keys = np.unique(a * np.int64(max(n_b, 1)) + b)
    return keys // max(n_b, 1), keys % max(n_b, 1)
