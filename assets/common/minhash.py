"""MinHash-LSH near-duplicate removal over conversation text (no Dagster here).

Pipeline (all vectorized; no per-document or per-shingle Python loop):

1. normalize the text with polars (:func:`assets.common.text.normalize_expr`) and take its UTF-8 buffer;
2. one parallel numba kernel splits every document into shingles (word or char n-grams), hashes each
   shingle (XXH64 by default, or SHA-1 exactly like datasketch) and takes the min over ``num_perm`` affine
   permutations -> a ``(rows, num_perm)`` uint32 signature matrix;
3. the first ``bands * rows`` signature values are cut into bands, each hashed to 64 bits;
4. rows sharing a band hash are candidate pairs; a pair is an edge when its estimated Jaccard (fraction of
   equal signature values) is ``>= threshold``; union-find turns edges into clusters;
5. per cluster the first row by ``order`` (default ``shard, row_index``) is kept, the others are removed
   and carry ``cluster_id``, ``duplicate_of`` and ``similarity``.

Signatures match datasketch (>= 2.0, default ``scheme="affine32"``): the input hash is pre-mixed with the
MurmurHash3 32-bit finalizer and permuted with ``a * h + b mod 2**32``, ``a``/``b`` drawn from
``np.random.RandomState(seed)`` exactly as ``datasketch.MinHash(num_perm, seed)`` draws them. With
``hash="sha1"`` the signature of a document equals ``MinHash(num_perm, seed)`` updated with its shingles'
UTF-8 bytes, value for value. The default ``hash="xxh64"`` only swaps the 32-bit input hash of a shingle:
for char shingles XXH64 of its bytes, for word shingles an XXH64-style combination of the XXH64 of each word
(every word is hashed once), folded to 32 bits. The signature kernel is ~5x faster with it than with SHA-1
and keep/drop decisions agree with datasketch's on > 99.9% of rows (benchmarks/dedup.py).

Incremental use: :class:`LSHIndex` holds the signatures, band hashes and ids of every row kept so far, and
is saved as one ``.npz`` file (no pickles) with an atomic write. ``deduplicate(new_df, cfg, index=idx)``
computes signatures of the new rows only, compares them with each other and with the index (index rows
always win: they were kept earlier) and returns the index extended with the newly kept rows.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import polars as pl

from assets.common.schema import REJECTED_DETAIL, REJECTED_REASON, conversation_text
from assets.common.storage import write_bytes_atomic
from assets.common.text import (
    ASCII_CLASSES,
    HASH_SHA1,
    HASH_XXH64,
    NORMALIZATION_VERSION,
    char_starts,
    fmix32,
    fmix64,
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
_BAND_SEED = np.uint64(2870177450012600261)
_BAND_MUL1 = np.uint64(11400714785074694791)
_BAND_MUL2 = np.uint64(14029467366897019727)
_S31 = np.uint64(31)
_S32 = np.uint64(32)

# A bucket with at most this many rows yields all its pairs; a larger one (e.g. thousands of exact copies)
# yields a star from its first row plus the chain of consecutive rows, so work stays linear.
ALL_PAIRS_BUCKET_SIZE = 64

INDEX_FORMAT_VERSION = 1
REASON_NEAR_DUPLICATE = "near_duplicate"
_POS = "__dedup_pos"


# --------------------------------------------------------------------------------------------------------
# configuration


def _fp_fn_errors(threshold: float, num_perm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """False-positive / false-negative areas of every (b, r) with b * r <= num_perm, in datasketch's order.

    The integrands ``1 - (1 - s**r)**b`` and ``(1 - s**r)**b`` are polynomials of degree b * r <= num_perm,
    so Gauss-Legendre quadrature with ``num_perm // 2 + 1`` nodes integrates them exactly (up to rounding).
    """
    bs = np.concatenate([np.full(num_perm // b, b) for b in range(1, num_perm + 1)]).astype(np.float64)
    rs = np.concatenate([np.arange(1, num_perm // b + 1) for b in range(1, num_perm + 1)]).astype(np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 2)
    s_fp = threshold / 2.0 * (nodes + 1.0)
    s_fn = threshold + (1.0 - threshold) / 2.0 * (nodes + 1.0)
    fp = ((1.0 - (1.0 - s_fp[None, :] ** rs[:, None]) ** bs[:, None]) @ weights) * (threshold / 2.0)
    fn = (((1.0 - s_fn[None, :] ** rs[:, None]) ** bs[:, None]) @ weights) * ((1.0 - threshold) / 2.0)
    return bs, rs, fp, fn


@functools.lru_cache(maxsize=128)
def optimal_param(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false positive + false negative probability mass.

    Same objective and tie-breaking (first minimum, b outer, r inner) as datasketch's ``_optimal_param``.
    """
    bs, rs, fp, fn = _fp_fn_errors(float(threshold), int(num_perm))
    best = int(np.argmin(fp * false_positive_weight + fn * false_negative_weight))
    return int(bs[best]), int(rs[best])


