"""Jobs, schedules and automation conditions."""

from __future__ import annotations

import dagster as dg

from pipelines.profiles import load_profile

# Retrain from base whenever any upstream data changes (sft_model's condition); the rest is rebuilt on schedule.
RETRAIN_ON_UPSTREAM_CHANGE = dg.AutomationCondition.eager()

ALL_ASSETS = dg.AssetSelection.all()
DATASET_ASSETS = ALL_ASSETS - dg.AssetSelection.assets("sft_model")

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
    description="The whole graph on the embedded SmolLM2-135M-Instruct, sized for a 2-core CPU (profiles/demo.yaml).",
)
dataset_rebuild = dg.define_asset_job(
    "dataset_rebuild",
    selection=DATASET_ASSETS,
    description="Regenerate and re-filter the SFT dataset (training follows via sft_model's automation condition).",
)

weekly_dataset_rebuild = dg.ScheduleDefinition(
    job=dataset_rebuild,
    cron_schedule="0 3 * * 1",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly dataset rebuild (off by default; turn it on in the UI).",
)

jobs = [sft_pipeline, sft_demo, dataset_rebuild]
schedules = [weekly_dataset_rebuild]
