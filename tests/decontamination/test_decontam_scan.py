"""The fused scan over raw message text (assets/decontamination/scan.py): its word counts, probe hits and
normalized subsets equal the polars normalization's, the MinHash look-up of shared shingles changes no match, and
results do not depend on the number of threads."""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import polars as pl
import pytest

from assets.common.data.schema import MESSAGE
from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.minhash.lsh import _band_ranges_kernel, sorted_bands
from assets.common.text.normalize import normalize, utf8_buffer
from assets.decontamination.config import DecontamConfig
from assets.decontamination.index import EvalIndex
from assets.decontamination.kernels import probe_hits
from assets.decontamination.matching import find_contamination
from assets.decontamination.removal import decontaminate
from assets.decontamination.scan import MINHASH_ALL, MINHASH_SHARED, scan

_WORDS = ["alpha", "Béta", "ＦＵＬＬ", "naïve", "café", "东京", "x+y", "$5", "it's", "e.g.", "—dash—", "ﬁne", "Ω",
          "the", "of", "and", "to", "you", "that", "it", "for", "on"] + [f"w{i}" for i in range(400)]
_SEPARATORS = [" ", " ", " ", "  ", ", ", ". ", "\n", "\t", "! ", " - ", "\u00a0"]


def _text(rng: np.random.Generator, words: int, ascii_only: bool = False) -> str:
    vocab = _WORDS[13:] if ascii_only else _WORDS
    tokens = [vocab[i] for i in rng.integers(0, len(vocab), words)]
    return "".join(t + s for t, s in zip(tokens, rng.choice(_SEPARATORS, words), strict=True)).strip()


def _tables(seed: int, rows: int = 300) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Conversations with eval texts copied (some upper-cased), paraphrased (one word in 12 changed) or absent, in
    ASCII and non-ASCII text, and an eval table of long, short and too-short texts."""
    rng = np.random.default_rng(seed)
    evals = [(f"b{i % 3}", str(i), "q", _text(rng, int(rng.choice([4, 9, 13, 20, 40])), bool(i % 2)))
             for i in range(60)]
    conversations = []
    for _ in range(rows):
        user, answer = _text(rng, int(rng.integers(3, 30))), _text(rng, int(rng.integers(10, 120)))
        item = evals[int(rng.integers(len(evals)))][3]
        roll = rng.random()
        if roll < 0.1:
            answer = f"{answer} {item.upper()} {_text(rng, 4)}"
        elif roll < 0.2:
            user = " ".join("zzz" if k % 12 == 6 else w for k, w in enumerate(item.split(" ")))
        elif roll < 0.25:
            user = "!!! ... ???"
        conversations.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    df = pl.DataFrame({"conversation_id": [f"c{i}" for i in range(rows)], "messages": conversations},
                      schema={"conversation_id": pl.Utf8, "messages": pl.List(MESSAGE)})
    return df, pl.DataFrame(evals, schema=["benchmark", "item_id", "field", "text"], orient="row")


def _contents(df: pl.DataFrame) -> pl.Series:
    return df["messages"].explode().struct.field("content")


@pytest.mark.parametrize("seed", [0, 1])
def test_scan_counts_words_and_hits_as_on_the_polars_normalization(seed: int) -> None:
    df, eval_df = _tables(seed)
    index = EvalIndex.build(eval_df, DecontamConfig(min_words=4))
    content = _contents(df)
    scanned = scan(content, index.scan_args(), index.minhash_shingles.args())
    normalized = normalize(content)
    words = normalized.map_elements(lambda t: len(t.split(" ")) if t else 0, return_dtype=pl.Int64).to_numpy()
    assert np.array_equal(scanned.n_words, words)
    assert (scanned.texts.other_of >= 0).any() and (scanned.texts.other_of < 0).any()  # both paths ran
    doc = probe_hits(*utf8_buffer(normalized), *index.probe_args())[0]
    assert np.array_equal(scanned.hits, np.bincount(doc, minlength=content.len()))
    rows = np.flatnonzero(np.arange(content.len()) % 3 == 1)
    data, offsets = scanned.texts.normalized_rows(rows)
    assert np.array_equal(data, utf8_buffer(normalized.gather(rows))[0])
    assert np.array_equal(offsets, utf8_buffer(normalized.gather(rows))[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minhash_shingle_lookup_changes_no_match(seed: int) -> None:
    """Signing only the messages that share a shingle hash with an indexed eval text gives the matches of signing
    every message long enough."""
    df, eval_df = _tables(seed)
    index = EvalIndex.build(eval_df)
    assert index.minhash_shingles.mode == MINHASH_SHARED
    signed = scan(_contents(df), index.scan_args(), index.minhash_shingles.args()).signed
    every = dataclasses.replace(index, minhash_shingles=dataclasses.replace(index.minhash_shingles, mode=MINHASH_ALL))
    assert 0 < signed.sum() < scan(_contents(df), every.scan_args(), every.minhash_shingles.args()).signed.sum()
    matches = find_contamination(df, index)
    assert (matches["detector"] == "minhash").sum() > 0
    assert matches.equals(find_contamination(df, every))


def test_other_minhash_settings_sign_every_long_message() -> None:
    df, eval_df = _tables(3)
    index = EvalIndex.build(eval_df, DecontamConfig(minhash=MinHashConfig(unit="char", ngram=5, threshold=0.5)))
    assert index.minhash_shingles.mode == MINHASH_ALL
    assert EvalIndex.build(eval_df, DecontamConfig(minhash=None)).minhash_shingles.mode == 0


def test_results_do_not_depend_on_the_thread_count() -> None:
    df, eval_df = _tables(4, rows=600)
    index = EvalIndex.build(eval_df, DecontamConfig(min_words=4))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = decontaminate(df, index)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = decontaminate(df, index)
    finally:
        numba.set_num_threads(before)
    assert one[0].equals(many[0]) and one[1].equals(many[1]) and one[2] == many[2]
    assert one[1].height > 0


@pytest.mark.parametrize("seed", range(4))
def test_band_ranges_equal_numpy_searchsorted(seed: int) -> None:
    """The MinHash detector's LSH probe (assets/common/text/minhash/lsh.py, branch-free searches over all bands at
    once) finds the ranges numpy's searchsorted finds, with long runs of equal band hashes too."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        n_old, n_new, n_bands = (int(x) for x in rng.integers(1, [300, 300, 10]))
        spread = int(rng.integers(1, 60))
        old_hashes, _orders = sorted_bands(rng.integers(0, spread, (n_old, n_bands)).astype(np.uint64))
        new = rng.integers(0, spread + 5, (n_new, n_bands)).astype(np.uint64)
        lo, hi = np.empty(new.shape, np.int64), np.empty(new.shape, np.int64)
        _band_ranges_kernel(old_hashes, new, lo, hi)
        for band in range(n_bands):
            assert np.array_equal(lo[:, band], np.searchsorted(old_hashes[band], new[:, band], "left"))
            assert np.array_equal(hi[:, band], np.searchsorted(old_hashes[band], new[:, band], "right"))
