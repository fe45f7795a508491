"""Tests for assets/common/text/embeddings: the offline models, the (model hash, text hash) cache, chunking, and the
planted-pairs goal of issue 20 for the default model. Real models from their wheels; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assets.common.text.embeddings import (
    CrossLingual,
    Embedder,
    EmbeddingConfig,
    Embeddings,
    chunk_text,
    distinct_neighbours,
    flagged_neighbours,
    load_backend,
    max_chunk_cosine,
    top_k_neighbours,
)

SMALLEST = "wordllama-l2-supercat-256"  # static embeddings: loads in about a second


class CountingBackend:
    """The real backend, with every text it is asked to encode recorded (the seam the cache must keep closed)."""

    def __init__(self, inner) -> None:
        self.inner, self.encoded = inner, []
        self.name, self.model_hash = inner.name, inner.model_hash
        self.max_tokens, self.dim = inner.max_tokens, inner.dim

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        self.encoded.extend(texts)
        return self.inner.encode(texts, batch_size)


@pytest.fixture(scope="module")
def smallest():
    return load_backend(SMALLEST)


def test_a_cached_text_is_not_embedded_again(smallest, tmp_path: Path) -> None:
    first = CountingBackend(smallest)
    texts = ["Write a poem about the sea.", "How do I sort a list in Python?", "Write a poem about the sea."]
    cold = Embedder(backend=first, cache_root=tmp_path).embed(texts)
    assert sorted(first.encoded) == sorted(set(texts)) and cold.computed == 2
    again = CountingBackend(smallest)  # a new run: a new Embedder over the same cache root
    warm = Embedder(backend=again, cache_root=tmp_path).embed([*texts, "Name three rivers in Spain."])
    assert again.encoded == ["Name three rivers in Spain."] and warm.computed == 1
    assert warm.vectors[:3].tobytes() == cold.vectors.tobytes()  # read back byte for byte
    assert np.array_equal(warm.owner, [0, 1, 2, 3])
    assert len(list((tmp_path / smallest.model_hash).glob("chunks-*/*.parquet"))) == 2  # one immutable shard per run


def test_a_model_change_embeds_everything_again(smallest, tmp_path: Path) -> None:
    texts = ["Write a poem about the sea.", "How do I sort a list in Python?"]
    Embedder(backend=smallest, cache_root=tmp_path).embed(texts)
    other = CountingBackend(load_backend("multilingual-e5-small-q4"))
    assert other.model_hash != smallest.model_hash
    result = Embedder(backend=other, cache_root=tmp_path).embed(texts)
    assert sorted(other.encoded) == sorted(texts) and result.computed == 2 and result.vectors.shape == (2, other.dim)
    assert {p.name for p in tmp_path.iterdir()} == {smallest.model_hash, other.model_hash}


def test_the_same_texts_give_the_same_bytes(smallest, tmp_path: Path) -> None:
    texts = ["b: a second text", "a: a first text", "c: a third one"]
    for run in ("one", "two"):
        Embedder(backend=smallest, cache_root=tmp_path / run).embed(texts if run == "one" else texts[::-1])
    shards = [next((tmp_path / run / smallest.model_hash).glob("chunks-*/*.parquet")) for run in ("one", "two")]
    assert shards[0].name == shards[1].name and shards[0].read_bytes() == shards[1].read_bytes()


def test_a_long_text_is_embedded_in_chunks_and_a_match_on_any_chunk_counts(smallest) -> None:
    filler = " ".join(f"The committee met on day {i} and approved the minutes of the previous meeting." for i in
                      range(300))
    needle = ("Write a Python function that removes every element occurring more than once from a list of integers, "
              "keeping the order of the remaining elements.")
    middle = len(filler) // 2
    long_text = filler[:middle] + " " + needle + " " + filler[middle:]
    chunks = chunk_text(long_text, smallest.count_tokens, smallest.max_tokens)
    assert len(chunks) > 3 and max(smallest.count_tokens(chunks)) <= smallest.max_tokens
    assert set(" ".join(chunks).split()) == set(long_text.split())  # nothing is left out
    embedder = Embedder(EmbeddingConfig(chunk_tokens=48), backend=smallest)
    long_vectors, probe = embedder.embed([long_text, "short"]), embedder.embed([needle])
    small_chunks = chunk_text(long_text, smallest.count_tokens, 48)
    assert any(needle in chunk for chunk in small_chunks)  # the overlap keeps a short passage whole in some chunk
    assert np.bincount(long_vectors.owner).tolist() == [len(small_chunks), 1]
    best = max_chunk_cosine(probe, long_vectors)[0, 0]
    first_chunk = float(long_vectors.vectors[0] @ probe.vectors[0])
    assert best > 0.8 > first_chunk  # found through the chunk holding it; a truncated text would have missed it


def test_an_unknown_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a registered name .*all-minilm-l6-v2.* modules.json"):
        load_backend(str(tmp_path))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EmbeddingConfig(batch_size=0)


def test_top_k_neighbours_in_blocks_equal_the_full_matrix(smallest) -> None:
    embedder = Embedder(EmbeddingConfig(chunk_tokens=16), backend=smallest)
    topics = ["sorting lists in Python", "baking sourdough bread", "the French revolution", "training a puppy",
              "solar water heaters", "the rules of chess"]
    queries = embedder.embed([f"Question {i}: tell me about {topics[i % 6]}, " + "and more detail " * (i % 4)
                              for i in range(9)])
    corpus = embedder.embed([f"A long note on {t}. " * 5 for t in topics] + ["short", "Chess: castling rules."])
    assert np.bincount(queries.owner).max() > 1 and np.bincount(corpus.owner).max() > 1  # several chunks per text
    full = max_chunk_cosine(queries, corpus)
    for max_floats in (1, 37, 1 << 25):  # one query text per block, blocks cutting between texts, one block
        found = top_k_neighbours(queries, corpus, k=3, max_floats=max_floats)
        assert found["query"].to_list() == [q for q in range(9) for _ in range(3)]
        for q in range(9):
            rows = found.filter(query=q)
            best = sorted(range(full.shape[1]), key=lambda j: (-full[q, j], j))[:3]
            assert rows["item"].to_list() == best
            assert np.allclose(rows["score"].to_numpy(), full[q, best])
    assert top_k_neighbours(queries, corpus, k=50)["query"].value_counts()["count"].max() == corpus.n_texts


def _distinct_by_hand(full: np.ndarray, twins: np.ndarray, k: int, margin: float) -> list[tuple[int, int]]:
    """(query, item) pairs :func:`distinct_neighbours` must keep, from the full score matrix, one pair at a time."""
    kept = []
    for q in range(full.shape[0]):
        for item in sorted(range(full.shape[1]), key=lambda j: (-full[q, j], j))[:k]:
            others = [full[q, z] for z in range(full.shape[1]) if z != item and not twins[item, z]]
            if full[q, item] - max(others, default=-np.inf) >= margin:
                kept.append((q, item))
    return kept


def test_distinct_neighbours_keep_an_item_and_its_twins_when_they_stand_out(smallest) -> None:
    embedder = Embedder(backend=smallest)
    corpus = embedder.embed(["How do I bake sourdough bread at home?",
                             "Give me a recipe for baking sourdough bread at home.",  # a twin of the first (0.90)
                             "Explain how vaccines train the immune system.", "Write a poem about autumn leaves.",
                             "What is the capital of Peru?", "Write a poem about spring flowers."])
    queries = embedder.embed(["Tell me how to bake a sourdough loaf at home.",
                              "Write a short poem about falling leaves in autumn.", "Write a story about a dragon."])
    found = distinct_neighbours(queries, corpus, k=3, threshold=0.75, margin=0.1)
    # the sourdough query keeps both twins (each other's rival would be 0.77, not 0.07); the poem query keeps
    # autumn, not spring (autumn beats it by 0.29); the dragon is about as close to both poems: nothing stands out
    assert list(zip(found["query"], found["item"], strict=True)) == [(0, 0), (0, 1), (1, 3)]
    assert found.schema == top_k_neighbours(queries, corpus, 3).schema
    full = max_chunk_cosine(queries, corpus)
    twins = max_chunk_cosine(corpus, corpus) >= 0.75
    for k, margin, max_floats in ((3, 0.1, 1), (6, 0.0, 1 << 25), (1, 0.3, 5), (2, -1.0, 1)):
        found = distinct_neighbours(queries, corpus, k, 0.75, margin, max_floats)
        assert list(zip(found["query"], found["item"], strict=True)) == _distinct_by_hand(full, twins, k, margin)
        pairs = zip(found["query"], found["item"], strict=True)
        assert np.allclose(found["score"].to_numpy(), [full[q, i] for q, i in pairs])


def _unit_rows(rows: list[list[float]]) -> Embeddings:
    vectors = np.asarray(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Embeddings("test", np.arange(len(rows)), vectors, len(rows), 0)


def test_the_cross_lingual_tier_adds_pairs_of_two_languages_at_its_own_threshold_and_margin() -> None:
    corpus = _unit_rows([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # query 0: cosine 0.89 with item 0, its best other 0.32 (it stands out); query 1: 0.72 with item 0 and 0.69
    # with item 1 (it does not stand out by 0.05)
    queries = _unit_rows([[0.89, 0.32, np.sqrt(1 - 0.89**2 - 0.32**2)], [0.72, 0.69, 0.0]])
    pairs = lambda found: list(zip(found["query"], found["item"], strict=True))  # noqa: E731
    assert flagged_neighbours(queries, corpus, 2, threshold=0.9, margin=0.02).is_empty()  # 0.89 < 0.9
    tier = CrossLingual(0.7, 0.05, ["fr", "fr"], ["en", "en", "en"])
    assert pairs(flagged_neighbours(queries, corpus, 2, 0.9, 0.02, tier)) == [(0, 0)]
    for same in (["en", "en"], ["und", "fr"]):  # the same language, or one not identified: the first tier only
        assert flagged_neighbours(queries, corpus, 2, 0.9, 0.02, CrossLingual(0.7, 0.05, same, ["en"] * 3)).is_empty()
    for threshold, margin in ((0.895, 0.05), (0.7, 0.6)):  # the tier's own threshold and margin both hold
        tier = CrossLingual(threshold, margin, ["fr"] * 2, ["en"] * 3)
        assert flagged_neighbours(queries, corpus, 2, 0.9, 0.02, tier).is_empty()
    # the first tier is as it was, whatever the languages
    tier = CrossLingual(0.95, 0.5, ["fr", "fr"], ["en"] * 3)
    assert pairs(flagged_neighbours(queries, corpus, 2, 0.85, 0.02, tier)) == pairs(
        flagged_neighbours(queries, corpus, 2, 0.85, 0.02)) == [(0, 0)]
    with pytest.raises(ValueError, match="one language per text"):
        flagged_neighbours(queries, corpus, 2, 0.9, 0.02, CrossLingual(0.7, 0.05, ["fr"], ["en"] * 3))
