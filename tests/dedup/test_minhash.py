"""MinHash-LSH near-duplicate removal: hashes, signatures vs datasketch, LSH params, keep policy, index."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

import assets.dedup.near_duplicates as near_duplicates
from assets.common.data.schema import MESSAGE, REJECTED_DETAIL, REJECTED_REASON
from assets.common.text.minhash.config import MinHashConfig, optimal_param
from assets.common.text.minhash.signatures import compute_signatures, estimated_jaccard
from assets.common.text.normalize import normalize, sha1_hash32_bytes, shingles, xxh64_bytes
from assets.dedup.index import LSHIndex
from assets.dedup.near_duplicates import deduplicate

# --------------------------------------------------------------------------------------------------------
# synthetic corpora


def _vocab(rng: np.random.Generator, size: int = 3000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(size * 2)}
    return sorted(words)[:size]


def _doc(rng: np.random.Generator, vocab: list[str], n_words: int) -> list[str]:
    return [vocab[i] for i in rng.integers(0, len(vocab), n_words)]


def _render(words: list[str]) -> str:
    """Words as prose: sentences with capitals and periods, so punctuation/case edits are meaningful."""
    out = []
    for k, w in enumerate(words):
        out.append(w.capitalize() if k % 12 == 0 else w)
        if k % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def _edit(rng: np.random.Generator, vocab: list[str], words: list[str], kind: str) -> str:
    words = list(words)
    if kind == "case":
        return _render(words).upper()
    if kind == "whitespace":
        return "  \n".join(_render(words).split(" ")) + "\t\n"
    if kind == "punctuation":
        return ", ".join(_render(words).replace(".", "!?").split(" ")) + " ..."
    if kind.startswith("sub"):  # "sub<k>": replace k random words
        for pos in rng.choice(len(words), int(kind[3:]), replace=False):
            words[pos] = vocab[int(rng.integers(len(vocab)))]
        return _render(words)
    raise ValueError(kind)


def _frame(texts: list[str], shards: list[int] | None = None, rows: list[int] | None = None) -> pl.DataFrame:
    n = len(texts)
    shards = shards if shards is not None else [0] * n
    rows = rows if rows is not None else list(range(n))
    return pl.DataFrame(
        {
            "conversation_id": [f"{s}-{r}" for s, r in zip(shards, rows, strict=True)],
            "messages": [
                [{"role": "user", "content": "Q"}, {"role": "assistant", "content": t}] for t in texts
            ],
            "shard": shards,
            "row_index": rows,
        },
        schema={
            "conversation_id": pl.Utf8,
            "messages": pl.List(MESSAGE),
            "shard": pl.Int64,
            "row_index": pl.Int64,
        },
    )


def _planted_corpus(
    seed: int, n_base: int, n_variants: int, kinds: list[str], words: tuple[int, int] = (90, 160)
) -> tuple[list[str], list[int], list[str]]:
    """Base documents plus variants of random bases; returns texts and, per text, its base (-1 = a base)
    and the edit applied ("" for a base)."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng)
    bases = [_doc(rng, vocab, int(rng.integers(*words))) for _ in range(n_base)]
    texts = [_render(b) for b in bases]
    origin = [-1] * n_base
    edits = [""] * n_base
    for _ in range(n_variants):
        b = int(rng.integers(n_base))
        kind = kinds[int(rng.integers(len(kinds)))]
        texts.append(_edit(rng, vocab, bases[b], kind))
        origin.append(b)
        edits.append(kind)
    return texts, origin, edits


def _datasketch_keep(texts: list[str], cfg: MinHashConfig) -> np.ndarray:
    """datasketch reference: sha1 MinHash of the same shingles; greedy in order, a row is dropped when an
    already kept row is an LSH candidate with jaccard >= threshold."""
    normalized = normalize(texts).to_list()
    sets = [[s.encode("utf-8") for s in shingles(t, cfg.unit, cfg.ngram)] for t in normalized]
    minhashes = MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    keep = np.zeros(len(texts), dtype=bool)
    for i, m in enumerate(minhashes):
        if not any(m.jaccard(minhashes[c]) >= cfg.threshold for c in lsh.query(m)):
            lsh.insert(i, m)
            keep[i] = True
    return keep


# --------------------------------------------------------------------------------------------------------
# hash primitives and parameters


@pytest.mark.parametrize("length", [0, 1, 3, 4, 7, 8, 31, 32, 33, 55, 56, 63, 64, 65, 119, 120, 200, 1000])
def test_hashes_match_reference_implementations(length: int) -> None:
    xxhash = pytest.importorskip("xxhash")
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert xxh64_bytes(data) == xxhash.xxh64_intdigest(data)
    assert xxh64_bytes(data, seed=2**63 + 5) == xxhash.xxh64_intdigest(data, seed=2**63 + 5)
    assert sha1_hash32_bytes(data) == struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


