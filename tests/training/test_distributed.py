"""Multi-process training, as on several GPUs but on CPU: `accelerate launch --multi_gpu --num_processes 2 -m training`
(DDP over gloo) trains the tiny model with the same global batch as one `python -m training` process: the same
number of steps, a final loss within 5% of the single process's, and one writer (rank 0) for the model directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.ops.servers import free_port
from tests.training_worker import TRAIN, VALIDATION
from training.distributed import per_process_batch

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"max_steps": 8, "per_device_train_batch_size": 4, "eval_steps": 4, "logging_steps": 1, "max_length": 256,
          "early_stopping_patience": 0, "seed": 0}


@pytest.mark.parametrize(("batch", "accumulation", "processes", "expected"), [
    (8, 1, 1, (8, 1)), (8, 1, 2, (4, 1)), (8, 1, 8, (1, 1)), (3, 4, 2, (3, 2)), (4, 2, 4, (1, 2)),
])
def test_the_global_batch_is_split_over_the_processes(batch, accumulation, processes, expected):
    assert per_process_batch(batch, accumulation, processes) == expected
    per_process, steps = expected
    assert per_process * steps * processes == batch * accumulation


def test_a_batch_that_cannot_be_split_says_what_to_change():
    with pytest.raises(ValueError, match="multiple of 2"):
        per_process_batch(3, 1, 2)


def train(command: list[str], tiny_model_dir: Path, tmp: Path, name: str) -> tuple[dict, str]:
    data = tmp / "data.parquet"
    if not data.exists():
        pl.DataFrame({"messages": TRAIN + VALIDATION,
                      "split": ["train"] * len(TRAIN) + ["validation"] * len(VALIDATION)}).write_parquet(data)
        (tmp / "config.json").write_text(json.dumps(CONFIG))
    out = tmp / name / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*command, "-m", "training", "--model", str(tiny_model_dir), "--data", str(data),
                           "--output", str(out), "--config", str(tmp / "config.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    rank0 = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank0]"))  # its traceback
    assert proc.returncode == 0, proc.stdout[-3000:] + (rank0 or proc.stderr)[-5000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no leftover temp or checkpoint directory
    return json.loads((out / "lineage.json").read_text()), proc.stdout + proc.stderr


def last_loss(lineage: dict) -> float:
    return [entry["loss"] for entry in lineage["log_history"] if "loss" in entry][-1]


@pytest.mark.e2e
def test_two_processes_train_like_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    single, _ = train([sys.executable], tiny_model_dir, tmp_path, "single")
    # accelerate's torchrun path (`--multi_gpu`); with no GPU the processes train on the CPU over gloo (its `--cpu`
    # flag would start them through MPI)
    launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    double, output = train(launch, tiny_model_dir, tmp_path, "double")

    one, two = single["metrics"], double["metrics"]
    assert (one["processes"], one["per_process_batch"], one["global_batch"]) == (1, 4, 4)
    assert (two["processes"], two["per_process_batch"], two["global_batch"]) == (2, 2, 4)
    assert one["global_step"] == two["global_step"] == CONFIG["max_steps"]
    assert abs(last_loss(double) / last_loss(single) - 1) < 0.05, (last_loss(single), last_loss(double))
    assert abs(two["eval_loss"] / one["eval_loss"] - 1) < 0.05, (one["eval_loss"], two["eval_loss"])
    assert last_loss(single) < [e["loss"] for e in single["log_history"] if "loss" in e][0]  # it did learn
    writers = [line for line in output.splitlines() if "model directory written by process" in line]
    assert len(writers) == 1 and "process 0 of 2" in writers[0], writers
