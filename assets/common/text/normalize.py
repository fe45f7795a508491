"""Text normalization, shingling and the numba hash primitives shared by dedup and decontamination.

Everything here is deterministic and independent of library versions: the hashes are implemented in this
file (XXH64 and SHA-1 in numba), never taken from ``hash()`` or ``polars.Series.hash`` (whose values may
change between releases), because LSH band hashes are persisted in indexes that must stay valid.

Normalization (:func:`normalize_expr`), in order: Unicode NFKC, lowercase, delete punctuation (Unicode
category ``P``; symbols such as ``+ = $`` are kept), collapse every whitespace run to one space, strip. After
it, words are exactly the ``" "``-separated pieces of the string, so the numba kernels split on the byte 0x20.

Shingles of a normalized text (:func:`shingles` is the pure-Python reference the kernels reproduce):

* ``unit="word"``: every run of ``n`` consecutive words joined by single spaces;
* ``unit="char"``: every run of ``n`` consecutive characters (code points, spaces included);
* a non-empty text with fewer than ``n`` units is one shingle, the whole text; an empty text has none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import polars as pl

NORMALIZATION_VERSION = 1  # bump when normalize_expr changes: persisted indexes record it

_PUNCTUATION = r"\p{P}+"
# Any whitespace run other than a single " " (runs of 2+, or one tab/newline/NBSP/...). Replacing only these
# is ~8x faster than rewriting every single space with r"\s+" and gives the same result.
_WHITESPACE = r"\s\s+|[^\S ]"
_NON_ASCII = r"[^\x00-\x7F]"


def _nfkc(series: pl.Series) -> pl.Series:
    """NFKC of a Utf8 series, run only on rows with a non-ASCII character (NFKC is the identity on ASCII
    and polars' implementation is the slowest step of normalization)."""
    rows = series.str.contains(_NON_ASCII).fill_null(False).arg_true()
    if rows.len() == 0:
        return series
    return series.scatter(rows, series.gather(rows).str.normalize("NFKC"))


def normalize_expr(expr: pl.Expr | str) -> pl.Expr:
    """Polars expression normalizing a Utf8 column (nulls become empty strings)."""
    if isinstance(expr, str):
        expr = pl.col(expr)
    return (
        expr.cast(pl.Utf8)
        .fill_null("")
        .map_batches(_nfkc, return_dtype=pl.Utf8, is_elementwise=True)
        .str.to_lowercase()
        .str.replace_all(_PUNCTUATION, "")
        .str.replace_all(_WHITESPACE, " ")
        .str.strip_chars(" ")
    )


def normalize(texts: pl.Series | Sequence[str]) -> pl.Series:
    """Normalize a sequence of texts (see module docstring)."""
    series = texts if isinstance(texts, pl.Series) else pl.Series("text", list(texts), dtype=pl.Utf8)
    return series.to_frame("text").select(normalize_expr("text")).to_series()


# What normalize_expr does to ASCII bytes: 0 keep (lowercased), 1 delete (Unicode category P), 2 whitespace
# (White_Space: runs collapse to one space); 3 marks bytes >= 0x80 (not ASCII: the row goes to polars).
ASCII_CLASSES = np.zeros(256, np.uint8)
ASCII_CLASSES[[ord(c) for c in "!\"#%&'()*,-./:;?@[\\]_{}"]] = 1
ASCII_CLASSES[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20]] = 2
ASCII_CLASSES[0x80:] = 3
ASCII_CLASSES.flags.writeable = False


@numba.njit(inline="always")
def normalize_ascii_row(data, start, end, classes, out, pos):
    """Write the normalization of ``data[start:end]`` (see :data:`ASCII_CLASSES`) to ``out`` from ``pos`` on;
    return its length, or -1 if the row has a non-ASCII byte (left to polars; ``out`` then holds garbage)."""
    begin = pos
    pending_space = False
    for k in range(start, end):
        byte = data[k]
        kind = classes[byte]
        if kind == 0:
            if pending_space:
                out[pos] = 0x20
                pos += 1
                pending_space = False
            out[pos] = byte + 32 if 0x41 <= byte <= 0x5A else byte
            pos += 1
        elif kind == 2:
            pending_space = pos > begin
        elif kind == 3:
            return -1
    return pos - begin


@numba.njit(parallel=True, cache=True)
def _normalize_ascii_kernel(data, offsets, classes, out, out_len):
    """Normalize every pure-ASCII row of ``data`` into ``out`` at the row's own offset (a normalized row is never
    longer); ``out_len[i]`` is -1 for a row with a non-ASCII byte."""
    for i in numba.prange(offsets.size - 1):
        out_len[i] = normalize_ascii_row(data, offsets[i], offsets[i + 1], classes, out, offsets[i])


