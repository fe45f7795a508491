"""`filtered_conversations`: quality filters (empty, truncated, template leak, length, repetition)."""


import dagster as dg

from assets.common.data.config import config_dict
from assets.common.data.report import markdown_table
from assets.common.orchestration.resources import (
    BASE_MODEL,
    DECONTAMINATED_CONVERSATIONS,
    FILTERED_CONVERSATIONS,
    MODEL_MANIFEST,
    REBUILD_ON_UPSTREAM_CHANGE,
    TEACHER_MODEL,
    DataStorage,
)
from assets.filtering.core import FilterConfig, truncated_messages
from assets.filtering.incremental import filter_shards


class FilterSettings(dg.Config):
    min_instruction_chars: int = 8
    max_instruction_chars: int | None = 4000
    min_response_chars: int = 16
    max_response_chars: int | None = 8000
    require_stop: bool = True
    """Reject a conversation when any generated message hit the token limit instead of ending its turn."""
    repetition_ngram: int = 3
    max_duplicate_ngram_char_fraction: float | None = 0.3
    max_duplicate_line_fraction: float | None = 0.3
    extra_special_tokens: list[str] = []
    """Strings that must not appear in any message, besides the teacher's special tokens and the student's."""

    def to_core(self, special_tokens: list[str], markers: list[str] = ()) -> FilterConfig:
        """``special_tokens``: the teacher's; ``markers``: the student's template markers (both are checked)."""
        fields = self.model_dump()
        fields.pop("extra_special_tokens")
        return FilterConfig(**fields, special_tokens=tuple(sorted({*special_tokens, *self.extra_special_tokens})),
                            template_markers=tuple(sorted(markers)))


@dg.asset(group_name="data", kinds={"polars", "parquet"},
          deps=[DECONTAMINATED_CONVERSATIONS, TEACHER_MODEL, BASE_MODEL],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def filtered_conversations(
    context: dg.AssetExecutionContext, config: FilterSettings, storage: DataStorage
) -> dg.MaterializeResult:
    """Conversations that pass the quality rules, in order: empty, truncated (no end-of-turn), template-token leak,
    length bounds, Gopher repetition. Rejected rows are kept in `rejected.parquet` with the first failed rule.
    Incremental over shards: each rule judges a row alone, so every shard's verdicts are kept with the asset (named by
    the shard's content, the thresholds and the code) and only shards not seen before are checked."""
    teacher = storage.read_json(TEACHER_MODEL, MODEL_MANIFEST)  # its special tokens and the student's template
    student = storage.read_json(BASE_MODEL, MODEL_MANIFEST)  # markers: text the student would read as structure
    core = config.to_core(teacher["special_tokens"], student["special_tokens"])  # template_leak names which matched
    df = storage.read_conversations(DECONTAMINATED_CONVERSATIONS)
    incremental = filter_shards(df, core, storage.asset_dir(FILTERED_CONVERSATIONS) / "shard_results")
    result = incremental.result
    stored = storage.write_table(FILTERED_CONVERSATIONS, result.kept)
    rejected = storage.write_table(FILTERED_CONVERSATIONS, result.rejected, name="rejected")
    reasons = result.rejected.group_by("reason").len().sort("reason")
    report = {
        "thresholds": config_dict(core),
        "funnel": result.funnel,
        "rejected_by_reason": dict(reasons.iter_rows()),
        "truncated_by_message": truncated_messages(result.rejected),  # which message hit the token limit
    }
    shards = {"shards_computed": len(incremental.computed_shards), "shards_reused": len(incremental.reused_shards)}
    storage.write_json(FILTERED_CONVERSATIONS, "report", report)
    context.log.info(f"kept {result.kept.height} of {df.height}; rejected {dict(reasons.iter_rows())}; shards "
                     f"checked {incremental.computed_shards}, reused {len(incremental.reused_shards)}")
    examples = result.rejected.group_by("reason", maintain_order=True).first().select("reason", "detail")
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "rows_in": df.height,
            "rows_rejected": result.rejected.height,
            **shards,
            "rejected_path": dg.MetadataValue.path(str(rejected.path)),
            "rejected_by_reason": dg.MetadataValue.json(report["rejected_by_reason"]),
            "truncated_by_message": dg.MetadataValue.json(report["truncated_by_message"]),
            "funnel": dg.MetadataValue.md(markdown_table(result.funnel)),
            "rejection_examples": dg.MetadataValue.md(markdown_table(examples)),
            "thresholds": dg.MetadataValue.json({k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in report["thresholds"].items()}),
        },
        data_version=dg.DataVersion(stored.content_hash),
    )

