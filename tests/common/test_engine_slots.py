"""Engine slots: engines that run at once on one machine each take a slot of their own (a lock file) and the slot's
share of the cores or GPUs. The engines themselves run in tests/generation/test_parallel_shards.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from assets.common.models.engine import EngineConfig, EngineSlot, bind_devices, slot_share


@pytest.mark.parametrize(("devices", "slots", "per_engine", "expected"), [
    ([0, 1], 2, None, [[0], [1]]),  # two engines on two cores: one core each
    ([0, 1, 2, 3, 4, 5, 6, 7], 2, None, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ([4, 5, 6], 3, None, [[4], [5], [6]]),
    ([0], 2, None, [[0], [0]]),  # more engines than cores: they share
    (["0", "1", "2", "3"], 2, 2, [["0", "1"], ["2", "3"]]),  # GPUs: tensor_parallel_size each
])
def test_each_slot_takes_its_own_share(devices, slots, per_engine, expected):
    assert [slot_share(devices, slot, slots, per_engine) for slot in range(slots)] == expected


def test_two_engines_get_two_slots_and_a_third_waits(tmp_path):
    first, second = EngineSlot(2, tmp_path), EngineSlot(2, tmp_path)
    assert {first.index, second.index} == {0, 1}
    got = []
    waiter = threading.Thread(target=lambda: got.append(EngineSlot(2, tmp_path, poll_seconds=0.05)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # every slot is taken: it waits
    second.release()
    waiter.join(timeout=5)
    assert [slot.index for slot in got] == [second.index]
    first.release()
    got[0].release()


def test_a_slot_held_by_another_process_is_not_taken(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from assets.common.models.engine import EngineSlot; "
        f"s = EngineSlot(2, Path({str(tmp_path)!r})); print(s.index, flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())
        mine = EngineSlot(2, tmp_path)
        assert mine.index == 1 - held
        mine.release()
    finally:
        holder.kill()
        holder.wait()
    assert EngineSlot(1, tmp_path).index == 0  # a killed holder's lock is gone with it


def test_a_slot_binds_the_engine_to_its_cores(monkeypatch, tmp_path):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-3")  # as a previous engine in this process left it
    config = EngineConfig(parallel_engines=2)
    slots = [EngineSlot(2, tmp_path), EngineSlot(2, tmp_path)]
    described = [bind_devices(config, on_gpu=False, slot=slot) for slot in slots]
    assert described == ["cores 0-1 (slot 0 of 2)", "cores 2-3 (slot 1 of 2)"]
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"  # the slot's share, whatever was there before
    assert bind_devices(EngineConfig(), on_gpu=False, slot=None) == "cores 2-3"  # without a slot: left as it is
    for slot in slots:
        slot.release()
