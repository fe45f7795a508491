"""Issue 18 fault (f): a run worker SIGKILLed mid-step, against a real deployment (`dagster dev`: webserver, daemon
and the code server that launches runs, as `make dev` starts them). The run is launched through the webserver's
GraphQL API, so the default run launcher starts it in the code server, which notices the dead run worker, reports the
crash and fails the run; run monitoring frees the `gpu` slot the dead step still holds; run retries re-execute the run
once, and the retry (which needs that slot: the pool's limit is 1) materializes the asset once.

The instance is this project's dagster.yaml with two settings shortened so the test takes seconds, not minutes:
`run_monitoring.poll_interval_seconds` (30 -> 1) and `free_slots_after_run_end_seconds` (60 -> 3). The code location
is tests/ops/held_gpu_location.py: one asset in the `gpu` pool whose step waits for a barrier file."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RETRY_NUMBER_TAG, WILL_RETRY_TAG
from dagster_graphql import DagsterGraphQLClient

from assets.common.orchestration.resources import GPU_POOL
from tests.ops.held_gpu_location import HELD_ASSET, HELD_JOB
from tests.ops.servers import REPO, Stopped, free_port, instance_dir, log_tail, process_group, wait_for_http

pytestmark = pytest.mark.daemon

LOCATION = Path(__file__).with_name("held_gpu_location.py")
WAIT_S = 240  # any one wait; the machine may be busy


def shortened_instance(home: Path) -> Path:
    """The project's dagster.yaml (storage moved under `home`), its run monitoring polled every second."""
    instance_dir(home)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["run_retries"] == {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}
    assert config["concurrency"]["pools"]["default_limit"] == 1
    config["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=3)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


def wait_until(what: str, check, log: Path, server):
    """Poll `check` until it returns something truthy; fail naming `what`, with the dagster dev log tail."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"dagster dev exited ({server.returncode}) while waiting for {what}:\n"
                                 f"{log_tail(log)}")
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {WAIT_S} s; dagster dev log {log}:\n{log_tail(log, 60)}")


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(parent_pid(int(stat.parent.name)), []).append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        found += (kids := children.get(todo.pop(), []))
        todo += kids
    return found


def held_slots(instance: DagsterInstance) -> list[tuple[str, str]]:
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return [(slot.run_id, slot.step_key) for slot in info.claimed_slots]


def test_a_sigkilled_run_worker_fails_its_run_frees_its_gpu_slot_and_is_rebuilt_once(tmp_path):
    home, data, held = shortened_instance(tmp_path / "dagster_home"), tmp_path / "data", tmp_path / "held"
    held.mkdir()
    log, port, stopped = tmp_path / "dagster-dev.log", free_port(), list[Stopped]()
    env = {**os.environ, "DAGSTER_HOME": str(home), "SFT_DATA_ROOT": str(data), "HELD_STEP_DIR": str(held),
           "PYTHONUNBUFFERED": "1"}
    dagster = Path(sys.executable).parent / "dagster"
    print(f"\ndagster dev log: {log}")
    # The instance's SQLite storage is created here first: created by two processes at once, it can fail to start.
    with DagsterInstance.from_config(str(home)) as instance, \
            process_group([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-f", str(LOCATION)],
                          env=env, cwd=REPO, log=log, stopped=stopped) as server:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", server, log, timeout=WAIT_S)
        first = DagsterGraphQLClient("127.0.0.1", port_number=port).submit_job_execution(HELD_JOB)

        # The step runs (and holds the pool's only slot); its parent is the run worker the code server started.
        marker = held / f"started-{first}"
        step_pid = int(wait_until("the step of the first run to start",
                                  lambda: marker.exists() and marker.read_text(), log, server))
        worker = parent_pid(step_pid)
        code_server = command_line(parent_pid(worker))
        assert "dagster" in code_server and "grpc" in code_server, code_server
        assert held_slots(instance) == [(first, HELD_ASSET)]

        # SIGKILL the run worker, then what it had started (its step process): a lost machine loses both. Left
        # alive, the orphaned step would finish later and write into the failed run.
        orphans = descendants(worker)
        assert step_pid in orphans
        os.kill(worker, signal.SIGKILL)
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):  # e.g. a helper that ended with its parent
                os.kill(pid, signal.SIGKILL)
        (held / "release").touch()  # from now on a step runs through; the retry still needs the slot

        wait_until("the first run to be marked FAILURE",
                   lambda: instance.get_run_by_id(first).status == DagsterRunStatus.FAILURE, log, server)
        crash = [e.message for e in instance.all_logs(first, of_type=DagsterEventType.ENGINE_EVENT)
                 if "Run execution process for" in e.message]
        assert len(crash) == 1 and f"Run execution process for {first} was terminated by signal 9 (SIGKILL)" \
            in crash[0], crash
        print(f"run worker {worker} (code server: {code_server[:80]}), step {step_pid}\n{crash[0][:120]}")
        print(f"gpu slots held after the failure: {held_slots(instance)}")

        # Only run monitoring frees a finished run's slots (its log line says nothing: Dagster 1.13's SQL storage
        # returns no count); with `free_slots_after_run_end_seconds` unset this wait times out.
        wait_until("the dead run's gpu slot to be freed", lambda: first not in dict(held_slots(instance)), log, server)
        retry = wait_until("the retry run to finish", lambda: [
            r for r in instance.get_runs() if r.tags.get(PARENT_RUN_ID_TAG) == first
            and r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)], log, server)
        retries = [r for r in instance.get_runs() if r.tags.get(PARENT_RUN_ID_TAG) == first]
        assert [(r.status, r.tags.get(RETRY_NUMBER_TAG)) for r in retries] == [(DagsterRunStatus.SUCCESS, "1")], \
            f"{retries}\n{log_tail(log, 60)}"
        second = retry[0].run_id
        assert instance.get_run_by_id(first).tags.get(WILL_RETRY_TAG) == "true"

        # One materialization, by the retry; one table version; no slot held; no third run.
        materializations = instance.fetch_materializations(AssetKey(HELD_ASSET), limit=10).records
        assert [m.run_id for m in materializations] == [second]
        versions = sorted((data / HELD_ASSET / "data").glob("*.parquet"))
        assert len(versions) == 1, versions
        assert held_slots(instance) == []
        assert {r.run_id for r in instance.get_runs()} == {first, second}
        assert sorted(p.name for p in held.glob("started-*")) == sorted([f"started-{first}", f"started-{second}"])
    assert stopped and not stopped[0].left, stopped
