"""Resuming training: a real training process is killed (SIGKILL) between checkpoints and ``train`` started again
continues from its last complete checkpoint; checkpoints of another run are never resumed; early stopping's state
survives a resume.

Every run here uses one torch thread (the worker through OMP_NUM_THREADS, this process through a fixture): the
killed-and-resumed run and the uninterrupted one then do the same float operations in the same order, and on a shared
2-core machine one thread is also several times faster than two fighting for the cores.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.training_worker import CONFIG, TRAIN, rows
from training.config import TrainConfig
from training.trainer import train

REPO = Path(__file__).resolve().parents[2]
STEP = re.compile(r"^step (\d+)/(\d+): (\{.*\})$")


@pytest.fixture(scope="module", autouse=True)  # module: before the module-scoped runs below
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logged(lines: list[str], key: str = "loss") -> dict[int, float]:
    """{step: value} of ``key`` from the "step N/M: {...}" lines ``train`` logs."""
    out = {}
    for line in lines:
        match = STEP.match(line)
        if match and key in (values := ast.literal_eval(match[3])):
            out[int(match[1])] = values[key]
    return out


def history(log_history: list[dict], key: str) -> dict[int, float]:
    steps = [entry["step"] for entry in log_history if key in entry]
    assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {steps}"
    return {entry["step"]: entry[key] for entry in log_history if key in entry}


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.checkpoints"


class Crash(Exception):
    pass


def crash_at(step: int | None, lines: list[str]):
    """A ``log`` that records lines and raises when step ``step`` (None: any step) is logged: the run stops right
    after the checkpoints of the steps before it were saved (an in-process stand-in for a kill, for cheaper tests)."""

    def log(message: str) -> None:
        lines.append(message)
        if message.startswith("step " if step is None else f"step {step}/"):
            raise Crash(message)

    return log


# --- a real process killed between checkpoints ------------------------------------------------------------------


def kill_once_exists(worker: subprocess.Popen, path: Path, timeout: float) -> threading.Thread:
    """A thread that SIGKILLs the worker's process group as soon as ``path`` exists (or it exits, or time is up)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        try:
            while not path.exists() and worker.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "runs" / "model"
    checkpoints = checkpoint_dir(out)
    worker_log = tmp_path / "worker.log"
    started = time.monotonic()
    with worker_log.open("w") as stdout:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.training_worker", str(tiny_model_dir), str(out)],
            cwd=REPO, start_new_session=True, stdout=stdout, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    # trainer_state.json is the last file the Trainer writes into a checkpoint: once it exists, checkpoint-6 is
    # complete, and the worker is in step 7 (or pausing after logging it), seconds before checkpoint-9
    killer = kill_once_exists(worker, checkpoints / "checkpoint-6" / "trainer_state.json", timeout=150)
    try:
        # meanwhile (the worker spends most of its time starting up and pausing): the uninterrupted reference run
        reference = train(tiny_model_dir, rows(), tmp_path / "reference" / "model", CONFIG,
                          log=lambda _: None)
    finally:
        killer.join()
    killed_after = time.monotonic() - started
    worker_lines = worker_log.read_text().splitlines()
    assert worker.returncode == -signal.SIGKILL, f"worker was not killed mid-run:\n{worker_log.read_text()}"
    assert (checkpoints / "checkpoint-6" / "trainer_state.json").is_file(), worker_log.read_text()

    # killed mid-run: no model directory (not even a half-assembled one beside it), checkpoints 3 and 6 only
    assert sorted(p.name for p in out.parent.iterdir()) == [checkpoints.name]
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    killed_steps = sorted(logged(worker_lines))
    assert killed_steps[:6] == [1, 2, 3, 4, 5, 6] and killed_steps[-1] < 9, worker_lines

    # what a kill while saving checkpoint-9 leaves behind: the adapter written, the trainer state not yet
    partial = checkpoints / "checkpoint-9"
    partial.mkdir()
    shutil.copy(checkpoints / "checkpoint-6" / "adapter_model.safetensors", partial)

    lines: list[str] = []
    resumed_at = time.monotonic()
    result = train(tiny_model_dir, rows(), out, CONFIG, log=lines.append)
    resume_seconds = time.monotonic() - resumed_at

    assert f"discarding incomplete checkpoint {partial}" in lines
    assert f"resuming from {checkpoints / 'checkpoint-6'}" in lines
    assert not any(line.startswith("discarding checkpoints") for line in lines)
    # training continued at step 7: steps 1-6 were not trained again
    assert sorted(logged(lines)) == [7, 8, 9, 10, 11, 12]
    assert sorted(logged(lines, "eval_loss")) == [9, 12]
    assert result.metrics["global_step"] == 12 and result.metrics["resumed_from_step"] == 6

    # a complete model directory, and no checkpoints left
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "lineage.json",
                 "README.md", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
    assert not (tmp_path / "reference" / f".{out.name}.checkpoints").exists()

    # the recorded history is one run: steps 1-6 from the killed process (restored with checkpoint-6), 7-12 from
    # this one, each once, the first six exactly what the killed process logged
    lineage = json.loads((out / "lineage.json").read_text())
    train_loss = history(lineage["log_history"], "loss")
    assert sorted(train_loss) == list(range(1, 13))
    killed_loss = logged(worker_lines)
    assert all(round(train_loss[step], 4) == killed_loss[step] for step in range(1, 7))
    evaluated = [entry["step"] for entry in lineage["log_history"] if "eval_loss" in entry]
    assert evaluated == [3, 6, 9, 12, 12]  # the last one: train()'s final evaluate()
    assert lineage["metrics"]["resumed_from_step"] == 6

    # the same as an uninterrupted run of the same config: same steps, and on CPU with one thread the same numbers
    # (batches 7-12 of the same shuffled epoch, RNG state restored: dropout draws the same masks)
    assert reference.metrics["global_step"] == result.metrics["global_step"] == 12
    assert reference.metrics["best_step"] == result.metrics["best_step"]
    reference_loss = history(reference.log_history, "loss")
    assert sorted(reference_loss) == sorted(train_loss)
    for step, loss in reference_loss.items():
        assert train_loss[step] == pytest.approx(loss, abs=1e-4), step
    assert result.metrics["eval_loss"] == pytest.approx(reference.metrics["eval_loss"], abs=1e-4)
    assert result.metrics["best_eval_loss"] == pytest.approx(reference.metrics["best_eval_loss"], abs=1e-4)
    print(f"worker killed after {killed_after:.1f}s; resumed run {resume_seconds:.1f}s; "
          f"eval_loss resumed {result.metrics['eval_loss']:.6f} vs uninterrupted {reference.metrics['eval_loss']:.6f}")


