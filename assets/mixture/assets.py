"""`sft_mixture`: the training mixture: task tags, target task weights, train/validation split."""


import dagster as dg

from assets.common.report import markdown_table
from assets.common.resources import REBUILD_ON_UPSTREAM_CHANGE, SFT_MIXTURE, TAGGED_CONVERSATIONS, DataStorage
from assets.mixture.core import MixtureConfig, build_mixture


class MixtureSettings(dg.Config):
    weights: dict[str, float] | None = None
    """Target share per task (code, math, writing, ...); unset = the natural distribution, temperature-scaled."""
    temperature: float = 1.0
    max_rows: int | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    allow_upsampling: bool = False

    def to_core(self) -> MixtureConfig:
        return MixtureConfig(**self.model_dump())


@dg.asset(group_name="mixture", kinds={"polars", "parquet"}, deps=[TAGGED_CONVERSATIONS],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def sft_mixture(
    context: dg.AssetExecutionContext, config: MixtureSettings, storage: DataStorage
) -> dg.MaterializeResult:
    """The SFT mixture: each conversation by its task (the tagging stage's: the judge's category or the fallback
    tagger's), sampled to the target task weights, and split into
    train/validation by a seeded hash of its id (a row's split never changes when other rows are added)."""
    df = storage.read_conversations(TAGGED_CONVERSATIONS)
    result = build_mixture(df, config.to_core())
    stored = storage.write_table(SFT_MIXTURE, result.mixture)
    storage.write_json(SFT_MIXTURE, "report", result.stats)
    per_task = [
        {"task": task, "available": s["available"], "target_fraction": s["train"]["target_fraction"],
         "realized_fraction": s["train"]["realized_fraction"], "train": s["train"]["realized"],
         "validation": s["validation"]["realized"], "shortfall": s["train"]["shortfall"]}
        for task, s in sorted(result.stats["tasks"].items())
    ]
    splits = dict(result.mixture.group_by("split").len().sort("split").iter_rows())
    context.log.info(f"mixture: {splits}")
    if splits.get("train", 0) == 0:
        raise ValueError(f"sft_mixture: no training rows from {df.height} tagged conversations; generate more "
                         "conversations or loosen the filters (see filtered_conversations' and tagged_conversations' "
                         "rejected_by_reason)")
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "train_rows": splits.get("train", 0),
            "validation_rows": splits.get("validation", 0),
            "tasks": dg.MetadataValue.md(markdown_table(per_task)),
            "shortfall": dg.MetadataValue.json(result.stats["shortfall"]),
            "parameters": dg.MetadataValue.json(config.model_dump()),
        },
        data_version=dg.DataVersion(stored.content_hash),
    )

