"""Magpie generation: instructions sampled from the pre-query template, then answered (no Dagster here).

For each conversation: pick a system prompt (or none) from a weighted list, render the pre-query prefix with the
model's own chat template, sample what the model writes there (an instruction: it stops at the end-of-turn token),
then render the conversation with the generation prompt and sample the answer. Repeat for N turns. Instructions
that are empty or contain template tokens are dropped, and counted by reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.common.chat_template import TemplateError, render, special_token_strings
from assets.common.engine import SamplingConfig, TextGenerator
from assets.common.schema import CONVERSATION_SCHEMA
from assets.common.storage import sha256_text
from assets.generation.templates import PreQuery, derive_pre_query, stop_token_ids


@dataclass(frozen=True)
class MagpieConfig:
    num_conversations: int = 1000
    num_turns: int = 1
    instruction: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=256)
    response: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=1024)
    # (system prompt, weight); the empty string means "no system message" (the template's default applies).
    system_prompts: tuple[tuple[str, float], ...] = (("", 1.0),)
    # Replaces the derived prefix of FIRST turns WITHOUT a system prompt only (see MagpieGenerationConfig); each
    # row's pre_query_template_hash is the hash of the first-turn prefix it really used.
    pre_query_template: str | None = None
    seed: int = 0
    shard: int = 0


@dataclass
class MagpieStats:
    attempted: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    instruction_tokens: int = 0
    response_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_generated(self) -> int:
        return self.instruction_tokens + self.response_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "instruction_tokens": self.instruction_tokens,
            "response_tokens": self.response_tokens,
            "tokens_generated": self.tokens_generated,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_generated / self.seconds, 1) if self.seconds else None,
        }


def row_seed(config: MagpieConfig, row_index: int, turn: int, role: str) -> int:
    """The sampling seed of one generated message: a function of (run seed, shard, row, turn, role) only, so a
    row is the same whichever batch it is generated in, and a resumed shard reproduces the rows it lost."""
    key = f"{config.seed}/{config.shard}/{row_index}/{turn}/{role}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 33  # 31 bits


def choose_system_prompt(config: MagpieConfig, row_index: int) -> str:
    """The system prompt of one conversation, drawn with the configured weights from a per-row seeded RNG."""
    texts = [text for text, _ in config.system_prompts]
    weights = np.array([w for _, w in config.system_prompts], dtype=np.float64)
    if len(texts) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("system_prompts: need at least one (text, weight) with non-negative weights summing > 0")
    rng = np.random.default_rng([config.seed, config.shard, row_index])
    return texts[int(rng.choice(len(texts), p=weights / weights.sum()))]


def _history(system_prompt: str) -> list[dict]:
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


def _clean(text: str, stop_strings: Sequence[str]) -> str:
    """Drop a trailing stop token (engines differ on whether they return it) and surrounding whitespace."""
    for stop in stop_strings:
        if stop and text.endswith(stop):
            text = text[: -len(stop)]
            break
    return text.strip()


@dataclass(frozen=True)
class FirstTurnPrefix:
    """The instruction prompt of a conversation's first turn, for one configured system prompt."""

    system_prompt: str  # "" = no system message
    prefix: str
    source: str  # "override" (config.pre_query_template) or "derived" (from the chat template)

    @property
    def hash(self) -> str:
        return sha256_text(self.prefix)


def _uses_override(config: MagpieConfig, history: Sequence[dict]) -> bool:
    """The override is the text before the first user message of a conversation without a system message; it
    cannot hold a system message or earlier turns, so those prefixes are always derived from the chat template."""
    return bool(config.pre_query_template) and len(history) == 0


def first_turn_prefixes(tokenizer: Any, config: MagpieConfig) -> list[FirstTurnPrefix]:
    """The first-turn instruction prompt of each configured system prompt, exactly as generation uses it."""
    texts = dict.fromkeys(text for text, _ in config.system_prompts)  # distinct, in configured order
    return [FirstTurnPrefix(text, _pre_query(tokenizer, _history(text), config).prefix,
                            "override" if _uses_override(config, _history(text)) else "derived") for text in texts]


def pre_query_prefixes(tokenizer: Any, config: MagpieConfig) -> list[str]:
    """The distinct first-turn instruction prompts of a run."""
    return list(dict.fromkeys(p.prefix for p in first_turn_prefixes(tokenizer, config)))


def pre_query_report(tokenizer: Any, config: MagpieConfig, table: pl.DataFrame) -> list[dict]:
    """Per configured system prompt: its first-turn prefix, where the prefix came from (override or derived), its
    hash (the rows' ``pre_query_template_hash``) and how many rows of ``table`` used it. Later turns' prefixes are
    always derived from the chat template and the conversation so far."""
    counts = dict(table.group_by("pre_query_template_hash").len().iter_rows()) if table.height else {}
    return [{"system_prompt": p.system_prompt, "source": p.source, "hash": p.hash, "prefix": p.prefix,
             "rows": counts.get(p.hash, 0)} for p in first_turn_prefixes(tokenizer, config)]


