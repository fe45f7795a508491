"""The fast (numba, ASCII) normalization path must give exactly the bytes of the polars reference."""

import random

import numpy as np
import polars as pl
import pytest

from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.minhash.signatures import compute_signatures, signatures_from_normalized
from assets.common.text.normalize import normalize, normalized_spans, utf8_buffer


def _rows(texts) -> list[bytes]:
    data, starts, ends = normalized_spans(texts)
    return [bytes(data[a:b]) for a, b in zip(starts, ends, strict=True)]


# every ASCII byte, plus non-ASCII characters NFKC / Unicode lowercasing / Unicode punctuation change
ALPHABET = [chr(i) for i in range(128)] + ["é", "Ä", "ﬁ", "\u00a0", "\u2003", "—", "’", "日本", "\u0085", "Ⅳ", "ẞ"]


def _random_texts(n: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    texts: list[str | None] = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]
    # ASCII-only rows dominate real data: make half of them ASCII words with punctuation and whitespace runs
    for i in range(0, n, 2):
        texts[i] = "".join(rng.choice(["Word", "a", "B.", "  ", "\\t", "\n\n", "(x)", "don't", "$5", "-", "_"])
                           for _ in range(rng.randint(0, 12)))
    return texts + [None, "", "   ", "A.B", "...", " Leading and trailing\t", "É"]


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_normalization_equals_polars_reference(seed):
    texts = pl.Series("t", _random_texts(3000, seed), dtype=pl.Utf8)
    ref_data, ref_offsets = utf8_buffer(normalize(texts))
    assert _rows(texts) == [bytes(ref_data[a:b]) for a, b in zip(ref_offsets[:-1], ref_offsets[1:], strict=True)]


def test_fast_normalization_rules_on_ascii():
    rows = _rows(pl.Series(["  Hello,  World!\n\tIt's  $5 + 3 = 8 ", "a - b", "", None]))
    assert rows == [b"hello world its $5 + 3 = 8", b"a b", b"", b""]


def test_signatures_of_raw_texts_equal_those_of_reference_normalization():
    texts = pl.Series("t", _random_texts(500, 2), dtype=pl.Utf8)
    cfg = MinHashConfig(num_perm=64)
    np.testing.assert_array_equal(compute_signatures(texts, cfg), signatures_from_normalized(normalize(texts), cfg))