def utf8_view(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`utf8_buffer`, without copying: a read-only view of arrow's data buffer (kept alive by the
    array) and the offsets into it (not rebased)."""
    series = texts.fill_null("").cast(pl.Utf8).rechunk()
    if series.len() == 0:
        return np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)
    arrow = series.to_arrow(compat_level=pl.CompatLevel.oldest())
    if hasattr(arrow, "combine_chunks"):
        arrow = arrow.combine_chunks()
    _validity, offsets_buf, data_buf = arrow.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arrow.offset : arrow.offset + len(arrow) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets


def normalized_spans(texts: pl.Series | Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normalized texts (see :func:`normalize`) as one UTF-8 buffer and each row's ``[start, end)`` in it, fast:
    pure-ASCII rows (where NFKC is the identity and the Unicode rules reduce to byte classes) are normalized by a
    numba kernel in one pass, the other rows by :func:`normalize_expr`. Rows are not contiguous in the buffer."""
    raw = texts if isinstance(texts, pl.Series) else pl.Series("text", list(texts), dtype=pl.Utf8)
    data, offsets = utf8_view(raw)
    out = np.empty(data.size, np.uint8)
    lengths = np.empty(offsets.size - 1, np.int64)
    if lengths.size:
        _normalize_ascii_kernel(data, offsets, ASCII_CLASSES, out, lengths)
    starts = offsets[:-1].copy()
    others = np.flatnonzero(lengths < 0)
    if others.size:
        # the polars-normalized rows go after the ASCII output
        other_data, other_offsets = utf8_buffer(normalize(raw.gather(others)))
        out = np.concatenate([out, other_data])
        starts[others] = data.size + other_offsets[:-1]
        lengths[others] = np.diff(other_offsets)
    return out, starts, starts + lengths


def shingles(normalized: str, unit: str, n: int) -> list[str]:
    """The shingles of an already-normalized text, in order (duplicates kept). Reference implementation."""
    if not normalized:
        return []
    if unit == "word":
        words = normalized.split(" ")
        if len(words) < n:
            return [normalized]
        return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if unit == "char":
        if len(normalized) < n:
            return [normalized]
        return [normalized[i : i + n] for i in range(len(normalized) - n + 1)]
    raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")