def generate_conversations(
    generator: TextGenerator,
    tokenizer: Any,
    config: MagpieConfig,
    model_name: str,
    model_hash: str,
    log: Any = None,
    rows: Sequence[int] | None = None,
) -> tuple[pl.DataFrame, MagpieStats]:
    """Run Magpie for the conversations ``rows`` of the shard (default: all ``config.num_conversations``).

    Every row's system prompt and sampling seeds depend only on (seed, shard, row), so any subset of rows, in any
    batching, gives the same conversations for those rows."""
    started = time.monotonic()
    rows = list(range(config.num_conversations)) if rows is None else list(rows)
    stats = MagpieStats(attempted=len(rows))
    leak_tokens = special_token_strings(tokenizer)
    conversations = {i: _history(choose_system_prompt(config, i)) for i in rows}
    finish: dict[int, list[str]] = {i: [] for i in rows}
    alive = rows
    first_prefix: dict[int, str] = {}  # row -> the prefix its first instruction was sampled from

    for turn in range(1, config.num_turns + 1):
        pre_queries = [_pre_query(tokenizer, conversations[i], config) for i in alive]
        if turn == 1:
            first_prefix = {i: pq.prefix for i, pq in zip(alive, pre_queries, strict=True)}
        stops = sorted({t for pq in pre_queries for t in stop_token_ids(tokenizer, pq)})
        stop_strings = tokenizer.convert_ids_to_tokens(stops)
        prompts = [tokenizer(pq.prefix, add_special_tokens=False)["input_ids"] for pq in pre_queries]
        seeds = [row_seed(config, i, turn, "user") for i in alive]
        instructions = generator.generate(prompts, config.instruction, stops, seeds)
        survivors = []
        for i, completion in zip(alive, instructions, strict=True):
            stats.instruction_tokens += len(completion.token_ids)
            text = _clean(completion.text, stop_strings)
            reason = None
            if not text:
                reason = "empty_instruction"
            elif any(token in text for token in leak_tokens):
                reason = "template_leak_instruction"
            if reason:
                stats.dropped[reason if turn == 1 else f"{reason}_turn{turn}"] += 1
                continue
            conversations[i].append({"role": "user", "content": text})
            finish[i].append(completion.finish_reason)
            survivors.append(i)
        alive = survivors

        prompts = [
            tokenizer(render(tokenizer, conversations[i], add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"]
            for i in alive
        ]
        seeds = [row_seed(config, i, turn, "assistant") for i in alive]
        responses = generator.generate(prompts, config.response, stops, seeds)
        survivors = []
        for i, completion in zip(alive, responses, strict=True):
            stats.response_tokens += len(completion.token_ids)
            text = _clean(completion.text, stop_strings)
            if any(token in text for token in leak_tokens):
                stats.dropped["template_leak_response" if turn == 1 else f"template_leak_response_turn{turn}"] += 1
                continue
            conversations[i].append({"role": "assistant", "content": text})
            finish[i].append(completion.finish_reason)
            survivors.append(i)
        alive = survivors
        if log:
            log(f"rows {rows[0] if rows else 0}..{rows[-1] if rows else 0}, turn {turn}: {len(alive)} of "
                f"{len(rows)} conversations alive; {stats.tokens_generated} tokens")

    stats.kept = len(alive)
    stats.seconds = time.monotonic() - started
    sampling = json.dumps({"instruction": config.instruction.to_dict(), "response": config.response.to_dict()},
                          sort_keys=True)
    prefix_hashes = {prefix: sha256_text(prefix) for prefix in set(first_prefix.values())}
    table = [
        {
            "conversation_id": f"{config.shard:05d}-{i:07d}",
            "messages": conversations[i],
            "finish_reasons": finish[i],
            "num_turns": config.num_turns,
            "shard": config.shard,
            "row_index": i,
            "seed": config.seed,
            "generator_model": model_name,
            "generator_model_hash": model_hash,
            "pre_query_template_hash": prefix_hashes[first_prefix[i]],  # what this row's first turn used
            "sampling_params": sampling,
            "engine": generator.engine_name,
            "engine_version": generator.engine_version,
        }
        for i in alive
    ]
    return pl.DataFrame(table, schema=CONVERSATION_SCHEMA), stats


def _pre_query(tokenizer: Any, history: Sequence[dict], config: MagpieConfig) -> PreQuery:
    if _uses_override(config, history):
        try:  # the derivation may fail on this template: the override is exactly for that case
            end_of_turn = derive_pre_query(tokenizer, history).end_of_turn
        except TemplateError:
            end_of_turn = None
        return PreQuery(prefix=config.pre_query_template, end_of_turn=end_of_turn)
    try:
        return derive_pre_query(tokenizer, history)
    except TemplateError as error:
        if not config.pre_query_template:
            raise
        raise TemplateError(
            f"{error} (`pre_query_template` is set, but it only replaces the prefix of a first turn without a "
            f"system prompt; this one follows {[m['role'] for m in history]}: configure no system prompts and "
            "num_turns 1 to use the override alone)") from error