@dataclass(frozen=True)
class MinHashConfig:
    """Parameters of MinHash signatures and LSH banding.

    unit/ngram: shingles are ``ngram`` consecutive words (default 5) or characters.
    num_perm: signature length. threshold: estimated Jaccard at or above which two rows are duplicates.
    seed: permutation seed (``datasketch.MinHash(seed=...)``). hash: ``"xxh64"`` (fast) or ``"sha1"``
    (datasketch's ``sha1_hash32``; bit-identical signatures). bands/rows: LSH banding; ``None`` = chosen by
    :func:`optimal_param` for ``threshold`` with ``weights`` (false positive, false negative).
    """

    unit: str = "word"
    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1
    hash: str = "xxh64"
    weights: tuple[float, float] = (0.5, 0.5)
    bands: int | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.unit not in ("word", "char"):
            raise ValueError(f"unit must be 'word' or 'char', got {self.unit!r}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 2:
            raise ValueError(f"num_perm must be >= 2, got {self.num_perm}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.hash not in ("xxh64", "sha1"):
            raise ValueError(f"hash must be 'xxh64' or 'sha1', got {self.hash!r}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and (
            self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm
        ):
            raise ValueError(
                f"bands * rows must be in [1, num_perm={self.num_perm}], got {self.bands}x{self.rows}"
            )
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))

    @property
    def params(self) -> tuple[int, int]:
        """(bands, rows) used for LSH."""
        if self.bands is not None:
            return self.bands, self.rows
        return optimal_param(self.threshold, self.num_perm, *self.weights)

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) uint32 arrays drawn exactly like datasketch's affine32 ``MinHash._init_permutations``."""
        return _permutations(self.seed, self.num_perm)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "weights": list(self.weights)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MinHashConfig:
        return cls(**{**obj, "weights": tuple(obj["weights"])})


