"""The student's Instruction-Following Difficulty of every row (no Dagster here).

IFD (Li et al. 2024, "From Quantity to Quality", Cherry LLM) compares the student's loss on an answer with and
without its instruction:

    loss_conditioned   = mean NLL of the answer's tokens given the instruction   (the conversation as trained)
    loss_unconditioned = mean NLL of the same answer's tokens without it
    ifd                = PPL(answer | instruction) / PPL(answer) = exp(loss_conditioned - loss_unconditioned)

An IFD near 0: the instruction makes the answer easy (little left to learn); near 1: the instruction barely helps;
at or above 1 the answer is no easier with the instruction than without, i.e. unrelated to it (the paper drops those
rows). Cherry LLM's own ``put_ifd_score.py`` ranks by the ratio of the two mean losses instead; both agree on which
rows reach 1, and this module follows the paper's definition (the perplexity ratio).

How a row is scored, under the student's own tokenizer and chosen chat template (the prepared ``base_model``):

- **The first assistant turn.** The instruction is everything before the first assistant message (a system prompt
  and the first user message); the answer is that assistant message. Later turns are not scored (their context is the
  earlier answers too, which is a different question); the demo's rows are single-turn.
- **Conditioned**: ``[system?, user, assistant]`` rendered by the template, tokenized as training tokenizes it
  (``training.masking``); the scored tokens are the assistant's words, **not** the end-of-turn token (a base model
  never learned it: its loss is large and the same with or without the instruction, so it would pull every IFD
  toward 1).
- **Unconditioned**: the same template with the instruction taken out: ``[user: "", assistant]`` (the answer keeps
  its turn header, as Cherry LLM keeps ``### Response:``), scored on the answer's words the same way.
- A row whose conditioned rendering is longer than ``max_length`` tokens is not scored (``ifd_status`` =
  ``too_long``; null values), as Cherry LLM leaves such rows without a score.

Forward passes only (no gradients), in batches of ``batch_size`` sequences sorted by length (then row order), padded
on the right; logits are computed for the scored positions alone, in blocks, so a 262k vocabulary never needs a
``tokens x vocabulary`` tensor for the whole batch. float32 on CPU, bfloat16 on a GPU that supports it (``dtype``).
The same rows, model and settings give byte-identical outputs on the same device and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from assets.common.data.schema import DIFFICULTY_COLUMNS
from assets.common.models.chat_template import read_chat_template
from training.masking import assistant_end_of_turn, tokenize_conversation

IFD_SCHEMA: dict[str, pl.DataType] = {  # conversation_id + DIFFICULTY_COLUMNS
    "conversation_id": pl.Utf8, "ifd": pl.Float64, "ifd_loss_conditioned": pl.Float64,
    "ifd_loss_unconditioned": pl.Float64, "ifd_answer_tokens": pl.Int64, "ifd_status": pl.Utf8,
}  # described once, in assets/common/data/schema.py (the mixture carries these columns)
SCORED_COLUMNS = list(DIFFICULTY_COLUMNS)  # what the mixture joins onto its rows
_BLOCK = 256  # scored positions per logits block (256 x 262k float32 = 268 MB for Gemma)


@dataclass(frozen=True)
class IFDConfig:
    """enabled: score the rows (off: every row gets ``ifd_status`` 'off', no model is loaded). batch_size: sequences
    per forward pass. max_length: the longest conditioned sequence scored, in tokens. dtype: "auto" (bfloat16 on a
    GPU that supports it, else float32), "float32" or "bfloat16". device: "auto" (cuda when present), "cpu", "cuda".
    threads: CPU threads of torch (0: its default)."""

    enabled: bool = True
    batch_size: int = 8
    max_length: int = 2048
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_length < 2 or self.threads < 0:
            raise ValueError(f"batch_size must be >= 1, max_length >= 2 and threads >= 0, got {self.batch_size}, "
                             f"{self.max_length}, {self.threads}")


@dataclass(frozen=True)
class ScoredSequence:
    row: int
    conditioned: bool
    input_ids: list[int]
    scored: list[int]  # positions whose token is scored (each predicted from the position before it)


def _split_first_turn(messages: Sequence[dict]) -> tuple[list[dict], dict] | None:
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            return list(messages[:i]), dict(message)
    return None


def build_sequences(tokenizer, template: str | None, conversations: Sequence[Sequence[dict]],
                    max_length: int) -> tuple[list[ScoredSequence], dict[int, str]]:
    """The two token sequences of every row (see the module docstring), and the rows not scored -> why."""
    end_of_turn = assistant_end_of_turn(tokenizer, template)
    sequences, skipped = [], {}
    for row, messages in enumerate(conversations):
        split = _split_first_turn(messages)
        if split is None:
            skipped[row] = "no_answer"
            continue
        context, answer = split
        pair = []
        for conditioned, turns in ((True, [*context, answer]), (False, [{"role": "user", "content": ""}, answer])):
            tokenized = tokenize_conversation(tokenizer, turns, template, end_of_turn)
            eot = set(tokenized.end_of_turn_token_positions)
            scored = [t for t, m in enumerate(tokenized.assistant_masks) if m and t not in eot and t > 0]
            pair.append(ScoredSequence(row, conditioned, tokenized.input_ids, scored))
        if len(pair[0].input_ids) > max_length:
            skipped[row] = "too_long"
        elif not pair[0].scored or not pair[1].scored:
            skipped[row] = "no_answer"
        else:
            sequences += pair
    return sequences, skipped


def _device_and_dtype(config: IFDConfig):
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    if config.dtype == "auto":
        bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
        return device, torch.bfloat16 if bf16 else torch.float32
    return device, {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]


def load_student(model_dir: str | Path, config: IFDConfig):
    """(model in eval mode on its device, tokenizer, chat template) of a prepared model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.threads:
        torch.set_num_threads(config.threads)
    device, dtype = _device_and_dtype(config)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir)), read_chat_template(model_dir)


