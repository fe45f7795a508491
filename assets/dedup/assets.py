"""`deduplicated_conversations`: near-duplicate conversations removed (MinHash LSH, then optionally semantic
near-duplicates of the instruction through a persisted HNSW index; incremental over shards)."""

from typing import Literal

import dagster as dg
import polars as pl

from assets.common.data.report import markdown_table
from assets.common.orchestration.resources import (
    EMBEDDING_CACHE,
    MAGPIE_CONVERSATIONS,
    REBUILD_ON_UPSTREAM_CHANGE,
    USER_SFT_SOURCES,
    DataStorage,
)
from assets.common.text.embeddings import Embedder, EmbeddingConfig
from assets.common.text.minhash.config import MinHashConfig
from assets.dedup.incremental import IncrementalDedup, SemanticStage, deduplicate_shards
from assets.dedup.near_duplicates import REASON_NEAR_DUPLICATE
from assets.dedup.semantic import (
    DEFAULT_DEDUP_MODEL,
    DEFAULT_DEDUP_THRESHOLD,
    EMBEDDED,
    REASON_SEMANTIC_DUPLICATE,
    SemanticDedupConfig,
)


class SemanticDedupSettings(dg.Config):
    enabled: bool = False
    """Remove an instruction (first user message) within `threshold` cosine of an earlier kept one, after MinHash.
    Off in code, on in the demo and GPU profiles (profiles/*.yaml)."""
    model: str = DEFAULT_DEDUP_MODEL
    """An embedding model of the registry (assets/common/text/embeddings/models.py) or a local sentence-transformers
    directory; a model other than the default needs its own threshold (docs/semantic.md)."""
    threshold: float = DEFAULT_DEDUP_THRESHOLD
    """Cosine at or above which an instruction duplicates an earlier kept one (0.82: above every negative measured
    for WordLlama, docs/semantic.md)."""

    def to_core(self) -> SemanticDedupConfig:
        return SemanticDedupConfig(**self.model_dump())


class DedupSettings(dg.Config):
    unit: Literal["word", "char"] = "word"
    ngram: int = 5
    """Shingle size: words (default 5) or characters."""
    num_perm: int = 128
    threshold: float = 0.8
    """Estimated Jaccard at or above which two conversations are near-duplicates (LSH bands/rows follow)."""
    seed: int = 1
    semantic: SemanticDedupSettings = SemanticDedupSettings()

    def to_core(self) -> MinHashConfig:
        return MinHashConfig(unit=self.unit, ngram=self.ngram, num_perm=self.num_perm, threshold=self.threshold,
                             seed=self.seed)


def _semantic_stage(config: SemanticDedupSettings, storage: DataStorage) -> SemanticStage | None:
    """The semantic pass, its embeddings cached under ``<data root>/embeddings`` by (model hash, text hash)."""
    if not config.enabled:
        return None
    embedder = Embedder(EmbeddingConfig(model=config.model), cache_root=storage.root_path / EMBEDDING_CACHE)
    return SemanticStage(config.to_core(), embedder)


def _semantic_report(result: IncrementalDedup, stage: SemanticStage | None) -> dict:
    """What the semantic pass did, for the report and the metadata (its settings, model and counts)."""
    if stage is None:
        return {"enabled": False}
    removed = result.removed.filter(reason=REASON_SEMANTIC_DUPLICATE)
    return {**stage.identity(), "rows_removed": removed.height, "texts_embedded": result.texts_embedded,
            "index_rows": result.semantic_index_rows, "embedded_text": EMBEDDED}


def _examples(removed: pl.DataFrame, reason: str, kept: pl.DataFrame) -> str:
    """Up to five removals of ``reason`` with both instructions side by side, as a markdown table."""
    rows = removed.filter(reason=reason).head(5)
    first_user = (pl.col("messages").list.eval(pl.element().filter(pl.element().struct.field("role") == "user"))
                  .list.first().struct.field("content").str.slice(0, 80))
    originals = pl.concat([kept, removed], how="diagonal_relaxed").select(
        pl.col("conversation_id").alias("duplicate_of"), first_user.alias("kept_instruction"))
    table = rows.select("conversation_id", "duplicate_of", pl.col("similarity").round(4),
                        first_user.alias("instruction")).join(originals, on="duplicate_of", how="left")
    return markdown_table(table)