# --- checkpoints of another run are discarded, never resumed -------------------------------------------------------

SMALL = TrainConfig(max_steps=4, eval_steps=2, logging_steps=1, per_device_train_batch_size=4, max_length=256,
                    save_total_limit=10, seed=0, early_stopping_patience=0)


@pytest.fixture(scope="module")
def crashed_run(tiny_model_dir, tmp_path_factory):
    """The checkpoint directory of a SMALL run stopped after checkpoint-2 (kept aside: each test gets a copy)."""
    out = tmp_path_factory.mktemp("crashed") / "model"
    with pytest.raises(Crash):
        train(tiny_model_dir, rows(), out, SMALL, log=crash_at(3, []))
    assert (checkpoint_dir(out) / "checkpoint-2" / "trainer_state.json").is_file()
    return checkpoint_dir(out)


@pytest.mark.parametrize("change", ["nothing", "config", "data", "base model", "damaged fingerprint"])
def test_checkpoints_resume_only_into_the_same_run(change, crashed_run, tiny_model_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(crashed_run, checkpoint_dir(out))
    model, data, config = tiny_model_dir, TRAIN, SMALL
    if change == "config":
        config = replace(SMALL, learning_rate=1e-4)
    elif change == "data":
        data = TRAIN[:-4] + TRAIN[-3:]  # one conversation fewer
    elif change == "base model":
        model = shutil.copytree(tiny_model_dir, tmp_path / "other-base")
    elif change == "damaged fingerprint":  # or none: checkpoints from before fingerprints, or cut short
        (checkpoint_dir(out) / "fingerprint.json").write_text("{")

    lines: list[str] = []
    with pytest.raises(Crash):  # stop at the first step: all that matters is where training starts
        train(model, rows(data), out, config, log=crash_at(None, lines))
    first_step = min(logged(lines))
    if change == "nothing":
        assert f"resuming from {checkpoint_dir(out) / 'checkpoint-2'}" in lines
        assert not any(line.startswith("discarding") for line in lines)
        assert first_step == 3
    else:
        assert f"discarding checkpoints in {checkpoint_dir(out)}: made with another base model, config or data" in lines
        assert not any(line.startswith("resuming") for line in lines)
        assert first_step == 1  # trained from the start
        assert not (checkpoint_dir(out) / "checkpoint-2").exists()


# --- early stopping's patience counter survives a resume -------------------------------------------------------


def test_early_stopping_patience_survives_a_resume(tiny_model_dir, tmp_path):
    """Learning rate 0: the validation loss never improves after the first evaluation (step 2), so patience 3 stops
    an uninterrupted run at step 8 (no improvement at 4, 6, 8). Crashed after checkpoint-6 (counter at 2) and resumed,
    the run must stop at 8 too; with the counter reset on resume it would go on to 12."""
    config = TrainConfig(max_steps=16, eval_steps=2, logging_steps=1, per_device_train_batch_size=4, max_length=256,
                         save_total_limit=10, seed=0, early_stopping_patience=3, learning_rate=0.0)
    out = tmp_path / "model"
    with pytest.raises(Crash):
        train(tiny_model_dir, rows(), out, config, log=crash_at(7, []))
    state = json.loads((checkpoint_dir(out) / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"] == {"early_stopping_patience_counter": 2}

    lines: list[str] = []
    result = train(tiny_model_dir, rows(), out, config, log=lines.append)
    assert f"resuming from {checkpoint_dir(out) / 'checkpoint-6'}" in lines
    assert sorted(logged(lines)) == [7, 8]
    assert result.metrics["global_step"] == 8
    assert result.metrics["best_step"] == 2
