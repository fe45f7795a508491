"""Retention of the caches (`plan_retention(..., caches=True)`) on a real data root: filtering's and tagging's shard
results, the mixture's token counts and the embedding cache, each written by the real code (real Parquet, the tiny
model's tokenizer, the smallest real embedding model). An entry a build of the current inputs reads is kept; one
for a changed or departed shard, older thresholds, another tokenizer or another embedding model goes; afterwards
every build gives the same bytes as before and recomputes exactly what was removed."""

import io
import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from assets.common.data.caches import IN_USE
from assets.common.data.retention import CACHE, apply_retention, plan_retention
from assets.common.orchestration.resources import (
    DECONTAMINATED_CONVERSATIONS,
    DEDUPLICATED_CONVERSATIONS,
    EMBEDDING_CACHE,
    FILTERED_CONVERSATIONS,
    SFT_MIXTURE,
    TAGGED_CONVERSATIONS,
    DataStorage,
)
from assets.common.text.embeddings import Embedder, load_backend
from assets.filtering.core import FilterConfig
from assets.filtering.incremental import filter_shards
from assets.mixture.tokens import CachedTokenCounts
from assets.tagging.config import TaggingConfig
from assets.tagging.incremental import tag_shards
from tests.asset_runs import conversation, frame
from tests.retention_checks import disk_bytes

FILTERS = FilterConfig(special_tokens=("<|im_start|>",))
STRICTER = FilterConfig(special_tokens=("<|im_start|>",), min_response_chars=200)
TAGS = TaggingConfig(allowed_languages=("en",))
TEXTS = ["Write a poem about the sea.", "How do I sort a list in Python?", "Name three rivers in Spain."]


def _table(shards: int, changed: int | None = None) -> pl.DataFrame:
    """Four rows per shard, interleaved; shard ``changed`` with other answers."""
    return frame([conversation(r, f"How do tides work? (shard {s}, case {r})",
                               f"The Moon's gravity pulls the oceans{' and the Sun' if s == changed else ''}. "
                               f"Case {s}-{r}.", shard=s) for r in range(4) for s in range(shards)])


