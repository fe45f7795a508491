"""Early stopping can act with the default schedule (training.config.TrainConfig.eval_interval), and a run reports
whether it fired and at which step.

Evaluating once per epoch, as the default once did, 2 epochs gave 2 evaluations: patience 2 needs a first evaluation
and 2 more without improvement, so early stopping could never fire.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.training_worker import rows
from training.config import EVALUATIONS_PER_EPOCH, TrainConfig
from training.trainer import train


@pytest.mark.parametrize("epochs", [1, 2, 3])
@pytest.mark.parametrize("steps_per_epoch", [1, 2, 3, 4, 5, 6, 7, 13, 100, 1250])
def test_default_schedule_evaluates_often_enough_for_patience(steps_per_epoch, epochs):
    config = TrainConfig(num_train_epochs=epochs)
    total = steps_per_epoch * epochs
    interval = config.eval_interval(steps_per_epoch, total)
    evaluations = math.ceil(total / interval)  # every `interval` steps and at the last one (the Trainer's rule)
    # a first evaluation, `patience` without improvement, and one more: early stopping can end the run early
    assert evaluations >= min(total, config.early_stopping_patience + 2)
    assert steps_per_epoch // interval >= min(steps_per_epoch, EVALUATIONS_PER_EPOCH)


def test_defaults_give_patience_a_chance():
    config = TrainConfig()
    assert (config.num_train_epochs, config.early_stopping_patience, config.eval_steps) == (2.0, 2, None)
    steps_per_epoch = 10
    interval = config.eval_interval(steps_per_epoch, 2 * steps_per_epoch)
    assert math.ceil(2 * steps_per_epoch / interval) >= config.early_stopping_patience + 1
    assert interval < steps_per_epoch  # not once per epoch


@pytest.mark.parametrize(("fields", "steps_per_epoch", "total", "expected"), [
    ({"eval_steps": 7}, 100, 200, 7),  # set: used as is
    ({}, 100, 200, 25),  # four per epoch
    ({}, 100, 10, 2),  # max_steps=10: at least patience + 2 = 4 evaluations in the run
    ({"early_stopping_patience": 5}, 8, 16, 2),
    ({}, 3, 6, 1),  # short epochs: every step
])
def test_eval_interval(fields, steps_per_epoch, total, expected):
    assert TrainConfig(**fields).eval_interval(steps_per_epoch, total) == expected


def test_early_stopping_fires_with_the_defaults_and_is_reported(tiny_model_dir, tmp_path):
    """Default schedule, patience and epochs; learning rate 0, so the validation loss never improves on the first
    evaluation: the run must stop at the third evaluation (step 3 of 12) and say so. (A learning rate high enough to
    make the loss rise is erratic on the tiny model: it diverges, then often recovers.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(per_device_train_batch_size=8, max_length=256, logging_steps=1, learning_rate=0.0)
        lines: list[str] = []
        result = train(tiny_model_dir, rows(), tmp_path / "model", config, log=lines.append)
    finally:
        torch.set_num_threads(threads)

    early = result.early_stopping
    assert early == {"enabled": True, "patience": 2, "fired": True, "stopped_at_step": 3, "steps_skipped": 9,
                     "eval_steps": 1, "eval_steps_derived": True, "steps_per_epoch": 6, "max_steps": 12,
                     "evaluations": 12}
    assert result.metrics["global_step"] == 3 and result.metrics["best_step"] == 1
    assert "early stopping fired at step 3 of 12" in lines
    lineage = json.loads(result.lineage_path.read_text())
    assert lineage["training"]["early_stopping"] == early
    evaluated = [e["step"] for e in lineage["log_history"] if "eval_loss" in e]
    assert evaluated == [1, 2, 3, 3]  # the last one: train()'s final evaluation of the best checkpoint
    assert "early stopping fired at step 3 of 12" in (result.model_dir / "README.md").read_text()
