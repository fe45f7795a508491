"""`deduplicated_conversations`: near-duplicate conversations removed (MinHash LSH, incremental over shards)."""

from typing import Literal

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.orchestration.resources import (
    MAGPIE_CONVERSATIONS,
    REBUILD_ON_UPSTREAM_CHANGE,
    USER_SFT_SOURCES,
    DataStorage,
)
from assets.common.text.minhash.config import MinHashConfig
from assets.dedup.incremental import deduplicate_shards


class DedupSettings(dg.Config):
    unit: Literal["word", "char"] = "word"
    ngram: int = 5
    """Shingle size: words (default 5) or characters."""
    num_perm: int = 128
    threshold: float = 0.8
    """Estimated Jaccard at or above which two conversations are near-duplicates (LSH bands/rows follow)."""
    seed: int = 1

    def to_core(self) -> MinHashConfig:
        return MinHashConfig(unit=self.unit, ngram=self.ngram, num_perm=self.num_perm, threshold=self.threshold,
                             seed=self.seed)


@dg.asset(group_name="data", kinds={"polars", "parquet"}, deps=[MAGPIE_CONVERSATIONS, USER_SFT_SOURCES],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def deduplicated_conversations(
    context: dg.AssetExecutionContext, config: DedupSettings, storage: DataStorage
) -> dg.MaterializeResult:
    """Generated conversations of every shard with near-duplicates removed (MinHash LSH over user+assistant text).
    Incremental: the LSH index is kept with the asset, and a new shard is compared only against it, so the cost
    grows with the new shard. Rows kept earlier stay kept; within new rows the first by (shard, row_index) wins.
    Removed rows go to `rejected.parquet` with their cluster and the id of the row they duplicate. User SFT rows
    (`user_sft_sources`' pseudo-shard) are one more shard."""
    owner = {key: asset for asset in (MAGPIE_CONVERSATIONS, USER_SFT_SOURCES) for key in storage.shard_tables(asset)}
    shards = {**storage.shard_tables(MAGPIE_CONVERSATIONS), **storage.shard_tables(USER_SFT_SOURCES)}
    core = config.to_core()
    state_dir = storage.asset_dir("deduplicated_conversations") / "state"
    result = deduplicate_shards(shards, state_dir, core, log=context.log.info,
                                read=lambda key: storage.read_conversations(owner[key], f"shard-{key}"))
    stored = storage.write_table("deduplicated_conversations", result.kept)
    rejected = storage.write_table("deduplicated_conversations", result.removed, name="rejected")
    bands, rows = core.params
    rows_in = sum(s["rows_in"] for s in result.stats_by_shard.values())
    report = {"config": core.to_json(), "bands": bands, "rows": rows, "rows_in": rows_in,
              "rows_removed": result.removed.height, "shards": result.stats_by_shard,
              "new_shards": result.new_shards, "rebuilt": result.rebuilt, "rebuild_reason": result.rebuild_reason}
    storage.write_json("deduplicated_conversations", "report", report)
    context.log.info(f"kept {result.kept.height} of {rows_in} ({result.removed.height} near-duplicates); "
                     f"new shards {result.new_shards}, reused {len(result.reused_shards)}")
    examples = result.removed.head(5).select("conversation_id", "duplicate_of", "similarity")
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "rows_in": rows_in,
            "rows_removed": result.removed.height,
            "rejected_path": dg.MetadataValue.path(str(rejected.path)),
            "shards": len(shards),
            "new_shards": dg.MetadataValue.json(result.new_shards),
            "signatures_computed": result.signatures_computed,
            "rebuilt": result.rebuilt,
            "parameters": dg.MetadataValue.json({**core.to_json(), "bands": bands, "rows": rows}),
            "removed_examples": dg.MetadataValue.md(markdown_table(examples)),
        },
        data_version=dg.DataVersion(stored.content_hash),
    )