def utf8_buffer(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated UTF-8 bytes (uint8) and int64 offsets (len + 1) of a Utf8 series; nulls are empty."""
    series = texts.fill_null("").cast(pl.Utf8).rechunk()
    if series.len() == 0:
        return np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)
    arrow = series.to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: offsets + data buffers
    if hasattr(arrow, "combine_chunks"):
        arrow = arrow.combine_chunks()
    _validity, offsets_buf, data_buf = arrow.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arrow.offset : arrow.offset + len(arrow) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    # Rebase so offsets[0] == 0 and the buffer is owned by us (arrow's may be freed with the series).
    start, end = int(offsets[0]), int(offsets[-1])
    return data[start:end].copy(), (offsets - start).astype(np.int64, copy=True)


# --------------------------------------------------------------------------------------------------------
# numba hash primitives (all arithmetic in uint64; constants are typed so numba never promotes to float)

_U64 = np.uint64
_M32 = np.uint64(0xFFFFFFFF)
_P1 = np.uint64(11400714785074694791)
_P2 = np.uint64(14029467366897019727)
_P3 = np.uint64(1609587929392839161)
_P4 = np.uint64(9650029242287828579)
_P5 = np.uint64(2870177450012600261)
_S1, _S7, _S11, _S12, _S18, _S23, _S27, _S31 = (np.uint64(k) for k in (1, 7, 11, 12, 18, 23, 27, 31))
_S29, _S32, _S33 = np.uint64(29), np.uint64(32), np.uint64(33)
_S8, _S16, _S24 = np.uint64(8), np.uint64(16), np.uint64(24)

HASH_XXH64 = 0
HASH_SHA1 = 1


@numba.njit(inline="always")
def _rotl64(x, r):
    return (x << r) | (x >> (_U64(64) - r))


@numba.njit(inline="always")
def _read64(data, i):
    v = _U64(0)
    for k in range(8):
        v |= _U64(data[i + k]) << _U64(8 * k)
    return v


@numba.njit(inline="always")
def _read32(data, i):
    return (
        _U64(data[i]) | (_U64(data[i + 1]) << _S8) | (_U64(data[i + 2]) << _S16) | (_U64(data[i + 3]) << _S24)
    )


@numba.njit(inline="always")
def _xxh_round(acc, lane):
    acc = acc + lane * _P2
    acc = _rotl64(acc, _S31)
    return acc * _P1


@numba.njit(inline="always")
def _xxh_merge(acc, val):
    acc = acc ^ _xxh_round(_U64(0), val)
    return acc * _P1 + _P4


@numba.njit(cache=True)
def xxh64(data, start, end, seed):
    """XXH64 of ``data[start:end]`` (uint8 array) with a uint64 seed; equals ``xxhash.xxh64_intdigest``."""
    seed = _U64(seed)
    length = end - start
    i = start
    if length >= 32:
        v1 = seed + _P1 + _P2
        v2 = seed + _P2
        v3 = seed
        v4 = seed - _P1
        limit = end - 32
        while i <= limit:
            v1 = _xxh_round(v1, _read64(data, i))
            v2 = _xxh_round(v2, _read64(data, i + 8))
            v3 = _xxh_round(v3, _read64(data, i + 16))
            v4 = _xxh_round(v4, _read64(data, i + 24))
            i += 32
        h = _rotl64(v1, _S1) + _rotl64(v2, _S7) + _rotl64(v3, _S12) + _rotl64(v4, _S18)
        h = _xxh_merge(h, v1)
        h = _xxh_merge(h, v2)
        h = _xxh_merge(h, v3)
        h = _xxh_merge(h, v4)
    else:
        h = seed + _P5
    h = h + _U64(length)
    while i + 8 <= end:
        h = h ^ _xxh_round(_U64(0), _read64(data, i))
        h = _rotl64(h, _S27) * _P1 + _P4
        i += 8
    if i + 4 <= end:
        h = h ^ (_read32(data, i) * _P1)
        h = _rotl64(h, _S23) * _P2 + _P3
        i += 4
    while i < end:
        h = h ^ (_U64(data[i]) * _P5)
        h = _rotl64(h, _S11) * _P1
        i += 1
    return _avalanche(h)


@numba.njit(inline="always")
def _avalanche(h):
    """XXH64's final avalanche."""
    h = h ^ (h >> _S33)
    h = h * _P2
    h = h ^ (h >> _S29)
    h = h * _P3
    return h ^ (h >> _S32)


@numba.njit(inline="always")
def hash_sequence(values, start, count):
    """64-bit hash of ``values[start:start+count]`` (uint64 word hashes): XXH64's 8-byte-lane tail steps
    over the values, then its avalanche. Hashing each word once and combining is cheaper than re-hashing
    the bytes of every overlapping n-gram."""
    h = _P5 + _U64(count)
    for k in range(start, start + count):
        h = h ^ _xxh_round(_U64(0), values[k])
        h = _rotl64(h, _S27) * _P1 + _P4
    return _avalanche(h)


@numba.njit(inline="always")
def _rotl32(x, r):
    return ((x << _U64(r)) | (x >> _U64(32 - r))) & _M32


@numba.njit(cache=True)
def _padded_byte(data, start, length, total, i):
    """Byte ``i`` of the SHA-1 padded message of ``data[start:start+length]`` (``total`` padded bytes)."""
    if i < length:
        return _U64(data[start + i])
    if i == length:
        return _U64(0x80)
    if i >= total - 8:
        bitlen = _U64(length) * _U64(8)
        shift = _U64(8 * (total - 1 - i))
        return (bitlen >> shift) & _U64(0xFF)
    return _U64(0)


@numba.njit(cache=True)
def _sha1_schedule(data, start, length, total, block, w):
    """The SHA-1 message schedule ``w[0:80]`` of the 64-byte ``block`` of the padded message."""
    if block + 64 <= length:  # fast path: the whole block is message bytes
        for t in range(16):
            j = start + block + 4 * t
            w[t] = (
                (_U64(data[j]) << _S24)
                | (_U64(data[j + 1]) << _S16)
                | (_U64(data[j + 2]) << _S8)
                | _U64(data[j + 3])
            )
    else:
        for t in range(16):
            j = block + 4 * t
            w[t] = (
                (_padded_byte(data, start, length, total, j) << _S24)
                | (_padded_byte(data, start, length, total, j + 1) << _S16)
                | (_padded_byte(data, start, length, total, j + 2) << _S8)
                | _padded_byte(data, start, length, total, j + 3)
            )
    for t in range(16, 80):
        w[t] = _rotl32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)