@functools.lru_cache(maxsize=16)
def _permutations(seed: int, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


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
def _word_hashes_signature(word_hashes, count, n, perm_a, perm_b, out, i):
    """``out[i]`` from the xxh64 hashes of a text's ``count`` words (word shingles): n-grams combine word hashes."""
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
            _word_hashes_signature(word_hashes, count, n, perm_a, perm_b, out, i)
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

    The byte loop is :func:`assets.common.text.normalize_ascii_row`'s, with each word hashed as it ends instead of
    written out: inlining that function and re-reading its output costs ~30% of this kernel's time."""
    for i in numba.prange(offsets.size - 1):
        start = offsets[i]
        end = offsets[i + 1]
        word = np.empty(end - start + 1, np.uint8)  # the current word, normalized
        word_hashes = np.empty((end - start) // 2 + 2, np.uint64)
        count = 0
        length = 0
        pending_space = False
        ascii_only = True
        for k in range(start, end):
            byte = data[k]
            kind = classes[byte]
            if kind == 0:
                if pending_space:
                    word_hashes[count] = xxh64(word, 0, length, _U64(0))
                    count += 1
                    length = 0
                    pending_space = False
                word[length] = byte + 32 if 0x41 <= byte <= 0x5A else byte
                length += 1
            elif kind == 2:
                pending_space = length > 0
            elif kind == 3:
                ascii_only = False
                break
        ascii_row[i] = 1 if ascii_only else 0
        if not ascii_only:
            continue
        if length > 0:
            word_hashes[count] = xxh64(word, 0, length, _U64(0))
            count += 1
        _word_hashes_signature(word_hashes, count, n, perm_a, perm_b, out, i)


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


@numba.njit(cache=True)
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True)
def connected_components(n, edge_i, edge_j):
    """Root of every node; the root of a component is its smallest node."""
    parent = np.arange(n)
    for k in range(edge_i.size):
        ri = _find(parent, edge_i[k])
        rj = _find(parent, edge_j[k])
        if ri < rj:
            parent[rj] = ri
        elif rj < ri:
            parent[ri] = rj
    roots = np.empty(n, np.int64)
    for x in range(n):
        roots[x] = _find(parent, x)
    return roots


# --------------------------------------------------------------------------------------------------------
# signatures and bands


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


def band_hashes(signatures: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """(rows, bands) uint64: one hash per LSH band of each signature."""
    n_bands, n_rows = cfg.params
    out = np.empty((signatures.shape[0], n_bands), dtype=np.uint64)
    if out.shape[0]:
        _band_hash_kernel(np.ascontiguousarray(signatures), n_bands, n_rows, out)
    return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature values (datasketch's ``MinHash.jaccard``)."""
    return float(np.count_nonzero(sig_a == sig_b)) / float(sig_a.shape[-1])


def sorted_bands(bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per band: the hashes sorted (stable) and the row of each, as (bands, n) arrays."""
    orders = np.argsort(bands, axis=0, kind="stable").T.copy()
    hashes = np.take_along_axis(bands, orders.T, axis=0).T.copy()
    return hashes, orders


def within_pairs(bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hashes, orders = sorted_bands(bands)
    empty = np.empty(0, np.int64)
    n = _bucket_pairs_kernel(hashes, orders, ALL_PAIRS_BUCKET_SIZE, False, empty, empty)
    out_i, out_j = np.empty(n, np.int64), np.empty(n, np.int64)
    _bucket_pairs_kernel(hashes, orders, ALL_PAIRS_BUCKET_SIZE, True, out_i, out_j)
    return _unique_pairs(out_i, out_j, bands.shape[0])


def _unique_pairs(a: np.ndarray, b: np.ndarray, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    if a.size == 0:
        return a, b
    keys = np.unique(a * np.int64(max(n_b, 1)) + b)
    return keys // max(n_b, 1), keys % max(n_b, 1)


# --------------------------------------------------------------------------------------------------------
# persistent index


@dataclass(eq=False)
class LSHIndex:
    """Signatures, band hashes and ids of every row kept so far (row ``k`` = the ``k``-th kept row)."""

    config: MinHashConfig
    ids: pl.Series
    signatures: np.ndarray
    band_hashes: np.ndarray
    _sorted: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.ids = self.ids.cast(pl.Utf8).alias("id")
        n_bands, _ = self.config.params
        m = self.ids.len()
        if self.signatures.shape != (m, self.config.num_perm) or self.signatures.dtype != np.uint32:
            raise ValueError(
                f"signatures must be uint32 ({m}, {self.config.num_perm}), got "
                f"{self.signatures.dtype} {self.signatures.shape}"
            )
        if self.band_hashes.shape != (m, n_bands) or self.band_hashes.dtype != np.uint64:
            raise ValueError(
                f"band_hashes must be uint64 ({m}, {n_bands}), got "
                f"{self.band_hashes.dtype} {self.band_hashes.shape}"
            )

    @classmethod
    def empty(cls, cfg: MinHashConfig) -> LSHIndex:
        return cls(
            cfg,
            pl.Series("id", [], dtype=pl.Utf8),
            np.empty((0, cfg.num_perm), np.uint32),
            np.empty((0, cfg.params[0]), np.uint64),
        )

    def __len__(self) -> int:
        return self.ids.len()

    def sorted_bands(self) -> tuple[np.ndarray, np.ndarray]:
        """Per band, the sorted band hashes and the index row of each (computed once, cached)."""
        if self._sorted is None:
            self._sorted = sorted_bands(self.band_hashes)
        return self._sorted

    def extended(self, ids: pl.Series, signatures: np.ndarray, bands: np.ndarray) -> LSHIndex:
        """A new index with rows appended (this one is not modified)."""
        return LSHIndex(
            self.config,
            pl.concat([self.ids, ids.cast(pl.Utf8).alias("id")]),
            np.concatenate([self.signatures, signatures]),
            np.concatenate([self.band_hashes, bands]),
        )

    def check_compatible(self, cfg: MinHashConfig) -> None:
        if cfg != self.config or cfg.params != self.config.params:
            raise ValueError(
                f"LSH index was built with {self.config} (bands/rows {self.config.params}); "
                f"cannot use it with {cfg} (bands/rows {cfg.params}). Rebuild the index."
            )

    def save(self, path: str | os.PathLike) -> str:
        """Write the index as one uncompressed ``.npz`` (no object arrays) atomically; return its SHA-256."""
        meta = {
            "format_version": INDEX_FORMAT_VERSION,
            "normalization_version": NORMALIZATION_VERSION,
            "config": self.config.to_json(),
            "params": list(self.config.params),
            "rows": len(self),
        }
        id_data, id_offsets = utf8_buffer(self.ids)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
            signatures=self.signatures,
            band_hashes=self.band_hashes,
            id_data=id_data,
            id_offsets=id_offsets,
        )
        return write_bytes_atomic(buffer.getvalue(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LSHIndex:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no LSH index here (the first deduplication run creates it)")
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
            if meta["format_version"] != INDEX_FORMAT_VERSION:
                raise ValueError(
                    f"{path}: index format {meta['format_version']}, expected {INDEX_FORMAT_VERSION}"
                )
            if meta["normalization_version"] != NORMALIZATION_VERSION:
                raise ValueError(
                    f"{path}: built with text normalization v{meta['normalization_version']}, this code is "
                    f"v{NORMALIZATION_VERSION}; rebuild the index"
                )
            cfg = MinHashConfig.from_json(meta["config"])
            if list(cfg.params) != meta["params"]:
                raise ValueError(f"{path}: stored bands/rows {meta['params']} differ from {cfg.params}")
            ids = _ids_from_buffer(npz["id_data"], npz["id_offsets"])
            return cls(cfg, ids, npz["signatures"], npz["band_hashes"])


def _ids_from_buffer(data: np.ndarray, offsets: np.ndarray) -> pl.Series:
    import pyarrow as pa

    array = pa.LargeStringArray.from_buffers(
        len(offsets) - 1, pa.py_buffer(offsets.astype(np.int64).tobytes()), pa.py_buffer(data.tobytes())
    )
    return pl.Series("id", pl.from_arrow(array), dtype=pl.Utf8)


# --------------------------------------------------------------------------------------------------------
# deduplication


@dataclass
class DedupResult:
    """``kept``/``removed`` keep the input's columns and order; ``removed`` adds ``cluster_id`` (Int64: the
    row number of the kept representative in ``index``, stable across incremental runs), ``duplicate_of``
    (its id), ``similarity`` (estimated Jaccard to it), ``reason`` and ``detail``."""

    kept: pl.DataFrame
    removed: pl.DataFrame
    stats: dict[str, Any]
    index: LSHIndex


def _order_permutation(df: pl.DataFrame, order: tuple[str, ...]) -> np.ndarray:
    """Input positions sorted by ``order`` (ties: input position)."""
    missing = [c for c in order if c not in df.columns]
    if missing:
        raise ValueError(f"order columns {missing} not in the frame (columns: {df.columns})")
    if not order:
        return np.arange(df.height, dtype=np.int64)
    keyed = df.select(list(order)).with_row_index(_POS)
    return keyed.sort([*order, _POS], nulls_last=True)[_POS].to_numpy().astype(np.int64)


def deduplicate(
    df: pl.DataFrame,
    cfg: MinHashConfig | None = None,
    *,
    text: pl.Expr | str | None = None,
    order: tuple[str, ...] | list[str] = ("shard", "row_index"),
    id_column: str = "conversation_id",
    index: LSHIndex | None = None,
) -> DedupResult:
    """Remove near-duplicate rows of ``df``.

    ``text``: expression (or column name) giving each row's text; default :func:`conversation_text`
    (user + assistant turns). ``order``: the first row of each cluster by these columns is kept. ``index``:
    rows kept by earlier runs; they are never removed and win over every new row. The returned
    ``DedupResult.index`` is ``index`` (or an empty one) extended with the rows kept here.
    """
    cfg = cfg or MinHashConfig()
    order = tuple(order)
    if index is None:
        index = LSHIndex.empty(cfg)
    index.check_compatible(cfg)
    if id_column not in df.columns:
        raise ValueError(f"id column {id_column!r} not in the frame (columns: {df.columns})")
    ids = df[id_column].cast(pl.Utf8)
    if ids.null_count():
        raise ValueError(f"{id_column} has {ids.null_count()} null values")
    if ids.n_unique() != ids.len():
        raise ValueError(f"{id_column} is not unique: {ids.filter(ids.is_duplicated()).unique().sort()[:5]}")
    if len(index) and ids.is_in(index.ids.implode()).any():
        clash = ids.filter(ids.is_in(index.ids.implode())).sort()[:5].to_list()
        raise ValueError(f"rows {clash} are already in the LSH index (was this shard deduplicated before?)")

    text_expr = conversation_text() if text is None else (pl.col(text) if isinstance(text, str) else text)
    n = df.height
    m = len(index)
    perm = _order_permutation(df, order)  # rank -> input position
    raw_text = df.select(text_expr.cast(pl.Utf8).fill_null("").alias("text")).to_series().gather(perm)
    sigs = compute_signatures(raw_text, cfg)
    bands = band_hashes(sigs, cfg)

    # new-vs-new pairs (rank space), verified
    wi, wj = within_pairs(bands) if n > 1 else (np.empty(0, np.int64), np.empty(0, np.int64))
    w_counts = equal_counts(sigs, wi, sigs, wj) if wi.size else np.empty(0, np.int64)
    w_ok = w_counts / float(cfg.num_perm) >= cfg.threshold
    # new-vs-index pairs, verified
    co, cn = _cross_pairs(index, bands) if (m and n) else (np.empty(0, np.int64), np.empty(0, np.int64))
    c_counts = equal_counts(index.signatures, co, sigs, cn) if co.size else np.empty(0, np.int64)
    c_ok = c_counts / float(cfg.num_perm) >= cfg.threshold

    roots = connected_components(n, wi[w_ok], wj[w_ok]) if n else np.empty(0, np.int64)
    # a component touching the index is represented by the earliest index row it matched
    anchor = np.full(n, -1, dtype=np.int64)
    if c_ok.any():
        comp = roots[cn[c_ok]]
        old = co[c_ok]
        best = pl.DataFrame({"comp": comp, "old": old}).group_by("comp").agg(pl.col("old").min())
        anchor[best["comp"].to_numpy()] = best["old"].to_numpy()
    root_anchor = anchor[roots] if n else anchor
    is_root = roots == np.arange(n)
    kept_rank = is_root & (root_anchor < 0)
    removed_rank = ~kept_rank

    # index row number of each kept new row, then each removed row's representative
    new_index_row = np.full(n, -1, dtype=np.int64)
    new_index_row[kept_rank] = m + np.arange(int(kept_rank.sum()))
    cluster = np.where(root_anchor >= 0, root_anchor, new_index_row[roots]) if n else roots
    r_rank = np.flatnonzero(removed_rank)
    rep_old = root_anchor[r_rank] >= 0
    sim_counts = np.empty(r_rank.size, np.int64)
    if rep_old.any():
        sim_counts[rep_old] = equal_counts(
            index.signatures, root_anchor[r_rank[rep_old]], sigs, r_rank[rep_old]
        )
    if (~rep_old).any():
        sim_counts[~rep_old] = equal_counts(sigs, roots[r_rank[~rep_old]], sigs, r_rank[~rep_old])

    kept_ids_in_rank = ids.gather(perm[kept_rank])
    new_index = index.extended(kept_ids_in_rank, sigs[kept_rank], bands[kept_rank])
    all_ids = new_index.ids

    # back to input order
    kept_mask = np.zeros(n, dtype=bool)
    kept_mask[perm[kept_rank]] = True
    removed_pos = perm[r_rank]
    info = pl.DataFrame(
        {
            _POS: removed_pos,
            "cluster_id": cluster[r_rank].astype(np.int64),
            "duplicate_of": all_ids.gather(cluster[r_rank]).to_numpy() if r_rank.size else np.empty(0, str),
            "similarity": sim_counts / float(cfg.num_perm),
        },
        schema={_POS: pl.Int64, "cluster_id": pl.Int64, "duplicate_of": pl.Utf8, "similarity": pl.Float64},
    ).sort(_POS)
    removed = (
        df.with_row_index(_POS)
        .with_columns(pl.col(_POS).cast(pl.Int64))
        .join(info, on=_POS, how="inner")
        .sort(_POS)
        .drop(_POS)
        .with_columns(
            pl.lit(REASON_NEAR_DUPLICATE).alias(REJECTED_REASON),
            pl.format(
                "near-duplicate of {} (estimated jaccard {})",
                pl.col("duplicate_of"),
                pl.col("similarity").round(3),
            ).alias(REJECTED_DETAIL),
        )
    )
    kept = df.filter(pl.Series(kept_mask))
    n_bands, n_rows = cfg.params
    stats = {
        "rows_in": n,
        "rows_kept": int(kept_mask.sum()),
        "rows_removed": int(r_rank.size),
        "removed_as_duplicate_of_index": int(rep_old.sum()),
        "clusters": int(np.unique(cluster[r_rank]).size),
        "candidate_pairs": int(wi.size + co.size),
        "verified_pairs": int(w_ok.sum() + c_ok.sum()),
        "signatures_computed": int(sigs.shape[0]),
        "index_rows_before": m,
        "index_rows_after": len(new_index),
        "bands": n_bands,
        "rows_per_band": n_rows,
        "config": cfg.to_json(),
    }
    return DedupResult(kept=kept, removed=removed, stats=stats, index=new_index)


def _cross_pairs(index: LSHIndex, bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index row, new rank) pairs sharing at least one band hash, unique."""
    return cross_candidates(index.sorted_bands(), bands)


def cross_candidates(
    old_sorted: tuple[np.ndarray, np.ndarray], bands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (old row, new row) pairs sharing a band hash. ``old_sorted`` comes from :func:`sorted_bands`
    of the old rows' band hashes, ``bands`` are the new rows' band hashes (same config)."""
    old_hashes, old_orders = old_sorted
    n_bands = bands.shape[1]
    if bands.shape[0] == 0 or old_hashes.shape[1] == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo = np.empty(bands.shape, np.int64)
    hi = np.empty(bands.shape, np.int64)
    for band in range(n_bands):
        lo[:, band] = np.searchsorted(old_hashes[band], bands[:, band], side="left")
        hi[:, band] = np.searchsorted(old_hashes[band], bands[:, band], side="right")
    empty = np.empty(0, np.int64)
    count = _cross_pairs_kernel(lo, hi, old_orders, ALL_PAIRS_BUCKET_SIZE, False, empty, empty)
    out_old, out_new = np.empty(count, np.int64), np.empty(count, np.int64)
    _cross_pairs_kernel(lo, hi, old_orders, ALL_PAIRS_BUCKET_SIZE, True, out_old, out_new)
    return _unique_pairs(out_old, out_new, bands.shape[0])
