"""Whether a run needs gradient checkpointing: an estimate of its peak memory against the memory it may use.

Gradient checkpointing keeps only each decoder layer's input and recomputes the rest in the backward pass: it
saves most of the activation memory and costs a second forward (about a quarter more per step on a CPU). So it is
switched on only when the run would not fit without it (``TrainConfig.gradient_checkpointing = "auto"``), decided
before the model is loaded from its ``config.json``, the batch and the longest example, and reported:

- weights (+ gradients and Adam state of what is trained: LoRA adapters are small, full fine-tuning is 16 bytes a
  parameter in fp32);
- activations kept for the backward pass, per token and decoder layer, counted from the layer's shapes: hidden
  size ``h``, attention width ``q`` (heads x head size), key/value width ``kv``, MLP width ``i``; with LoRA every
  adapted linear layer also keeps its dropped-out input. Measured on this project's CPU runs, about
  ``10h + 4q + 4kv + 6i`` values per token and layer without LoRA, plus ``3h + q + 2h + i`` with LoRA on every
  linear layer; with checkpointing, ``h`` per token and layer plus one layer's worth during its recomputation;
- the LM head: TRL's chunked loss projects at most 4,096 tokens x a vocabulary tile at a time (32,768 entries in
  TRL's path, 8,192 in the lean one: :mod:`training.loss`), and its CPU path holds about nine such tiles at once
  in the backward pass, so a 262k vocabulary never materializes ``tokens x vocabulary`` logits (gemma-3-270m's
  would be 4 GB for one batch of 8 x 512); the lean path projects only the trained tokens;
- trained embedding rows (chat markers, :mod:`training.markers`): PEFT merges them into a full copy of the
  embedding for the input and for the tied head, and the head's gradient is a dense one: three ``vocabulary x h``
  matrices;
- a fixed allowance for the framework (Python, torch, tokenizer, data): 2 GB.

The budget is half of the machine's memory (``/proc/meminfo`` ``MemTotal``; 12 GB on a 24 GB machine: the other
half is left to whatever else runs there, e.g. a vLLM engine), or what is available when training starts if that is
less (``MemAvailable``), or ``TrainConfig.memory_budget_gb``. It does not depend on the other processes' momentary
use unless memory is short, so the same run decides the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

GB = 1024**3
FRAMEWORK_BYTES = 2 * GB
LM_HEAD_TOKENS, LM_HEAD_TILES = 4096, 9  # TRL's token chunk; tile-sized temporaries alive at once on CPU
BUDGET_FRACTION = 0.5

Setting = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    hidden: int
    attention: int  # heads x head size
    key_value: int  # key/value heads x head size
    intermediate: int
    layers: int
    vocabulary: int

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """From a Hugging Face ``config.json`` (a multimodal one's ``text_config``)."""
        c = config.get("text_config", config)
        hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        head = int(c.get("head_dim") or hidden // heads)
        layers, vocabulary = int(c["num_hidden_layers"]), int(c["vocab_size"])
        intermediate = int(c["intermediate_size"])
        kv = int(c.get("num_key_value_heads") or heads) * head
        per_layer = hidden * (heads * head) * 2 + hidden * kv * 2 + 3 * hidden * intermediate
        embeddings = vocabulary * hidden * (1 if c.get("tie_word_embeddings", config.get("tie_word_embeddings")) else 2)
        return cls(parameters=layers * per_layer + embeddings, hidden=hidden, attention=heads * head, key_value=kv,
                   intermediate=intermediate, layers=layers, vocabulary=vocabulary)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ModelShape:
        return cls.from_config(json.loads((Path(model_dir) / "config.json").read_text()))


@dataclass(frozen=True)
class MemoryPlan:
    gradient_checkpointing: bool
    reason: str
    setting: str
    tokens_per_batch: int  # batch size x the longest example (or the packed length)
    estimate_gb: float  # peak without checkpointing
    estimate_checkpointed_gb: float
    activations_gb: float  # of which activations, without checkpointing
    lm_head_gb: float
    weights_gb: float
    budget_gb: float
    available_gb: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def activation_values_per_token(shape: ModelShape, lora: bool) -> int:
    """Values one decoder layer keeps for the backward pass, per token (see the module docstring)."""
    h, q, kv, i = shape.hidden, shape.attention, shape.key_value, shape.intermediate
    values = 10 * h + 4 * q + 4 * kv + 6 * i
    return values + (5 * h + q + i if lora else 0)


def plan_memory(shape: ModelShape, tokens_per_batch: int, lora: bool, setting: Setting = "auto",
                budget_gb: float | None = None, available_bytes: int | None = None, bytes_per_value: int = 4,
                trained_tokens: int | None = None, vocabulary_chunk: int = 32768,
                trained_embedding_rows: bool = False) -> MemoryPlan:
    """The estimate and the decision. ``trained_tokens``: tokens of a batch the loss is computed on (the lean head
    projects only those), default all of them; ``vocabulary_chunk``: the head's tile width."""
    available = available_bytes if available_bytes is not None else _meminfo("MemAvailable")
    half = BUDGET_FRACTION * (_meminfo("MemTotal") or 32 * GB)
    budget = budget_gb * GB if budget_gb is not None else min(half, available or half)
    weights = shape.parameters * (bytes_per_value if lora else 16)
    per_layer = activation_values_per_token(shape, lora) * bytes_per_value
    activations = tokens_per_batch * shape.layers * per_layer
    checkpointed = tokens_per_batch * (shape.layers * shape.hidden * bytes_per_value + per_layer)
    head_tokens = min(trained_tokens if trained_tokens is not None else tokens_per_batch, LM_HEAD_TOKENS)
    lm_head = LM_HEAD_TILES * head_tokens * min(shape.vocabulary, vocabulary_chunk) * 4  # fp32 tiles
    if trained_embedding_rows:
        weights += 3 * shape.vocabulary * shape.hidden * bytes_per_value
    without = FRAMEWORK_BYTES + weights + activations + lm_head
    with_checkpointing = FRAMEWORK_BYTES + weights + checkpointed + lm_head
    if setting == "auto":
        use = without > budget
        reason = (f"estimated peak {without / GB:.1f} GB without it {'exceeds' if use else 'fits'} the budget "
                  f"{budget / GB:.1f} GB")
    else:
        use, reason = setting == "on", f"gradient_checkpointing={setting!r} in the config"
    return MemoryPlan(
        gradient_checkpointing=use, reason=reason, setting=setting, tokens_per_batch=tokens_per_batch,
        estimate_gb=round(without / GB, 2), estimate_checkpointed_gb=round(with_checkpointing / GB, 2),
        activations_gb=round(activations / GB, 2), lm_head_gb=round(lm_head / GB, 2),
        weights_gb=round(weights / GB, 2), budget_gb=round(budget / GB, 2),
        available_gb=round(available / GB, 2) if available is not None else None,
    )


def _meminfo(field: str) -> int | None:
    """A ``/proc/meminfo`` field in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