@pytest.mark.parametrize(
    ("threshold", "num_perm", "weights"),
    [
        (0.5, 128, (0.5, 0.5)),
        (0.8, 128, (0.5, 0.5)),
        (0.9, 128, (0.5, 0.5)),
        (0.7, 64, (0.3, 0.7)),
        (0.85, 256, (0.5, 0.5)),
    ],
)
def test_optimal_param_matches_datasketch(
    threshold: float, num_perm: int, weights: tuple[float, float]
) -> None:
    assert optimal_param(threshold, num_perm, *weights) == _optimal_param(threshold, num_perm, *weights)
    cfg = MinHashConfig(threshold=threshold, num_perm=num_perm, weights=weights)
    assert cfg.params == _optimal_param(threshold, num_perm, *weights)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello,   WORLD!!\n", "hello world"),
        ("ＡＢＣ don't", "abc dont"),  # NFKC folds full-width letters; apostrophe is punctuation
        (" a\u00a0b\t\r\n c ", "a b c"),
        ("x+y=3; «quoted» — dash", "x+y=3 quoted dash"),  # math symbols survive, punctuation goes
        ("ﬁne", "fine"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalization(raw: str, expected: str) -> None:
    assert normalize([raw]).to_list() == [expected]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unit"):
        MinHashConfig(unit="token")
    with pytest.raises(ValueError, match="hash"):
        MinHashConfig(hash="md5")
    with pytest.raises(ValueError, match="bands"):
        MinHashConfig(bands=20, rows=10)
    assert MinHashConfig(bands=16, rows=8).params == (16, 8)


# --------------------------------------------------------------------------------------------------------
# signatures


_SIG_TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again and again.",
    "héllo wörld ＦＵＬＬ-width 日本語のテキスト も 入っています",
    "",
    "short text",
    "supercalifragilisticexpialidocious-and-then-some-more-letters-to-exceed-one-sha1-block " * 3,
    "a a a a a a a a a a a",
]


@pytest.mark.parametrize(
    ("unit", "ngram", "num_perm", "seed"),
    [
        ("word", 5, 128, 1),
        ("word", 1, 64, 7),
        ("word", 3, 256, 12345),
        ("char", 5, 128, 1),
        ("char", 9, 32, 3),
    ],
)
def test_sha1_signatures_equal_datasketch(unit: str, ngram: int, num_perm: int, seed: int) -> None:
    cfg = MinHashConfig(unit=unit, ngram=ngram, num_perm=num_perm, seed=seed, hash="sha1")
    sigs = compute_signatures(_SIG_TEXTS, cfg)
    assert sigs.dtype == np.uint32 and sigs.shape == (len(_SIG_TEXTS), num_perm)
    for text, sig in zip(normalize(_SIG_TEXTS).to_list(), sigs, strict=True):
        ref = MinHash(num_perm=num_perm, seed=seed)
        for shingle in shingles(text, unit, ngram):
            ref.update(shingle.encode("utf-8"))
        np.testing.assert_array_equal(sig, ref.hashvalues)


def test_fast_signatures_estimate_jaccard() -> None:
    """The XXH64 signatures estimate the true shingle Jaccard as well as MinHash should (~3 sigma)."""
    texts, origin, _ = _planted_corpus(3, 30, 60, ["sub2", "sub8", "sub20"])
    cfg = MinHashConfig()
    sigs = compute_signatures(texts, cfg)
    normalized = normalize(texts).to_list()
    errors = []
    for i in range(30, len(texts)):
        a = set(shingles(normalized[i], "word", 5))
        b = set(shingles(normalized[origin[i]], "word", 5))
        errors.append(estimated_jaccard(sigs[i], sigs[origin[i]]) - len(a & b) / len(a | b))
    assert np.max(np.abs(errors)) < 0.15
    assert abs(np.mean(errors)) < 0.02


# --------------------------------------------------------------------------------------------------------
# deduplication decisions


