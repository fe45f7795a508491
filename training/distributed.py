"""Training in several processes (no Dagster here): ``accelerate launch --num_processes N -m training ...`` runs N
copies of ``python -m training`` that train one model together, data parallel (DDP; gloo on CPUs, NCCL on GPUs;
FSDP through an ``accelerate config`` file). The Trainer synchronises the gradients; this module keeps the rest
right:

- **The same recipe at any process count.** The config's batch (``per_device_train_batch_size`` x
  ``gradient_accumulation_steps``, what one process trains on per optimizer step) is the *global* batch; with N
  processes each takes 1/N of it (the per-process batch, else the accumulation steps, divided by N), so the number of
  optimizer steps, the learning-rate schedule and the loss match a single-process run.
- **One writer.** Only the main process (rank 0) writes the model directory, the lineage and the checkpoints
  bookkeeping; the others wait for it (``training.trainer``).
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    """How many processes train together (``WORLD_SIZE``, set by accelerate launch / torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_process_batch(batch: int, accumulation: int, processes: int) -> tuple[int, int]:
    """(per-process batch, accumulation steps) giving the global batch ``batch`` x ``accumulation`` over
    ``processes`` processes."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if batch % processes == 0:
        return batch // processes, accumulation
    if accumulation % processes == 0:
        return batch, accumulation // processes
    raise ValueError(f"per_device_train_batch_size={batch} x gradient_accumulation_steps={accumulation} (the global "
                     f"batch) cannot be split evenly over {processes} processes: make per_device_train_batch_size or "
                     f"gradient_accumulation_steps a multiple of {processes}")


def batch_settings(batch: int, accumulation: int) -> dict[str, Any]:
    """The Trainer's batch arguments for this process, and what they add up to (recorded in the metrics)."""
    processes = world_size()
    per_process, steps = per_process_batch(batch, accumulation, processes)
    return {"processes": processes, "per_process_batch": per_process, "gradient_accumulation_steps": steps,
            "global_batch": per_process * steps * processes}


def process_state():
    """Accelerate's view of this process (rank, main or not, barriers); a single process is its own main process.
    Without a GPU, `cpu=True` (as the Trainer asks for there): else accelerate sees no distributed run on a CPU and
    every process would think it is the main one."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
