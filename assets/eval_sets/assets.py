"""`eval_sets`: the benchmark texts training data must not overlap (decontamination references only)."""


import dagster as dg
import polars as pl

from assets.common.data.report import markdown_table
from assets.common.orchestration.resources import (
    EVAL_SETS,
    REBUILD_ON_UPSTREAM_CHANGE,
    USER_EVAL_FILES,
    DataStorage,
    observed_external_inputs,
)
from assets.eval_sets.core import (
    BUNDLED_BENCHMARKS,
    EVAL_SET_DESCRIPTIONS,
    bundled_sources,
    load_bundled_eval_sets,
    load_user_eval_file,
)


class UserEvalFile(dg.Config):
    path: str
    """A JSONL (one object per line) or Parquet file of eval texts."""
    text_field: str = "text"
    id_field: str | None = None
    benchmark: str | None = None
    """Name to report matches under; default: the file name without suffix."""


class EvalSetsConfig(dg.Config):
    benchmarks: list[str] = list(BUNDLED_BENCHMARKS)
    """Bundled benchmarks to decontaminate against (all by default)."""
    user_files: list[UserEvalFile] = []


user_eval_files = observed_external_inputs(
    USER_EVAL_FILES, "user_eval_files", lambda inputs: inputs.user_eval_files, "none", group="data", kinds={"parquet"},
    description="The user's eval files the profile names (`eval_sets.user_files`), observed: their data version is "
    "the hash of their contents (`none` when there are none).")


@dg.asset(group_name="data", kinds={"parquet"}, deps=[USER_EVAL_FILES],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def eval_sets(
    context: dg.AssetExecutionContext, config: EvalSetsConfig, storage: DataStorage
) -> dg.MaterializeResult:
    """Every prompt, turn and reference answer of the eval benchmarks (HumanEval, MT-Bench, IFEval, AlpacaEval,
    Arena-Hard, IFBench, plus user files) as one table: benchmark, item_id, field, text, source. Used only to
    decontaminate training data, never to train."""
    frames = [load_bundled_eval_sets(config.benchmarks)]
    for user in config.user_files:
        frames.append(load_user_eval_file(user.path, user.text_field, user.id_field, user.benchmark))
    df = pl.concat(frames).sort("benchmark", "item_id", "field")
    stored = storage.write_table(EVAL_SETS, df, descriptions=EVAL_SET_DESCRIPTIONS)
    counts = df.group_by("benchmark").agg(items=pl.col("item_id").n_unique(), texts=pl.len()).sort("benchmark")
    sources = {**{b: s for b, s in bundled_sources().items() if b in config.benchmarks},
               **{u.benchmark or u.path: u.path for u in config.user_files}}
    storage.write_json(EVAL_SETS, "report", {"benchmarks": counts.to_dicts(), "sources": sources})
    context.log.info(f"{df.height} eval texts from {counts.height} benchmarks")
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "benchmarks": dg.MetadataValue.md(markdown_table(counts)),
            "sources": dg.MetadataValue.json(sources),
        },
        data_version=dg.DataVersion(stored.content_hash),
    )

