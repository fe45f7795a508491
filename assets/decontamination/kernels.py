"""Numba kernels of the n-gram detector: word hashes -> polynomial prefix -> O(1) hash of any window of L
words; eval windows, probing messages' windows against the sorted eval table (behind a bloom filter), and
byte-for-byte checks of windows."""

from __future__ import annotations

import numba
import numpy as np

from assets.common.text.normalize import fmix64, token_spans, xxh64

_U64 = np.uint64
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial rolling hash over word hashes
_LEN_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


@numba.njit(cache=True)
def _text_prefix(data, offsets, i):
    """(prefix, words) of text ``i`` = data[offsets[i]:offsets[i + 1]]: its word count and the prefix hashes
    prefix[t+1] = prefix[t] * BASE + xxh64(word t)."""
    start = offsets[i]
    end = offsets[i + 1]
    spans = np.empty(end - start + 2, np.int64)
    ends = np.empty(end - start + 2, np.int64)
    prefix = np.empty(end - start + 3, np.uint64)
    words = token_spans(data, start, end, spans, ends)
    prefix[0] = _U64(0)
    for t in range(words):
        prefix[t + 1] = prefix[t] * _BASE + xxh64(data, spans[t], ends[t], _U64(0))
    return prefix, words


@numba.njit(inline="always")
def bloom_hit(bloom, mask, h):
    """Whether the 64-bit hash ``h`` may be in the filter of :func:`bloom_filter` (False: surely not)."""
    bits = (_U64(1) << ((h >> _U64(40)) & _U64(63))) | (_U64(1) << ((h >> _U64(46)) & _U64(63)))
    bits |= _U64(1) << ((h >> _U64(52)) & _U64(63))
    return (bloom[h & mask] & bits) == bits


@numba.njit(inline="always")
def window_hash(prefix, powers, pos, length):
    """Hash of words [pos, pos + length) from the prefix hashes of a text (see :func:`fill_prefix`)."""
    return fmix64(prefix[pos + length] - prefix[pos] * powers[length] + _U64(length) * _LEN_MIX)


@numba.njit(inline="always")
def fill_prefix(word_hashes, count, prefix):
    """prefix[t+1] = prefix[t] * BASE + word_hashes[t] for the ``count`` words of a text."""
    prefix[0] = _U64(0)
    for t in range(count):
        prefix[t + 1] = prefix[t] * _BASE + word_hashes[t]


@numba.njit(inline="always")
def _in_table(table, bloom, mask, h):
    if bloom_hit(bloom, mask, h):
        k = np.searchsorted(table, h)
        return k < table.size and table[k] == h
    return False


@numba.njit(inline="always")
def count_hits(word_hashes, prefix, words, ngram, powers, table, bloom, mask, starts):
    """Number of windows of a text of ``words`` words (hashes ``word_hashes``, prefix hashes ``prefix``) whose
    hash is in the sorted ``table``: every ``ngram``-word window, and the shorter windows that begin with the first
    word of a short eval text of their length (``starts``, see :func:`short_starts`); a shorter window beginning
    with another word cannot be one of those texts (only a hash collision, which the exact steps reject, could
    count it), so most positions probe one window, not one per length."""
    first, ptr, first_lengths, first_bloom, first_mask = starts
    hits = 0
    for pos in range(words):
        if pos + ngram <= words and _in_table(table, bloom, mask, window_hash(prefix, powers, pos, ngram)):
            hits += 1
        if first.size and bloom_hit(first_bloom, first_mask, word_hashes[pos]):
            j = np.searchsorted(first, word_hashes[pos])
            if j < first.size and first[j] == word_hashes[pos]:
                for t in range(ptr[j], ptr[j + 1]):
                    length = first_lengths[t]
                    if pos + length <= words and _in_table(table, bloom, mask,
                                                           window_hash(prefix, powers, pos, length)):
                        hits += 1
    return hits


@numba.njit(cache=True)
def first_word_hashes(data, offsets):
    """xxh64 of the first word of every normalized text (0 for an empty text)."""
    out = np.zeros(offsets.size - 1, np.uint64)
    for i in range(offsets.size - 1):
        end = offsets[i]
        while end < offsets[i + 1] and data[end] != 0x20:
            end += 1
        if end > offsets[i]:
            out[i] = xxh64(data, offsets[i], end, _U64(0))
    return out


def short_starts(first: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """The look-up :func:`count_hits` takes from the short eval texts' first-word hashes and word counts: (sorted
    distinct first-word hashes, offsets into the lengths, the distinct lengths of each, bloom filter, mask)."""
    pairs = np.unique(np.stack([first.astype(np.uint64), lengths.astype(np.uint64)]), axis=1)
    words, counts = np.unique(pairs[0], return_counts=True)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    bloom, mask = bloom_filter(words)
    return words, ptr, pairs[1].astype(np.int64), bloom, mask


@numba.njit(cache=True)
def base_powers(max_len):
    """``BASE ** k`` for k in 0..max_len (uint64, wrapping): the weights of the rolling window hash."""
    out = np.empty(max_len + 1, np.uint64)
    out[0] = _U64(1)
    for k in range(max_len):
        out[k + 1] = out[k] * _BASE
    return out


@numba.njit(cache=True)
def eval_windows(data, offsets, n, min_words, powers, fill, out_hash, out_item, out_pos, n_words):
    """Windows of every eval text: all n-grams, or the whole text when min_words <= words < n."""
    count = 0
    for i in range(offsets.size - 1):
        prefix, words = _text_prefix(data, offsets, i)
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
                out_hash[count] = window_hash(prefix, powers, pos, length)
                out_item[count] = i
                out_pos[count] = pos
            count += 1
    return count


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
        prefix, words = _text_prefix(data, offsets, i)
        c = starts[d] if fill else 0
        for li in range(lengths.size):
            length = lengths[li]
            for pos in range(words - length + 1):
                h = window_hash(prefix, powers, pos, length)
                if bloom_hit(bloom, mask, h):
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
def window_bytes(data, offsets, text, pos, length):
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
def same_bytes(a, a_start, a_end, b, b_start, b_end):
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


def bloom_filter(table: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    """A blocked bloom filter over the well-mixed 64-bit hashes ``table``: the low bits of a hash pick one uint64
    word, three 6-bit fields of its high bits set three bits in it (>= 16 bits per entry, ~0.5% false positives);
    most windows of a message skip the binary search at the cost of one memory access."""
    n_words = 1 << max(10, int(np.ceil(np.log2(max(table.size, 1) * 16 / 64))))
    words = np.zeros(n_words, dtype=np.uint64)
    hashes = np.asarray(table, dtype=np.uint64)
    bits = np.zeros(hashes.size, dtype=np.uint64)
    for shift in (40, 46, 52):
        bits |= np.uint64(1) << ((hashes >> np.uint64(shift)) & np.uint64(63))
    np.bitwise_or.at(words, (hashes & np.uint64(n_words - 1)).astype(np.int64), bits)
    return words, np.uint64(n_words - 1)


def probe_hits(
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
