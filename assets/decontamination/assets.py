"""`decontaminated_conversations`: eval-set overlap removed, with a blocking check that re-verifies the table
independently before training may use it."""

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.orchestration.resources import (
    DEDUPLICATED_CONVERSATIONS,
    EVAL_SETS,
    REBUILD_ON_UPSTREAM_CHANGE,
    DataStorage,
)
from assets.common.text.minhash.config import MinHashConfig
from assets.decontamination.config import DEFAULT_MINHASH, DecontamConfig
from assets.decontamination.incremental import decontaminate_shards
from assets.decontamination.index import EvalIndex
from assets.decontamination.verify import CHECK_FLOORS, verify_decontaminated


class DecontamSettings(dg.Config):
    ngram: int = 13
    """Word n-gram length of the overlap detector (normalized text)."""
    min_words: int = 8
    """Eval texts shorter than `ngram` words are matched whole, down to this many words (shorter: ignored)."""
    max_ngram_items: int = 3
    """An eval n-gram (or whole short eval text) found in at least this many distinct eval items is boilerplate,
    not evidence of contamination; 0 disables this cut-off."""
    max_train_rows: int = 10
    """An eval n-gram (or whole short eval text) found in at least this many distinct conversations of the table
    being decontaminated is generic text too ("i hope this helps let me know if you have any other questions"
    shared with a single eval answer) and not evidence; 0 disables this cut-off. Trade-off: a real leak repeated
    in this many rows that are not near-duplicates of each other is ignored by the n-gram detector."""
    similarity_threshold: float = DEFAULT_MINHASH.threshold
    """MinHash similarity (word 3-grams) at or above which a message matches an eval item; 0 disables it."""

    def to_core(self) -> DecontamConfig:
        minhash = None
        if self.similarity_threshold > 0:
            minhash = MinHashConfig(**{**DEFAULT_MINHASH.to_json(), "threshold": self.similarity_threshold,
                                       "weights": DEFAULT_MINHASH.weights})
        return DecontamConfig(ngram=self.ngram, min_words=self.min_words, max_ngram_items=self.max_ngram_items,
                              max_train_rows=self.max_train_rows, minhash=minhash)


@dg.asset(
    group_name="data",
    kinds={"polars", "parquet"},
    deps=[DEDUPLICATED_CONVERSATIONS, EVAL_SETS],
    automation_condition=REBUILD_ON_UPSTREAM_CHANGE,
)
def decontaminated_conversations(
    context: dg.AssetExecutionContext, config: DecontamSettings, storage: DataStorage
) -> dg.MaterializeResult:
    """Deduplicated conversations minus every row whose prompt or response overlaps an eval set: a normalized word
    n-gram (13) in common, a whole short eval item contained, or MinHash similarity to an eval item. Removed rows go
    to `rejected.parquet` with the matched benchmark, item and n-gram; the report is per benchmark. Generic text is
    not evidence: n-grams shared by 3+ eval items, or found in 10+ conversations of this table (defaults).
    Incremental over shards: per-shard results and the table-wide counts behind the 10-conversation cut-off are kept
    with the asset, a new shard is checked alone and only earlier rows whose keys it pushes over the cut-off are
    re-checked; the output equals a full check. A changed eval set or config (or a changed shard) checks it all."""
    df = storage.read_conversations(DEDUPLICATED_CONVERSATIONS)
    eval_df = storage.read_table(EVAL_SETS)
    core = config.to_core()
    state_dir = storage.asset_dir("decontaminated_conversations") / "state"
    result = decontaminate_shards(df, EvalIndex.build(eval_df, core), state_dir, log=context.log.info)
    kept, rejected_df, report = result.kept, result.rejected, result.report
    stored = storage.write_table("decontaminated_conversations", kept)
    rejected = storage.write_table("decontaminated_conversations", rejected_df, name="rejected")
    storage.write_json("decontaminated_conversations", "report", report)
    per_benchmark = [
        {"benchmark": name, "rows_removed": b["rows_removed"], "ngram_matches": b["matches"]["ngram"],
         "minhash_matches": b["matches"]["minhash"], "matched_items": ", ".join(b["matched_item_ids"][:5]),
         "example_ngram": b["example_ngram"] or "", "train_frequent_keys": b["train_frequent_keys"]}
        for name, b in sorted(report["benchmarks"].items())
    ]
    context.log.info(f"kept {kept.height} of {df.height}; {rejected_df.height} contaminated rows removed; new shards "
                     f"{result.new_shards}, reused {len(result.reused_shards)}, re-checked {result.rechecked_rows} rows"
                     + (f"; full check: {result.rebuild_reason}" if result.rebuilt else ""))
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "rows_in": df.height,
            "rows_removed": rejected_df.height,
            "rejected_path": dg.MetadataValue.path(str(rejected.path)),
            "per_benchmark": dg.MetadataValue.md(markdown_table(per_benchmark)),
            "parameters": dg.MetadataValue.json(core.to_json()),
            "new_shards": dg.MetadataValue.json(result.new_shards),
            "reused_shards": len(result.reused_shards),
            "crossed_keys": result.crossed_keys,
            "rechecked_rows": result.rechecked_rows,
            "rebuilt": result.rebuilt,
            "rebuild_reason": result.rebuild_reason or "",
        },
        data_version=dg.DataVersion(stored.content_hash),
    )


@dg.asset_check(asset=decontaminated_conversations, blocking=True,
                description="Re-reads the decontaminated table and the eval sets and re-checks them with an "
                "independent implementation: no normalized 13-gram (or whole short eval item) in common, "
                "boilerplate found in many eval items or in many training conversations excepted. Its parameters "
                "are the stricter of its own floors (assets/decontamination/verify.py: CHECK_FLOORS) and the "
                "removal's settings: configuring the removal weakly cannot weaken this check.")
def no_eval_overlap(storage: DataStorage) -> dg.AssetCheckResult:
    df = storage.read_table("decontaminated_conversations")
    eval_df = storage.read_table(EVAL_SETS)
    verdict = verify_decontaminated(df, storage.read_table("decontaminated_conversations", "rejected"), eval_df,
                                    storage.read_json("decontaminated_conversations", "report"))
    leaks = [leak.__dict__ for leak in verdict.leaks]
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.description,
        metadata={
            "rows_checked": df.height,
            "eval_texts": eval_df.height,
            "leaks_found": len(leaks),
            "parameters": dg.MetadataValue.json(verdict.parameters),
            "check_floors": dg.MetadataValue.json(CHECK_FLOORS),
            "removal_settings": dg.MetadataValue.json(verdict.removal_settings),
            "floors_applied": dg.MetadataValue.json(verdict.overridden),
            "problem": verdict.problem,
            "leaks": dg.MetadataValue.md(markdown_table(leaks) if leaks else "none"),
        },
    )