@pytest.mark.parametrize("hash_name", ["xxh64", "sha1"])
def test_decisions_agree_with_datasketch(hash_name: str) -> None:
    """Same keep/drop decisions as datasketch (sha1 MinHash + MinHashLSH) on >= 99% of rows.

    Planted variants are either clear near-duplicates (J >= ~0.95 after normalization) or clearly distinct
    (J < 0.5). Pairs with 0.8 < J < 0.9 are decided by chance by *any* LSH: with threshold 0.8 the optimal
    banding is 9 x 13, which makes a J = 0.85 pair a candidate with probability only 1 - (1 - 0.85**13)**9
    ~= 0.69, so two independent hash functions disagree on such pairs ~40% of the time.
    """
    kinds = ["case", "whitespace", "punctuation", "sub1", "sub30"]
    texts, _, edits = _planted_corpus(11, 400, 250, kinds, words=(200, 300))
    cfg = MinHashConfig(hash=hash_name)
    result = deduplicate(_frame(texts), cfg)
    ours = np.zeros(len(texts), dtype=bool)
    ours[result.kept["row_index"].to_numpy()] = True
    reference = _datasketch_keep(texts, cfg)
    assert (ours == reference).mean() >= 0.99
    # and the decisions are right: bases kept, light edits removed, heavy rewrites kept
    assert ours[:400].all()
    edits = np.array(edits)
    assert (~ours[np.isin(edits, ["case", "whitespace", "punctuation", "sub1"])]).mean() >= 0.99
    assert ours[edits == "sub30"].all()


@pytest.mark.parametrize("kind", ["case", "whitespace", "punctuation", "sub1", "sub2"])
def test_small_edits_are_near_duplicates(kind: str) -> None:
    rng = np.random.default_rng(5)
    vocab = _vocab(rng)
    docs = [_doc(rng, vocab, 300) for _ in range(20)]  # 2 edits in 300 words: J ~ 0.93
    texts = [_render(d) for d in docs] + [_edit(rng, vocab, docs[k], kind) for k in range(0, 20, 2)]
    result = deduplicate(_frame(texts), MinHashConfig())
    assert result.kept["row_index"].to_list() == list(range(20))
    removed = result.removed.sort("row_index")
    assert removed["row_index"].to_list() == list(range(20, 30))
    assert removed["duplicate_of"].to_list() == [f"0-{k}" for k in range(0, 20, 2)]
    assert (removed["similarity"] >= 0.8).all()
    assert set(removed[REJECTED_REASON]) == {"near_duplicate"}
    assert removed[REJECTED_DETAIL][0].startswith("near-duplicate of 0-0")
    # cluster_id is the kept row's position in the index
    ids = result.index.ids.to_list()
    assert [ids[c] for c in removed["cluster_id"]] == removed["duplicate_of"].to_list()


@pytest.mark.parametrize("unit_ngram", [("word", 5), ("char", 5), ("word", 3)])
def test_distinct_documents_are_kept(unit_ngram: tuple[str, int]) -> None:
    rng = np.random.default_rng(9)
    vocab = _vocab(rng)
    texts = [_render(_doc(rng, vocab, 150)) for _ in range(300)]
    unit, ngram = unit_ngram
    result = deduplicate(_frame(texts), MinHashConfig(unit=unit, ngram=ngram))
    assert result.kept.height == 300 and result.removed.height == 0


def test_heavily_edited_documents_are_kept() -> None:
    rng = np.random.default_rng(2)
    vocab = _vocab(rng)
    docs = [_doc(rng, vocab, 120) for _ in range(10)]
    texts = [_render(d) for d in docs] + [_edit(rng, vocab, d, "sub30") for d in docs]
    assert deduplicate(_frame(texts)).removed.height == 0


def test_keep_policy_follows_order_columns_not_input_order() -> None:
    base = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma"
    texts = [base.upper(), "something else entirely " * 4, base, base + "!"]
    df = _frame(texts, shards=[3, 1, 2, 2], rows=[0, 5, 7, 1])  # first by (shard, row_index): "2-1"
    result = deduplicate(df)
    assert result.kept["conversation_id"].to_list() == ["1-5", "2-1"]  # input order preserved
    assert result.removed["conversation_id"].to_list() == ["3-0", "2-7"]
    assert result.removed["duplicate_of"].to_list() == ["2-1", "2-1"]
    # with the input order as the policy instead, the first row wins
    by_input = deduplicate(df, order=())
    assert by_input.kept["conversation_id"].to_list() == ["3-0", "1-5"]


