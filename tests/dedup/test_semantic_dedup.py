"""Semantic near-duplicates after MinHash, over real Parquet shards and the real WordLlama model (the wheel's
weights): a reworded instruction goes, a different one stays, earlier kept rows win across shards, an incremental
run equals a full rebuild byte for byte, and a new shard embeds only its own rows."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from assets.common.data.storage import sha256_file, write_parquet_atomic
from assets.common.text.embeddings import Embedder, EmbeddingConfig, load_backend
from assets.common.text.minhash.config import MinHashConfig
from assets.dedup.incremental import SemanticStage, deduplicate_shards
from assets.dedup.near_duplicates import REASON_NEAR_DUPLICATE
from assets.dedup.semantic import REASON_SEMANTIC_DUPLICATE, SemanticDedupConfig
from assets.dedup.semantic_index import SemanticIndex
from tests.asset_runs import conversation, frame

MODEL = "wordllama-l2-supercat-256"
# cosines under WordLlama: 0-2 0.93, 3-5 0.90 (reworded: removed at 0.82); 1-4 0.75 (same topic, kept)
SHARD_0 = ["How do I bake sourdough bread at home?", "Explain how a rainbow forms after the rain.",
           "What is the process for baking sourdough bread at home?",
           "Write a Python function that checks whether a number is prime."]
SHARD_1 = ["Write a Python function that tests if a number is prime.",
           "Describe the formation of a rainbow after rainfall.", "List the planets of the solar system in order."]


class CountingBackend:
    """The real WordLlama backend, recording every text it is asked to encode."""

    def __init__(self) -> None:
        self.inner, self.encoded = load_backend(MODEL), []
        self.name, self.model_hash, self.max_tokens, self.dim = (self.inner.name, self.inner.model_hash,
                                                                 self.inner.max_tokens, self.inner.dim)

    def count_tokens(self, texts):
        return self.inner.count_tokens(texts)

    def encode(self, texts, batch_size):
        self.encoded += list(texts)
        return self.inner.encode(texts, batch_size)


@pytest.fixture(scope="module")
def backend():
    return CountingBackend()


def write_shard(folder: Path, key: int, instructions: list[str]) -> Path:
    path = folder / f"shard-{key:05d}.parquet"
    rows = [conversation(i, text, f"Answer {key}-{i}: " + " ".join(f"w{key}{i}{j}" for j in range(30)), shard=key)
            for i, text in enumerate(instructions)]
    write_parquet_atomic(frame(rows), path)
    return path


def run(paths: dict, state: Path, backend, cfg=SemanticDedupConfig(enabled=True)):
    stage = SemanticStage(cfg, Embedder(EmbeddingConfig(model=MODEL), cache_root=None, backend=backend))
    return deduplicate_shards(paths, state, MinHashConfig(), semantic=stage)


def test_a_reworded_instruction_is_removed_naming_the_kept_row_and_a_different_one_stays(tmp_path, backend):
    paths = {"00000": write_shard(tmp_path, 0, SHARD_0)}
    result = run(paths, tmp_path / "state", backend)
    removed = result.removed
    assert removed.select("conversation_id", "duplicate_of", "reason").rows() == [
        ("00000-0000002", "00000-0000000", REASON_SEMANTIC_DUPLICATE)]
    assert removed["similarity"].item() == pytest.approx(0.930, abs=0.005)
    assert removed["detail"].item().startswith("instruction reworded from 00000-0000000 (cosine 0.93")
    assert removed["cluster_id"].is_null().all()
    assert result.kept["conversation_id"].to_list() == ["00000-0000000", "00000-0000001", "00000-0000003"]
    assert result.stats_by_shard["00000"] == {"rows_in": 4, "rows_removed": 1, "rows_removed_minhash": 0,
                                              "rows_removed_semantic": 1, "texts_embedded": 4}
    # a threshold above the pair's cosine keeps it; MinHash alone never saw it (different words)
    strict = SemanticDedupConfig(enabled=True, threshold=0.95)
    assert run(paths, tmp_path / "strict", backend, strict).removed.height == 0


def test_earlier_kept_rows_win_across_shards_and_incremental_equals_a_full_rebuild(tmp_path, backend):
    paths = {"00000": write_shard(tmp_path, 0, SHARD_0)}
    run(paths, tmp_path / "incremental", backend)
    paths["00001"] = write_shard(tmp_path, 1, SHARD_1)
    backend.encoded.clear()
    incremental = run(paths, tmp_path / "incremental", backend)
    assert backend.encoded == sorted(SHARD_1, key=_hash)  # the new shard only: shard 0 comes from the index
    assert incremental.new_shards == ["00001"] and not incremental.rebuilt and incremental.texts_embedded == 3
    second = incremental.removed.filter(pl.col("shard") == 1)
    assert second.select("conversation_id", "duplicate_of").rows() == [("00001-0000000", "00000-0000003")]
    assert second["similarity"].item() == pytest.approx(0.899, abs=0.005)
    assert incremental.semantic_index_rows == 3 + 2  # kept rows only
    full = run(paths, tmp_path / "full", backend)
    assert full.rebuilt and full.kept.equals(incremental.kept) and full.removed.equals(incremental.removed)
    for name in ("kept-00000.parquet", "kept-00001.parquet", "removed-00000.parquet", "removed-00001.parquet"):
        assert sha256_file(tmp_path / "full" / name) == sha256_file(tmp_path / "incremental" / name), name
    indexes = {d: sorted((tmp_path / d).glob("semantic_index-*.npz")) for d in ("full", "incremental")}
    assert [p.name for p in indexes["full"]] == [p.name for p in indexes["incremental"]]  # one file, same content
    assert sha256_file(indexes["full"][0]).startswith(indexes["full"][0].stem.removeprefix("semantic_index-"))


def test_the_persisted_index_holds_the_kept_rows_and_a_settings_change_rebuilds(tmp_path, backend):
    paths = {"00000": write_shard(tmp_path, 0, SHARD_0)}
    run(paths, tmp_path / "state", backend)
    index = SemanticIndex.load(next((tmp_path / "state").glob("semantic_index-*.npz")))
    assert index.ids.to_list() == ["00000-0000000", "00000-0000001", "00000-0000003"]
    stored = index.vectors(np.arange(3))
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    assert index.search(stored, 1)[:, 0].tolist() == [0, 1, 2]
    again = run(paths, tmp_path / "state", backend, SemanticDedupConfig(enabled=True, threshold=0.95))
    assert again.rebuilt and again.rebuild_reason == "semantic settings or embedding model changed"
    assert len(list((tmp_path / "state").glob("semantic_index-*.npz"))) == 1  # the previous one removed after


def test_minhash_removals_come_first_and_are_reported_apart(tmp_path, backend):
    path = write_shard(tmp_path, 0, SHARD_0)
    copy = pl.read_parquet(path).filter(row_index=1).with_columns(  # row 1 word for word, as row 4: MinHash's
        pl.lit(4, pl.Int64).alias("row_index"), pl.lit("00000-0000004").alias("conversation_id"))
    write_parquet_atomic(pl.concat([pl.read_parquet(path), copy.cast(pl.read_parquet(path).schema)]), path)
    result = run({"00000": path}, tmp_path / "state", backend)
    assert result.removed.select("conversation_id", "reason").rows() == [
        ("00000-0000004", REASON_NEAR_DUPLICATE), ("00000-0000002", REASON_SEMANTIC_DUPLICATE)]
    assert result.stats_by_shard["00000"]["rows_removed_minhash"] == 1
    assert result.stats_by_shard["00000"]["texts_embedded"] == 4  # MinHash's survivors only


def _hash(text: str) -> str:
    from assets.common.data.storage import sha256_text

    return sha256_text(text)


def instructions(seed: int, n: int) -> list[str]:
    """``n`` distinct made-up instructions (random words of the bundled eval sets)."""
    import random
    import re

    from assets.eval_sets.core import load_bundled_eval_sets

    words = sorted({w.lower() for t in load_bundled_eval_sets()["text"] for w in re.findall(r"[A-Za-z]{4,10}", t)})
    rng = random.Random(seed)
    return [f"Write {rng.choice(['a poem', 'an essay', 'a plan'])} about {' '.join(rng.sample(words, 4))}."
            for _ in range(n)]


def test_incremental_equals_a_full_rebuild_on_an_index_with_several_hnsw_levels(tmp_path, backend):
    """HNSW levels come from a generator the index file does not keep: without reading the index back after every
    shard, the incremental and the full graphs differ once nodes reach level 1 (hundreds of rows)."""
    paths = {"00000": write_shard(tmp_path, 0, instructions(0, 250))}
    run(paths, tmp_path / "incremental", backend)
    paths["00001"] = write_shard(tmp_path, 1, instructions(1, 250))
    incremental, full = run(paths, tmp_path / "incremental", backend), run(paths, tmp_path / "full", backend)
    assert incremental.semantic_index_rows > 400  # mostly distinct: a graph with upper levels
    assert full.kept.equals(incremental.kept) and full.removed.equals(incremental.removed)
    names = [sorted(p.name for p in (tmp_path / d).glob("semantic_index-*.npz")) for d in ("full", "incremental")]
    assert names[0] == names[1] and len(names[0]) == 1
