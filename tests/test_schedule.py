"""A scheduled rebuild keeps the user's model: with SFT_PROFILE naming a profile that sets a non-default teacher
(the tiny test model) and sizes, the weekly schedule, evaluated against a real instance, adds the next shard and
requests its generation alone, with no run config; the run it requests (real vLLM) generates with the profile's
model and sizes; then the automation, not the schedule, requests what follows (deduplication)."""

from __future__ import annotations

import datetime

import dagster as dg
import pytest

from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import (
    GENERATION_SHARDS,
    MAGPIE_CONVERSATIONS,
    TEACHER_MODEL,
    USER_SFT_SOURCES,
    DataStorage,
)
from pipelines.definitions import build_definitions
from pipelines.profiles import PROFILE_ENV, active_profile
from tests.automation_runs import Automation, failures, write_profile

pytestmark = [pytest.mark.vllm]
NUM_CONVERSATIONS = 6


def test_a_scheduled_rebuild_generates_with_the_profiles_model(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SFT_DATA_ROOT", raising=False)
    path = write_profile(tmp_path / "profile.yaml", {
        "ops": {
            "teacher_model": {"config": {"path": str(tiny_model_dir)}},
            "magpie_conversations": {"config": {
                "num_conversations": NUM_CONVERSATIONS, "batch_size": NUM_CONVERSATIONS,
                "instruction": {"max_tokens": 24}, "response": {"max_tokens": 24, "min_p": 0.0}}},
        },
        "resources": {"storage": {"config": {"root": str(tmp_path / "data")}},
                      "engine": {"config": {"max_model_len": 1024, "cpu_kv_cache_gb": 1}}},
    })
    monkeypatch.setenv(PROFILE_ENV, str(path))
    source, profile = active_profile()
    defs = build_definitions(profile, source)
    storage = DataStorage(root=str(tmp_path / "data"))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        auto = Automation(defs, instance)
        # The teacher and the user's SFT sources (none here; the sensor's first observation would build them),
        # materialized as from the UI (the launchpad's defaults: no run config of their own).
        assert auto.launch([TEACHER_MODEL, USER_SFT_SOURCES]).success
        assert storage.read_json(TEACHER_MODEL, "manifest")["path"] == str(tiny_model_dir.resolve())
        assert auto.tick() == []  # the automation sensor's tick before the schedule's

        schedule = defs.resolve_schedule_def("weekly_new_shard")
        monday = datetime.datetime(2026, 1, 5, 3, tzinfo=datetime.UTC)
        context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def(),
                                            scheduled_execution_time=monday)
        (request,) = schedule.evaluate_tick(context).run_requests
        assert request.partition_key == "00000" and instance.has_dynamic_partition(GENERATION_SHARDS.name, "00000")
        assert not request.run_config  # nothing but the profile configures the run
        job = defs.resolve_job_def(schedule.job_name)
        assert set(job.asset_layer.selected_asset_keys) == {MAGPIE_CONVERSATIONS}  # generation only

        result = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags,
                                        run_config=request.run_config)
        assert result.success, failures(result)
        table = storage.read_table(MAGPIE_CONVERSATIONS, "shard-00000")
        report = storage.read_json(MAGPIE_CONVERSATIONS, "report-00000")
        assert table["generator_model_hash"].unique().to_list() == [model_content_hash(tiny_model_dir)]
        assert report["stats"]["attempted"] == NUM_CONVERSATIONS  # the profile's size, not the default 1000
        assert report["sampling"]["response"]["max_tokens"] == 24
        assert report["engine"]["max_model_len"] == 1024  # the profile's engine resource

        # What follows is the automation's: deduplication, because the new shard's data version is new.
        assert auto.tick() == [dg.AssetKey("deduplicated_conversations")]