def test_transitive_cluster_and_large_bucket_of_copies() -> None:
    """200 exact copies (> ALL_PAIRS_BUCKET_SIZE) collapse to one row; a chain A~B~C is one cluster."""
    rng = np.random.default_rng(4)
    vocab = _vocab(rng)
    copies = [_render(_doc(np.random.default_rng(99), vocab, 100))] * 200
    a = _doc(rng, vocab, 300)  # b = a with 4 word edits, c = b with 4 more: J(a,b) ~ J(b,c) ~ 0.87
    b = list(a)
    for k in range(30, 300, 75):
        b[k] = "edited"
    c = list(b)
    for k in range(60, 300, 75):
        c[k] = "changed"
    texts = copies + [_render(a), _render(b), _render(c)]
    result = deduplicate(_frame(texts), MinHashConfig())
    assert result.kept["row_index"].to_list() == [0, 200]
    removed = result.removed
    assert removed.filter(pl.col("row_index") < 200)["duplicate_of"].unique().to_list() == ["0-0"]
    assert removed.filter(pl.col("row_index") >= 200)["duplicate_of"].to_list() == ["0-200", "0-200"]
    assert result.stats["clusters"] == 2


def test_empty_and_custom_text_column() -> None:
    empty = _frame([]).head(0)
    result = deduplicate(empty)
    assert result.kept.height == 0 and result.removed.height == 0 and len(result.index) == 0
    df = pl.DataFrame(
        {
            "id": ["x", "y", "z"],
            "body": [
                "one two three four five six",
                "ONE two three, four five six",
                "seven eight nine ten eleven",
            ],
        }
    )
    result = deduplicate(df, text="body", order=(), id_column="id")
    assert result.kept["id"].to_list() == ["x", "z"]
    assert result.removed["duplicate_of"].to_list() == ["x"]


# --------------------------------------------------------------------------------------------------------
# incremental index


def test_incremental_dedup_uses_index_without_recomputing(tmp_path, monkeypatch) -> None:
    texts, _, _ = _planted_corpus(21, 200, 0, ["case"])
    shard0 = _frame(texts[:150], shards=[0] * 150, rows=list(range(150)))
    first = deduplicate(shard0)
    path = tmp_path / "dedup" / "lsh_index.npz"
    digest = first.index.save(path)
    assert len(digest) == 64 and not list(path.parent.glob(".*.tmp"))

    words_of_7 = texts[7].split(" ")
    new_texts = [
        texts[7].lower() + " ",  # near-duplicate of an old row
        texts[150],  # distinct
        texts[151],  # distinct ...
        texts[151].replace(".", "!"),  # ... and its near-duplicate in the same shard
        " ".join(words_of_7[:5] + ["zzz"] + words_of_7[6:]),  # one-word edit of the same old row
    ]
    shard1 = _frame(new_texts, shards=[1] * 5, rows=list(range(5)))
    computed: list[int] = []
    original = near_duplicates.compute_signatures

    def counting(texts, cfg):
        computed.append(len(texts))
        return original(texts, cfg)

    monkeypatch.setattr(near_duplicates, "compute_signatures", counting)
    loaded = LSHIndex.load(path)
    np.testing.assert_array_equal(loaded.signatures, first.index.signatures)
    assert loaded.ids.to_list() == first.index.ids.to_list()
    second = deduplicate(shard1, index=loaded)

    assert computed == [5] and second.stats["signatures_computed"] == 5
    assert second.kept["conversation_id"].to_list() == ["1-1", "1-2"]
    removed = {r["conversation_id"]: r for r in second.removed.iter_rows(named=True)}
    assert removed["1-0"]["duplicate_of"] == "0-7" and removed["1-4"]["duplicate_of"] == "0-7"
    assert removed["1-0"]["cluster_id"] == 7  # index row of the kept representative
    assert removed["1-3"]["duplicate_of"] == "1-2" and removed["1-3"]["cluster_id"] == 151
    assert second.stats["removed_as_duplicate_of_index"] == 2
    assert len(second.index) == 152 and second.index.ids.to_list()[-2:] == ["1-1", "1-2"]

    # same decisions as deduplicating everything at once
    together = deduplicate(pl.concat([shard0, shard1]))
    assert together.kept["conversation_id"].to_list() == second.index.ids.to_list()

    # a shard that is already in the index is refused, as is an index from another config
    with pytest.raises(ValueError, match="already in the LSH index"):
        deduplicate(shard0.head(3), index=loaded)
    with pytest.raises(ValueError, match="Rebuild the index"):
        deduplicate(shard1, MinHashConfig(threshold=0.7), index=loaded)


def test_index_file_has_no_pickles(tmp_path) -> None:
    result = deduplicate(_frame(["a b c d e f", "g h i j k l"]))
    path = tmp_path / "idx.npz"
    result.index.save(path)
    with np.load(path, allow_pickle=False) as npz:  # would raise on object arrays
        assert set(npz.files) == {"meta", "signatures", "band_hashes", "id_data", "id_offsets"}
        assert all(npz[name].dtype != object for name in npz.files)
    again = LSHIndex.load(path)
    assert again.config == result.index.config
    np.testing.assert_array_equal(again.band_hashes, result.index.band_hashes)
