"""Jobs, schedules and automation conditions."""

from __future__ import annotations

import dagster as dg

from assets.common.resources import GENERATION_SHARDS, SFT_MODEL
from pipelines.profiles import load_profile
from pipelines.shards import next_shard

ALL_ASSETS = dg.AssetSelection.all()
DATASET_ASSETS = ALL_ASSETS - dg.AssetSelection.assets(SFT_MODEL).downstream()

sft_pipeline = dg.define_asset_job(
    "sft_pipeline",
    selection=ALL_ASSETS,
    description="The whole graph with the recommended (production) defaults; set the model and sizes in the "
    "launchpad or start from profiles/gpu-example.yaml.",
)
sft_demo = dg.define_asset_job(
    "sft_demo",
    selection=ALL_ASSETS,
    config=load_profile("demo"),
    description="The whole graph on the embedded models (teacher SmolLM2-135M-Instruct, student gemma-3-270m), sized "
    "for a 2-core CPU (profiles/demo.yaml).",
)
dataset_rebuild = dg.define_asset_job(
    "dataset_rebuild",
    selection=DATASET_ASSETS,
    description="Regenerate and re-filter the SFT dataset (training follows via sft_model's automation condition).",
)


@dg.schedule(job=dataset_rebuild, cron_schedule="0 3 * * 1", default_status=dg.DefaultScheduleStatus.STOPPED)
def weekly_new_shard(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Weekly: add the next generation shard and rebuild the dataset with it (dedup compares only the new shard
    against its index); `sft_model` then retrains from base. Off by default; turn it on in the UI."""
    key = next_shard(context.instance)
    context.instance.add_dynamic_partitions(GENERATION_SHARDS.name, [key])
    return dg.RunRequest(run_key=f"shard-{key}", partition_key=key)

jobs = [sft_pipeline, sft_demo, dataset_rebuild]
schedules = [weekly_new_shard]
