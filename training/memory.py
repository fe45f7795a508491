"""Whether a run needs gradient checkpointing: an estimate of its peak memory against the memory it may use.

Gradient checkpointing keeps only each decoder layer's input and recomputes the rest in the backward pass: it
saves most of the activation memory and costs a second forward (about a quarter more per step on a CPU). So it is
switched on only when the run would not fit without it (``TrainConfig.gradient_checkpointing = "auto"``), decided
before the model is loaded from its ``config.json`` and the most tokens one step holds (the batch times its longest
example; padding-free, the batch's longest examples end to end), and reported:

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

The budget is a share of the memory of the device the run trains on (:func:`device_memory`): on a GPU its CUDA
memory (``torch.cuda.mem_get_info`` of this process's device, ``LOCAL_RANK`` under torchrun), on a CPU the host's RAM
(``/proc/meminfo``). A CPU run gets half of it (``MemTotal``; 12 GB on a 24 GB machine: the other half is left to
whatever else runs there, e.g. a vLLM engine); a GPU run 80% of its device (it holds the ``gpu`` pool; the rest
is for the CUDA context and the caching allocator's fragmentation). Either is capped by what is free when training
starts (``MemAvailable``, CUDA's free memory), or replaced by ``TrainConfig.memory_budget_gb``. It does not depend
on the other processes' momentary use unless memory is short, so the same run decides the same way. The plan
reports the device, its total and free memory and where they were read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

GB = 1024**3
FRAMEWORK_BYTES = 2 * GB
LM_HEAD_TOKENS, LM_HEAD_TILES = 4096, 9  # TRL's token chunk; tile-sized temporaries alive at once on CPU
BUDGET_FRACTION = {"cpu": 0.5, "cuda": 0.8}  # of the training device's total memory (module docstring)

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
class DeviceMemory:
    """The memory of the device a run trains on, and where it was read."""

    device: str  # "cpu", "cuda:0", ...
    total_bytes: int
    free_bytes: int | None  # None: unknown
    source: str

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]


def device_memory(cuda: Any = None) -> DeviceMemory:
    """The memory of the device this process trains on: its CUDA device when there is one (as the trainer decides:
    ``torch.cuda.is_available()``; the device is ``LOCAL_RANK``'s under torchrun, else the current one), else the
    host's RAM. ``cuda``: the ``torch.cuda`` module, or a stand-in with ``is_available``, ``current_device`` and
    ``mem_get_info`` (how a test plays a GPU host)."""
    if cuda is None:
        import torch

        cuda = torch.cuda
    if cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", cuda.current_device()))
        free, total = cuda.mem_get_info(index)
        return DeviceMemory(f"cuda:{index}", int(total), int(free), "torch.cuda.mem_get_info")
    total = _meminfo("MemTotal")
    return DeviceMemory("cpu", total or 32 * GB, _meminfo("MemAvailable"),
                        "/proc/meminfo" if total else "/proc/meminfo unreadable: 32 GB assumed")


@dataclass(frozen=True)
class MemoryPlan:
    gradient_checkpointing: bool
    reason: str
    setting: str
    tokens_per_batch: int  # the most tokens one step holds (training.trainer.tokens_per_batch)
    estimate_gb: float  # peak without checkpointing
    estimate_checkpointed_gb: float
    activations_gb: float  # of which activations, without checkpointing
    lm_head_gb: float
    weights_gb: float
    budget_gb: float
    available_gb: float | None  # free on the device when the plan was made
    device: str  # the device the run trains on, whose memory is the budget's
    device_total_gb: float
    budget_rule: str  # how the budget was set
    memory_source: str  # where the device's memory was read

    def to_dict(self) -> dict:
        return asdict(self)


def activation_values_per_token(shape: ModelShape, lora: bool) -> int:
    """Values one decoder layer keeps for the backward pass, per token (see the module docstring)."""
    h, q, kv, i = shape.hidden, shape.attention, shape.key_value, shape.intermediate
    values = 10 * h + 4 * q + 4 * kv + 6 * i
    return values + (5 * h + q + i if lora else 0)


def plan_memory(shape: ModelShape, tokens_per_batch: int, lora: bool, setting: Setting = "auto",
                budget_gb: float | None = None, memory: DeviceMemory | None = None, bytes_per_value: int = 4,
                trained_tokens: int | None = None, vocabulary_chunk: int = 32768,
                trained_embedding_rows: bool = False) -> MemoryPlan:
    """The estimate and the decision. ``memory``: the training device's (default :func:`device_memory`);
    ``trained_tokens``: tokens of a batch the loss is computed on (the lean head projects only those), default all of
    them; ``vocabulary_chunk``: the head's tile width."""
    memory = memory or device_memory()
    budget, rule = _budget(memory, budget_gb)
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
                  f"{budget / GB:.1f} GB ({rule})")
    else:
        use, reason = setting == "on", f"gradient_checkpointing={setting!r} in the config"
    return MemoryPlan(
        gradient_checkpointing=use, reason=reason, setting=setting, tokens_per_batch=tokens_per_batch,
        estimate_gb=round(without / GB, 2), estimate_checkpointed_gb=round(with_checkpointing / GB, 2),
        activations_gb=round(activations / GB, 2), lm_head_gb=round(lm_head / GB, 2),
        weights_gb=round(weights / GB, 2), budget_gb=round(budget / GB, 2),
        available_gb=round(memory.free_bytes / GB, 2) if memory.free_bytes is not None else None,
        device=memory.device, device_total_gb=round(memory.total_bytes / GB, 2), budget_rule=rule,
        memory_source=memory.source,
    )


def _budget(memory: DeviceMemory, budget_gb: float | None) -> tuple[float, str]:
    """The budget in bytes and how it was set (see the module docstring)."""
    if budget_gb is not None:
        return budget_gb * GB, "memory_budget_gb in the config"
    fraction = BUDGET_FRACTION.get(memory.kind, BUDGET_FRACTION["cpu"])
    share = fraction * memory.total_bytes
    if memory.free_bytes is not None and memory.free_bytes < share:
        return memory.free_bytes, f"free memory of {memory.device} (less than {fraction:.0%} of it)"
    return share, f"{fraction:.0%} of {memory.device}'s {memory.total_bytes / GB:.1f} GB"


def _meminfo(field: str) -> int | None:
    """A ``/proc/meminfo`` field in bytes (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