@numba.njit(cache=True)
def _sha1_compress(w, h0, h1, h2, h3, h4):
    """The 80 SHA-1 rounds over a scheduled block ``w``: the chaining values (h0..h4) after it."""
    a, b, c, d, e = h0, h1, h2, h3, h4
    for t in range(80):
        if t < 20:
            f = (b & c) | ((~b & _M32) & d)
            k = _U64(0x5A827999)
        elif t < 40:
            f = b ^ c ^ d
            k = _U64(0x6ED9EBA1)
        elif t < 60:
            f = (b & c) | (b & d) | (c & d)
            k = _U64(0x8F1BBCDC)
        else:
            f = b ^ c ^ d
            k = _U64(0xCA62C1D6)
        tmp = (_rotl32(a, 5) + f + e + k + w[t]) & _M32
        e = d
        d = c
        c = _rotl32(b, 30)
        b = a
        a = tmp
    return (h0 + a) & _M32, (h1 + b) & _M32, (h2 + c) & _M32, (h3 + d) & _M32, (h4 + e) & _M32


@numba.njit(cache=True)
def sha1_hash32(data, start, end, w):
    """``struct.unpack('<I', sha1(data[start:end]).digest()[:4])`` (datasketch's ``sha1_hash32``).

    ``w`` is a scratch uint64 array of length 80 owned by the caller.
    """
    length = end - start
    total = ((length + 8) // 64 + 1) * 64
    h0 = _U64(0x67452301)
    h1 = _U64(0xEFCDAB89)
    h2 = _U64(0x98BADCFE)
    h3 = _U64(0x10325476)
    h4 = _U64(0xC3D2E1F0)
    for block in range(0, total, 64):
        _sha1_schedule(data, start, length, total, block, w)
        h0, h1, h2, h3, h4 = _sha1_compress(w, h0, h1, h2, h3, h4)
    # digest[:4] is h0 big-endian; reading it little-endian byte-swaps it.
    return (
        ((h0 & _U64(0xFF)) << _S24)
        | (((h0 >> _S8) & _U64(0xFF)) << _S16)
        | (((h0 >> _S16) & _U64(0xFF)) << _S8)
        | (h0 >> _S24)
    )


@numba.njit(inline="always")
def fmix32(h):
    """MurmurHash3's 32-bit finalizer (datasketch pre-mixes every input hash with it)."""
    h = h ^ (h >> _S16)
    h = (h * _U64(0x85EBCA6B)) & _M32
    h = h ^ (h >> _U64(13))
    h = (h * _U64(0xC2B2AE35)) & _M32
    return h ^ (h >> _S16)


@numba.njit(inline="always")
def fmix64(h):
    h = h ^ (h >> _S33)
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _S33)
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _S33)


@numba.njit(cache=True)
def token_spans(data, start, end, starts, ends):
    """Fill ``starts``/``ends`` with the byte spans of the space-separated words of ``data[start:end]``.

    Returns the number of words (0 for an empty text). Arrays must hold ``(end - start + 1) // 2 + 1``.
    """
    if end <= start:
        return 0
    count = 0
    tok = start
    for i in range(start, end):
        if data[i] == 0x20:
            starts[count] = tok
            ends[count] = i
            count += 1
            tok = i + 1
    starts[count] = tok
    ends[count] = end
    return count + 1


@numba.njit(cache=True)
def char_starts(data, start, end, out):
    """Fill ``out`` with the byte offset of every code point of ``data[start:end]`` followed by ``end``.

    Returns the number of code points. ``out`` must hold ``end - start + 1``.
    """
    count = 0
    for i in range(start, end):
        if (data[i] & 0xC0) != 0x80:
            out[count] = i
            count += 1
    out[count] = end
    return count


def xxh64_bytes(data: bytes, seed: int = 0) -> int:
    """XXH64 of a Python bytes object (via the numba kernel), for tests and debugging."""
    arr = np.frombuffer(data, dtype=np.uint8)
    return int(xxh64(arr, 0, arr.size, np.uint64(seed)))


def sha1_hash32_bytes(data: bytes) -> int:
    """datasketch's ``sha1_hash32`` of a Python bytes object (via the numba kernel)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    return int(sha1_hash32(arr, 0, arr.size, np.zeros(80, dtype=np.uint64)))


@numba.njit(inline="always")
def ascii_word_hashes(data, start, end, classes, word, hashes):
    """xxh64 of every word of the normalization of the raw text ``data[start:end]`` into ``hashes``: (word count,
    normalized length in bytes), or (-1, -1) if the text has a non-ASCII byte (polars normalizes it instead). The
    byte loop is :func:`normalize_ascii_row`'s, each word hashed as it ends instead of written out (inlining that
    function and re-reading its output costs ~30% of a signature kernel's time). Shared by the MinHash signatures
    and the decontamination scan."""
    count = 0
    length = 0
    letters = 0
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
            letters += 1
        elif kind == 2:
            pending_space = length > 0
        elif kind == 3:
            return -1, -1
    if length > 0:
        hashes[count] = xxh64(word, 0, length, _U64(0))
        count += 1
    return count, letters + max(count - 1, 0)
