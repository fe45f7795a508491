"""Two generation shards at once on one machine: two runs of `magpie_conversations` (the way a user launches them:
`dagster asset materialize --partition ...`, each its own process) against one real Dagster instance whose `gpu`
pool limit is 2, each vLLM engine on a core of its own (`engine.parallel_engines: 2`), on the tiny model. Both run,
their steps overlap in time, and their tables equal those of the same shards run one at a time (pool limit 1, where
the second run's step waits for the first's slot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from polars.testing import assert_frame_equal

from assets.common.data.schema import validate_conversations
from assets.common.orchestration.resources import (
    GENERATION_SHARDS,
    MAGPIE_CONVERSATIONS,
    MODEL_MANIFEST,
    TEACHER_MODEL,
    DataStorage,
)

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]
SHARDS = ("00000", "00001")
STEP = "magpie_conversations"
GENERATION = {"num_conversations": 12, "num_turns": 1, "batch_size": 12,
              "instruction": {"max_tokens": 24}, "response": {"max_tokens": 24, "min_p": 0.0}}


def instance_file(home: Path, pool_limit: int) -> None:
    """The project's dagster.yaml with its storage in ``home`` and the `gpu` pool's limit set to ``pool_limit``."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    for key in ("local_artifact_storage", "compute_logs"):
        config[key]["config"]["base_dir"] = str(home / key)
    config["concurrency"]["pools"]["default_limit"] = pool_limit
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


def run_shards(tmp: Path, model_dir: Path, pool_limit: int) -> tuple[DataStorage, dict[str, tuple[float, float]]]:
    """Both shards launched at once as two processes; returns the storage and each shard's step window (start, end)
    from the instance's event log."""
    home, storage = tmp / "dagster", DataStorage(root=str(tmp / "data"))
    home.mkdir(parents=True)
    instance_file(home, pool_limit)
    storage.write_json(TEACHER_MODEL, MODEL_MANIFEST, {"path": str(model_dir), "name": "tiny",
                                                    "content_hash": "tiny-hash"})
    run_config = tmp / "run_config.yaml"
    run_config.write_text(yaml.safe_dump({
        "ops": {STEP: {"config": GENERATION}},
        "resources": {"engine": {"config": {"max_model_len": 512, "cpu_kv_cache_gb": 1,
                                            "parallel_engines": pool_limit}}},
    }))
    env = {**os.environ, "DAGSTER_HOME": str(home), "SFT_DATA_ROOT": storage.root, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(GENERATION_SHARDS.name, list(SHARDS))
    dagster = Path(sys.executable).with_name("dagster")
    procs = [subprocess.Popen([str(dagster), "asset", "materialize", "-m", "pipelines.definitions", "--select", STEP,
                               "--partition", shard, "-c", str(run_config)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for shard in SHARDS]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return storage, {run.tags["dagster/partition"]: step_window(instance, run.run_id)
                         for run in instance.get_runs()}


def step_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    def at(event_type: dg.DagsterEventType) -> float:
        (record,) = [r for r in instance.get_records_for_run(run_id, of_type=event_type).records
                     if r.event_log_entry.step_key == STEP]
        return record.event_log_entry.timestamp

    return at(dg.DagsterEventType.STEP_START), at(dg.DagsterEventType.STEP_SUCCESS)


def overlap(windows: dict[str, tuple[float, float]]) -> float:
    """Seconds during which both steps ran (negative: the gap between them)."""
    (start_a, end_a), (start_b, end_b) = windows.values()
    return min(end_a, end_b) - max(start_a, start_b)


def test_two_shards_generate_at_once_each_engine_on_its_own_core(tiny_model_dir, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores: one per engine")
    storage, windows = run_shards(tmp_path / "limit-2", tiny_model_dir, pool_limit=2)
    assert set(windows) == set(SHARDS)
    assert overlap(windows) > 0, windows  # both steps ran at once
    devices = [storage.read_json(MAGPIE_CONVERSATIONS, f"report-{shard}")["engine"]["devices"] for shard in SHARDS]
    cores = [set(d.split()[1].split(",")) for d in devices]  # "cores 1 (slot 1 of 2)"
    assert cores[0].isdisjoint(cores[1]) and all(len(c) == 1 for c in cores), devices

    sequential, waited = run_shards(tmp_path / "limit-1", tiny_model_dir, pool_limit=1)
    assert overlap(waited) < 0, waited  # launched together, the second step waited for the first's pool slot
    for shard in SHARDS:
        table = storage.read_table(MAGPIE_CONVERSATIONS, f"shard-{shard}")
        validate_conversations(table, f"shard {shard}")
        assert table.height > 6 and (table["shard"] == int(shard)).all()
        assert_frame_equal(table, sequential.read_table(MAGPIE_CONVERSATIONS, f"shard-{shard}"))
    tables = [storage.read_table(MAGPIE_CONVERSATIONS, f"shard-{shard}") for shard in SHARDS]
    assert set(tables[0]["conversation_id"]).isdisjoint(tables[1]["conversation_id"])