@dg.asset(group_name="data", kinds={"polars", "parquet"}, deps=[MAGPIE_CONVERSATIONS, USER_SFT_SOURCES],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def deduplicated_conversations(
    context: dg.AssetExecutionContext, config: DedupSettings, storage: DataStorage
) -> dg.MaterializeResult:
    """Generated conversations of every shard with near-duplicates removed (MinHash LSH over user+assistant text).
    Incremental: the LSH index is kept with the asset, and a new shard is compared only against it, so the cost
    grows with the new shard. Rows kept earlier stay kept; within new rows the first by (shard, row_index) wins.
    Removed rows go to `rejected.parquet` with their cluster and the id of the row they duplicate. User SFT rows
    (`user_sft_sources`' pseudo-shard) are one more shard. With `semantic.enabled`, MinHash's survivors then go
    through semantic dedup: an instruction (first user message) within `semantic.threshold` cosine of an earlier
    kept one is removed (`reason` semantic_duplicate, `duplicate_of`, `similarity` = cosine), found through a
    persisted HNSW index kept beside the LSH index; reported apart from MinHash's removals (docs/semantic.md)."""
    owner = {key: asset for asset in (MAGPIE_CONVERSATIONS, USER_SFT_SOURCES) for key in storage.shard_tables(asset)}
    shards = {**storage.shard_tables(MAGPIE_CONVERSATIONS), **storage.shard_tables(USER_SFT_SOURCES)}
    core = config.to_core()
    state_dir = storage.asset_dir("deduplicated_conversations") / "state"
    semantic = _semantic_stage(config.semantic, storage)
    result = deduplicate_shards(shards, state_dir, core, log=context.log.info, semantic=semantic,
                                read=lambda key: storage.read_conversations(owner[key], f"shard-{key}"))
    stored = storage.write_table("deduplicated_conversations", result.kept)
    rejected = storage.write_table("deduplicated_conversations", result.removed, name="rejected")
    bands, rows = core.params
    rows_in = sum(s["rows_in"] for s in result.stats_by_shard.values())
    by_reason = {str(r): int(n) for r, n in result.removed.group_by("reason").len().sort("reason").iter_rows()}
    semantic_report = _semantic_report(result, semantic)
    report = {"config": core.to_json(), "bands": bands, "rows": rows, "rows_in": rows_in,
              "rows_removed": result.removed.height, "removed_by_reason": by_reason, "semantic": semantic_report,
              "shards": result.stats_by_shard, "new_shards": result.new_shards, "rebuilt": result.rebuilt,
              "rebuild_reason": result.rebuild_reason}
    storage.write_json("deduplicated_conversations", "report", report)
    context.log.info(f"kept {result.kept.height} of {rows_in} (removed: {by_reason}); "
                     f"new shards {result.new_shards}, reused {len(result.reused_shards)}")
    minhash_examples = result.removed.filter(reason=REASON_NEAR_DUPLICATE).head(5).select(
        "conversation_id", "duplicate_of", "similarity")
    semantic_metadata = {} if semantic is None else {
        "semantic_examples": dg.MetadataValue.md(_examples(result.removed, REASON_SEMANTIC_DUPLICATE, result.kept))}
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "rows_in": rows_in,
            "rows_removed": result.removed.height,
            "rows_removed_minhash": by_reason.get(REASON_NEAR_DUPLICATE, 0),
            "rows_removed_semantic": by_reason.get(REASON_SEMANTIC_DUPLICATE, 0),
            "semantic": dg.MetadataValue.json(semantic_report),
            **semantic_metadata,
            "rejected_path": dg.MetadataValue.path(str(rejected.path)),
            "shards": len(shards),
            "new_shards": dg.MetadataValue.json(result.new_shards),
            "signatures_computed": result.signatures_computed,
            "rebuilt": result.rebuilt,
            "parameters": dg.MetadataValue.json({**core.to_json(), "bands": bands, "rows": rows}),
            "removed_examples": dg.MetadataValue.md(markdown_table(minhash_examples)),
        },
        data_version=dg.DataVersion(stored.content_hash),
    )
