"""A test-only code location for tests/ops/test_run_worker_killed.py: one asset in the `gpu` pool, like the project's
engine steps. Its step writes `<HELD_STEP_DIR>/started-<run_id>` holding its pid, waits for `<HELD_STEP_DIR>/release`
(a barrier the test creates), then writes its table through the project's DataStorage."""

import os
import time
from pathlib import Path

import dagster as dg
import polars as pl

from assets.common.orchestration.resources import GPU_POOL, DataStorage

HELD_ASSET = "held_gpu_step"
HELD_JOB = "held_gpu_job"
BARRIER_TIMEOUT_S = 600  # never wait forever: a forgotten barrier fails the step


@dg.asset(name=HELD_ASSET, pool=GPU_POOL)
def held_gpu_step(context: dg.AssetExecutionContext, storage: DataStorage) -> dg.MaterializeResult:
    folder = Path(os.environ["HELD_STEP_DIR"])
    (folder / f"started-{context.run_id}").write_text(str(os.getpid()))
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not (folder / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder / 'release'} did not appear within {BARRIER_TIMEOUT_S} s")
        time.sleep(0.2)
    table = storage.write_table(HELD_ASSET, pl.DataFrame({"run_id": [context.run_id]}))
    return dg.MaterializeResult(metadata={"path": str(table.path), "content_hash": table.content_hash})


defs = dg.Definitions(
    assets=[held_gpu_step],
    jobs=[dg.define_asset_job(HELD_JOB, selection=[HELD_ASSET])],
    resources={"storage": DataStorage(root=os.environ.get("SFT_DATA_ROOT", "data"))},
)