def _batch_nll(model, batch: list[ScoredSequence], pad_id: int) -> list[float]:
    """Mean NLL over each sequence's scored tokens (one forward pass, logits only where scored)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, owners = [], [], []
    for b, s in enumerate(batch):
        ids[b, :len(s.input_ids)] = torch.tensor(s.input_ids)
        attention[b, :len(s.input_ids)] = 1
        rows += [b] * len(s.scored)
        cols += s.scored
        owners += [b] * len(s.scored)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=attention.to(device),
                                  use_cache=False).last_hidden_state
        picked = hidden[rows_t.to(device), (cols_t - 1).to(device)]
        labels = ids[rows_t, cols_t].to(device)
        head = model.get_output_embeddings()
        softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        losses = []
        for start in range(0, picked.shape[0], _BLOCK):
            logits = head(picked[start:start + _BLOCK]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            chosen = logits.gather(1, labels[start:start + _BLOCK, None]).squeeze(1)
            losses.append(torch.logsumexp(logits, dim=-1) - chosen)
        token_nll = torch.cat(losses).double().cpu().numpy()
    sums = np.bincount(np.asarray(owners), weights=token_nll, minlength=len(batch))
    return [float(sums[b] / len(s.scored)) for b, s in enumerate(batch)]


def score_sequences(model, sequences: list[ScoredSequence], pad_id: int, batch_size: int,
                    progress: Callable[[int, int], None] | None = None) -> dict[tuple[int, bool], float]:
    """(row, conditioned) -> mean NLL, in batches of sequences sorted by length then row."""
    order = sorted(sequences, key=lambda s: (len(s.input_ids), s.row, s.conditioned))
    out = {}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for s, nll in zip(batch, _batch_nll(model, batch, pad_id), strict=True):
            out[(s.row, s.conditioned)] = nll
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return out


def _table(ids: Sequence[str], values: dict[str, list]) -> pl.DataFrame:
    return pl.DataFrame({"conversation_id": list(ids), **values}, schema=IFD_SCHEMA)


def off_table(conversation_ids: Sequence[str]) -> pl.DataFrame:
    """Every row with ``ifd_status`` 'off' (scoring disabled) and null values."""
    n = len(conversation_ids)
    return _table(conversation_ids, {"ifd": [None] * n, "ifd_loss_conditioned": [None] * n,
                                     "ifd_loss_unconditioned": [None] * n, "ifd_answer_tokens": [None] * n,
                                     "ifd_status": ["off"] * n})


def score_rows(df: pl.DataFrame, model, tokenizer, template: str | None, config: IFDConfig,
               progress: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """The IFD table (:data:`IFD_COLUMNS`) of ``df``'s rows, sorted by conversation_id."""
    conversations = df["messages"].to_list()
    sequences, skipped = build_sequences(tokenizer, template, conversations, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll = score_sequences(model, sequences, pad_id, config.batch_size, progress)
    answer_tokens = {s.row: len(s.scored) for s in sequences if s.conditioned}
    values: dict[str, list] = {c: [] for c in SCORED_COLUMNS}
    for row in range(df.height):
        scored = row not in skipped
        cond, uncond = (nll[(row, True)], nll[(row, False)]) if scored else (None, None)
        values["ifd"].append(math.exp(cond - uncond) if scored else None)
        values["ifd_loss_conditioned"].append(cond)
        values["ifd_loss_unconditioned"].append(uncond)
        values["ifd_answer_tokens"].append(answer_tokens.get(row))
        values["ifd_status"].append("scored" if scored else skipped[row])
    return _table(df["conversation_id"].to_list(), values).sort("conversation_id")
