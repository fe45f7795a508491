"""Jobs, the schedule and the automation sensor.

Runs of every kind read the same configuration: the profile named by SFT_PROFILE is the assets' config defaults and
the resources (pipelines/profiles.py), so no job, schedule or sensor passes run config of its own (`sft_demo` pins
the demo profile for `make demo`). The schedule only adds a generation shard and generates it; everything downstream
is rebuilt by the assets' automation conditions (`REBUILD_ON_UPSTREAM_CHANGE`: when an asset was built from input
data versions that are no longer current), evaluated by the automation sensor, which is on by default: one mechanism,
so nothing is rebuilt twice.
"""

from __future__ import annotations

import dagster as dg

from assets.common.orchestration.resources import GENERATION_SHARDS, MAGPIE_CONVERSATIONS, SFT_MODEL
from pipelines.profiles import load_profile
from pipelines.shards import next_shard

ALL_ASSETS = dg.AssetSelection.all()
DATASET_ASSETS = ALL_ASSETS - dg.AssetSelection.assets(SFT_MODEL).downstream()

sft_pipeline = dg.define_asset_job(
    "sft_pipeline",
    selection=ALL_ASSETS,
    description="The whole graph with the active profile's settings (SFT_PROFILE; unset: the recommended "
    "production defaults); start from profiles/gpu-example.yaml for real models.",
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
    description="Regenerate and re-filter the SFT dataset now (training follows via sft_model's automation "
    "condition when the mixture's data version changed).",
)
shard_generation = dg.define_asset_job(
    "shard_generation",
    selection=dg.AssetSelection.assets(MAGPIE_CONVERSATIONS),
    description="Generate one shard (a partition of magpie_conversations); the automation sensor does the rest.",
)


@dg.schedule(job=shard_generation, cron_schedule="0 3 * * 1", default_status=dg.DefaultScheduleStatus.STOPPED)
def weekly_new_shard(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Weekly: add the next generation shard and generate it (with the profile's settings). Deduplication then
    compares only the new shard against its index, and every asset downstream is rebuilt by automation, once, when
    its input's data version changed; `sft_model` retrains from base. Off by default; turn it on in the UI."""
    key = next_shard(context.instance)
    context.instance.add_dynamic_partitions(GENERATION_SHARDS.name, [key])
    return dg.RunRequest(run_key=f"shard-{key}", partition_key=key)


# Evaluates every asset's automation condition (and observes the external inputs) every 30 s. On by default:
# a new shard, a changed model directory or eval file rebuilds what depends on it without anyone switching it on.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "rebuild_on_upstream_change",
    target=dg.AssetSelection.all(include_sources=True),  # the external inputs (observable) too
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    # the conditions include Python ones (BuiltFromOldInputs, AnyAncestorPending in
    # assets/common/orchestration/resources.py),
    # which the daemon cannot deserialize: they are evaluated in the code location's server
    use_user_code_server=True,
    description="Rebuilds assets built from old upstream data versions (REBUILD_ON_UPSTREAM_CHANGE in "
    "assets/common/orchestration/resources.py) and observes the external inputs; on by default.",
)

jobs = [sft_pipeline, sft_demo, dataset_rebuild, shard_generation]
schedules = [weekly_new_shard]
