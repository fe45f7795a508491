"""Training configuration: one dataclass, defaults from the recommended SFT recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from assets.common.data.config import config_dict

LORA_DEFAULT_LR = 2e-4
FULL_DEFAULT_LR = 1e-5
EVALUATIONS_PER_EPOCH = 4  # with eval_steps unset (see TrainConfig)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is fine-tuned (``training.trainer.train``).

    Validation and checkpoints: the validation loss is computed, and a checkpoint saved, every ``eval_steps``
    optimizer steps and at the last step; the best checkpoint is the model shipped. Early stopping ends the run when
    the validation loss has not improved for ``early_stopping_patience`` evaluations in a row (0: off). With
    ``eval_steps`` unset (the default) the interval is derived from the run's length so that patience can act:
    ``min(steps per epoch // 4, total steps // (patience + 2))``, at least 1: at least four evaluations per epoch,
    and at least ``patience + 2`` in the run (every step in a shorter run): a first one to improve on, ``patience``
    without improvement, and at least one more that early stopping can spare. (Evaluating once per epoch, as before,
    2 epochs with patience 2 gave early stopping no chance to fire.)
    """

    method: Literal["lora", "full"] = "lora"
    # LoRA (ignored for full fine-tuning)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    # optimisation
    learning_rate: float | None = None  # None: 2e-4 for LoRA, 1e-5 for full fine-tuning
    min_lr_ratio: float = 0.1  # cosine decay to 10% of peak
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    num_train_epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs (smoke runs)
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 2048  # longer examples are dropped and counted, never truncated (that would cut EOS)
    packing: bool = False  # padding-free packing, no attention across examples
    # the same examples per step as unpacked, laid end to end in one row (position ids restart per example, no
    # attention across examples: transformers builds the block mask from them), so no padding is computed
    padding_free: bool = False
    # validation and checkpoints
    eval_steps: int | None = None  # None: derived, see eval_interval (at least patience + 2 evaluations)
    early_stopping_patience: int = 2
    save_total_limit: int = 2
    logging_steps: int = 5
    seed: int = 0
    # chat-marker rows a prepared student marks as never trained (chat_markers.json; see training/markers.py):
    # "text_end" = end-of-turn starts from the row of the token the base ends texts with, other markers from the
    # mean; "mean" = all from the mean; "none" = leave them. Their rows are trained besides the LoRA weights.
    marker_init: Literal["text_end", "mean", "none"] = "text_end"
    marker_learning_rate: float | None = None  # None: the run's learning rate; else those rows' own
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    # auto: only when the run's estimated peak memory without it exceeds the budget (training/memory.py)
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    memory_budget_gb: float | None = None  # None: from the training device's memory (training/memory.py)
    # TRL's per-token entropy and mean_token_accuracy: a pass over the whole vocabulary per position, off by default
    token_metrics: bool = False
    extra: dict = field(default_factory=dict)  # passed through to SFTConfig (escape hatch, recorded in lineage)

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_DEFAULT_LR if self.method == "lora" else FULL_DEFAULT_LR

    def eval_interval(self, steps_per_epoch: int, total_steps: int) -> int:
        """Optimizer steps between evaluations (and checkpoints): ``eval_steps``, or the rule in the class docstring."""
        if self.eval_steps:
            return self.eval_steps
        return max(1, min(steps_per_epoch // EVALUATIONS_PER_EPOCH,
                          total_steps // (self.early_stopping_patience + 2)))

    def to_dict(self) -> dict:
        return {**config_dict(self), "effective_learning_rate": self.effective_learning_rate}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known) - {"effective_learning_rate"})
        if unknown:
            raise ValueError(f"training config: unknown field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        if "lora_target_modules" in known:
            known["lora_target_modules"] = tuple(known["lora_target_modules"])
        return cls(**known)