def _bytes(df: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return buffer.getvalue()


class AnotherModel:
    """The smallest model under another model hash: the cache folder an earlier embedding model left."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.model_hash = inner, "another", "a0" * 32
        self.max_tokens, self.dim = inner.max_tokens, inner.dim

    def count_tokens(self, texts):
        return self.inner.count_tokens(texts)

    def encode(self, texts, batch_size):
        return self.inner.encode(texts, batch_size)


@pytest.fixture
def cached_root(tmp_path, tiny_model_dir):
    """Every cache written twice or more: the current inputs' builds last, stale entries before them."""
    storage = DataStorage(root=str(tmp_path / "data"))
    root = storage.root_path
    filtering = storage.asset_dir(FILTERED_CONVERSATIONS) / "shard_results"
    filter_shards(_table(3), STRICTER, filtering)  # older thresholds: 3 results
    filter_shards(_table(3), FILTERS, filtering)  # 3 more
    current_filter = filter_shards(_table(3, changed=1), FILTERS, filtering)  # shard 1 changed: 1 more
    tagging = storage.asset_dir(TAGGED_CONVERSATIONS) / "shard_results"
    tag_shards(_table(3), TAGS, tagging)
    current_tags = tag_shards(_table(2), TAGS, tagging)  # shard 2 left the input
    other = tmp_path / "other-tokenizer"  # the student before: another chat template
    shutil.copytree(tiny_model_dir, other, ignore=shutil.ignore_patterns("*.safetensors"))
    (other / "chat_template.jinja").write_text((other / "chat_template.jinja").read_text() + "\n")
    counts_root = storage.asset_dir(SFT_MIXTURE) / "token_counts"
    messages = _table(3)["messages"]
    CachedTokenCounts(other, counts_root).table(messages)
    current_counts = CachedTokenCounts(tiny_model_dir, counts_root).table(messages)
    smallest = load_backend("wordllama-l2-supercat-256")
    cache = root / EMBEDDING_CACHE
    Embedder(backend=AnotherModel(smallest), cache_root=cache).embed(TEXTS)
    current_vectors = Embedder(backend=smallest, cache_root=cache).embed(TEXTS)
    # the reports name the model they embedded with (dedup ran without the semantic pass)
    storage.write_json(DECONTAMINATED_CONVERSATIONS, "report", {"semantic": {"model_hash": smallest.model_hash}})
    storage.write_json(DEDUPLICATED_CONVERSATIONS, "report", {"semantic": {"enabled": False}})
    current = {"filter": current_filter.result, "tags": current_tags.tagged, "counts": current_counts,
               "vectors": current_vectors.vectors}
    return root, smallest, other, tiny_model_dir, current


def test_only_entries_no_current_build_reads_are_removed_and_rebuilds_give_the_same_bytes(cached_root):
    root, smallest, other, tiny, current = cached_root
    filtering, tagging = (root / FILTERED_CONVERSATIONS.to_user_string() / "shard_results",
                          root / TAGGED_CONVERSATIONS.to_user_string() / "shard_results")
    counts_root = root / SFT_MIXTURE.to_user_string() / "token_counts"
    assert (len(list(filtering.glob("*.parquet"))), len(list(tagging.glob("*.parquet")))) == (7, 3)
    assert len(list(counts_root.iterdir())) == 3 and len(list((root / EMBEDDING_CACHE).iterdir())) == 2

    default = plan_retention(root)
    assert not any(u.kind == CACHE for u in default.units.values()) and "caches" not in default.summary()

    before = disk_bytes(root)
    plan = plan_retention(root, caches=True)
    assert disk_bytes(root) == before  # planning removes nothing
    removed = {u.path for u in plan.removed if u.kind == CACHE}
    stale_filters = set(filtering.glob("*.parquet")) - {filtering / n for n in _in_use(filtering)}
    assert len(stale_filters) == 4  # 3 under the older thresholds, shard 1 before it changed
    stale_tags = set(tagging.glob("*.parquet")) - {tagging / n for n in _in_use(tagging)}
    assert len(stale_tags) == 1  # the departed shard 2
    assert _in_use(counts_root) == [CachedTokenCounts(tiny, counts_root).folder.name]
    assert removed == stale_filters | stale_tags | {CachedTokenCounts(other, counts_root).folder,
                                                    root / EMBEDDING_CACHE / ("a0" * 32)}
    assert plan.kept[root / EMBEDDING_CACHE / smallest.model_hash].startswith("its model hash is named")
    summary = plan.summary()["caches"]
    assert {cache: (c["entries_removed"], c["entries_kept"]) for cache, c in summary.items()} == {
        "embeddings": (1, 1), "filtered_conversations/shard_results": (4, 3), "sft_mixture/token_counts": (1, 1),
        "tagged_conversations/shard_results": (1, 2)}
    freed_per_cache = {cache: disk_bytes(root / cache) for cache in summary}

    assert apply_retention(plan) == plan.bytes_freed == before - disk_bytes(root) > 0
    for cache, counts in summary.items():
        assert counts["bytes_freed"] == freed_per_cache[cache] - disk_bytes(root / cache) > 0, cache
    assert not any(path.exists() for path in removed)

    # every current build reads what it read before: nothing recomputed, the same bytes
    again = filter_shards(_table(3, changed=1), FILTERS, filtering)
    assert again.computed_shards == [] and _bytes(again.result.kept) == _bytes(current["filter"].kept)
    assert _bytes(again.result.rejected) == _bytes(current["filter"].rejected)
    tags = tag_shards(_table(2), TAGS, tagging)
    assert tags.computed_shards == [] and _bytes(tags.tagged) == _bytes(current["tags"])
    counter = CachedTokenCounts(tiny, counts_root)
    assert _bytes(counter.table(_table(3)["messages"])) == _bytes(current["counts"]) and counter.rows_counted == 0
    vectors = Embedder(backend=smallest, cache_root=root / EMBEDDING_CACHE).embed(TEXTS)
    assert vectors.computed == 0 and vectors.vectors.tobytes() == current["vectors"].tobytes()
    # ... and an input from before recomputes only what was removed, with the bytes a cold build gives
    back = filter_shards(_table(3), FILTERS, filtering)
    assert back.computed_shards == ["1"]
    cold = filter_shards(_table(3), FILTERS, root / "cold")
    assert _bytes(back.result.kept) == _bytes(cold.result.kept)
    assert _bytes(back.result.rejected) == _bytes(cold.result.rejected)


def _in_use(folder: Path) -> list[str]:
    return json.loads((folder / IN_USE).read_text())["entries"]


def test_a_kept_run_keeps_its_embedding_model_and_a_bad_record_removes_nothing(cached_root):
    root, _, _, _, _ = cached_root
    another = root / EMBEDDING_CACHE / ("a0" * 32)
    plan = plan_retention(root, [(f"semantic: {{'model_hash': '{'a0' * 32}'}}", "run r1")], caches=True)
    assert another in plan.kept and another not in {u.path for u in plan.removed}
    record = root / TAGGED_CONVERSATIONS.to_user_string() / "shard_results" / IN_USE
    record.write_text('{"entries": "all"}')
    with pytest.raises(ValueError, match=r"shard_results/IN_USE.json: `entries` must be a list of names"):
        plan_retention(root, caches=True)


def test_a_cache_whose_record_changed_after_the_check_is_left_in_place(cached_root):
    """A build that started after the caller checked that nothing runs names other entries: its cache is left."""
    root, _, _, _, _ = cached_root
    filtering = root / FILTERED_CONVERSATIONS.to_user_string() / "shard_results"
    plan = plan_retention(root, caches=True)
    stale = [u.path for u in plan.removed if u.path.parent == filtering]
    checked = (filtering / IN_USE).stat().st_mtime + 1
    filter_shards(_table(3, changed=2), FILTERS, filtering)  # rewrites the record
    os.utime(filtering / IN_USE, (checked + 5, checked + 5))
    apply_retention(plan, unchanged_since=checked)
    assert len(stale) == 4 and all(path.exists() for path in stale)
    assert all(plan.kept[path] == "changed while retention ran" for path in stale)
