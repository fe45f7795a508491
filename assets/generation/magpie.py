"""Magpie generation: instructions sampled from the pre-query template, then answered (no Dagster here).

For each conversation: pick a system prompt (or none) from a weighted list, render the pre-query prefix with the
model's own chat template, sample what the model writes there (an instruction: it stops at the end-of-turn token),
then render the conversation with the generation prompt and sample the answer (with ``response_system_prompt``, if set,
as the answering system message: it shapes the answers and is not stored). Repeat for N turns. A conversation
whose instruction or answer is empty or contains template tokens is dropped, and counted by reason, so every row
written has the conversation schema every later stage checks on read (non-empty messages, alternating roles).
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

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.data.storage import sha256_text
from assets.common.models.chat_template import TemplateError, render, special_token_strings
from assets.common.models.engine import Completion, SamplingConfig, TextGenerator
from assets.generation.templates import PreQuery, derive_pre_query, stop_token_ids


@dataclass(frozen=True)
class MagpieConfig:
    num_conversations: int = 1000
    num_turns: int = 1
    instruction: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=256)
    # min-p, not top-p: on a CPU top-p sorts the vocabulary at every step (chosen by the filters' keep rate:
    # docs/generation.md)
    response: SamplingConfig = SamplingConfig(temperature=0.7, min_p=0.05, max_tokens=1024)
    # (system prompt, weight); the empty string means "no system message" (the template's default applies).
    system_prompts: tuple[tuple[str, float], ...] = (("", 1.0),)
    # A system message the teacher answers under, not stored in the conversation and not seen when instructions are
    # sampled: the answers take its style (e.g. "answer briefly") and the stored rows look like the prompts a user
    # sends (context distillation). Joined after the row's own system prompt, if it has one. Recorded in every row's
    # `sampling_params` and in the shard's report.
    response_system_prompt: str = ""
    # Replaces the derived prefix of FIRST turns WITHOUT a system prompt only (see MagpieGenerationConfig); each
    # row's pre_query_template_hash is the hash of the first-turn prefix it really used.
    pre_query_template: str | None = None
    seed: int = 0
    shard: int = 0

    def __post_init__(self) -> None:
        if self.num_turns < 1:
            raise ValueError(f"num_turns must be >= 1 (user/assistant exchanges), got {self.num_turns}")
        if self.num_conversations < 0:
            raise ValueError(f"num_conversations must be >= 0, got {self.num_conversations}")


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


def answering_messages(messages: Sequence[dict], config: MagpieConfig) -> list[dict]:
    """The conversation as the teacher sees it when it answers: ``messages`` with ``config.response_system_prompt``
    as the system message (after the row's own system prompt, if any); ``messages`` unchanged when it is not set."""
    extra = config.response_system_prompt
    if not extra:
        return list(messages)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{extra}"}, *messages[1:]]
    return [{"role": "system", "content": extra}, *messages]


def sampling_record(config: MagpieConfig) -> dict[str, Any]:
    """What every row's ``sampling_params`` says about how its messages were sampled: both samplings, and the
    answering system prompt when one was set (absent otherwise, so rows of runs without one keep their bytes)."""
    record: dict[str, Any] = {"instruction": config.instruction.to_dict(), "response": config.response.to_dict()}
    if config.response_system_prompt:
        record["response_system_prompt"] = config.response_system_prompt
    return record


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
    batch = _Conversations(tokenizer, config, rows)
    for turn in range(1, config.num_turns + 1):
        prompts, stops = batch.instruction_prompts(turn)
        instructions = generator.generate(prompts, config.instruction, stops, batch.seeds(turn, "user"))
        batch.add("user", turn, instructions, stops, stats)
        responses = generator.generate(batch.response_prompts(), config.response, stops,
                                       batch.seeds(turn, "assistant"))
        batch.add("assistant", turn, responses, stops, stats)
        if log:
            log(f"rows {rows[0] if rows else 0}..{rows[-1] if rows else 0}, turn {turn}: {len(batch.alive)} of "
                f"{len(rows)} conversations alive; {stats.tokens_generated} tokens")
    stats.kept = len(batch.alive)
    stats.seconds = time.monotonic() - started
    return batch.table(model_name, model_hash, generator), stats


_KINDS = {"user": "instruction", "assistant": "response"}  # what a generated message of a role is called


class _Conversations:
    """The conversations of one :func:`generate_conversations` call while their turns are generated: messages,
    finish reasons and first-turn prefix per row, and the rows still alive (not dropped)."""

    def __init__(self, tokenizer: Any, config: MagpieConfig, rows: list[int]):
        self.tokenizer, self.config = tokenizer, config
        self.leak_tokens = special_token_strings(tokenizer)
        self.messages = {i: _history(choose_system_prompt(config, i)) for i in rows}
        self.finish: dict[int, list[str]] = {i: [] for i in rows}
        self.first_prefix: dict[int, str] = {}  # row -> the prefix its first instruction was sampled from
        self.alive = list(rows)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def seeds(self, turn: int, role: str) -> list[int]:
        return [row_seed(self.config, i, turn, role) for i in self.alive]

    def instruction_prompts(self, turn: int) -> tuple[list[list[int]], list[int]]:
        """The pre-query prompt of every live row, and the token ids that end a turn."""
        pre_queries = [_pre_query(self.tokenizer, self.messages[i], self.config) for i in self.alive]
        if turn == 1:
            self.first_prefix = {i: pq.prefix for i, pq in zip(self.alive, pre_queries, strict=True)}
        stops = sorted({t for pq in pre_queries for t in stop_token_ids(self.tokenizer, pq)})
        return [self._ids(pq.prefix) for pq in pre_queries], stops

    def response_prompts(self) -> list[list[int]]:
        return [self._ids(render(self.tokenizer, answering_messages(self.messages[i], self.config),
                                 add_generation_prompt=True)) for i in self.alive]

    def add(self, role: str, turn: int, completions: Sequence[Completion], stops: Sequence[int],
            stats: MagpieStats) -> None:
        """Append each live row's completion as a ``role`` message, or drop the row (counted by reason)."""
        kind = _KINDS[role]
        stop_strings = self.tokenizer.convert_ids_to_tokens(list(stops))
        survivors = []
        for i, completion in zip(self.alive, completions, strict=True):
            setattr(stats, f"{kind}_tokens", getattr(stats, f"{kind}_tokens") + len(completion.token_ids))
            text = _clean(completion.text, stop_strings)
            reason = _drop_reason(text, kind, self.leak_tokens)
            if reason:
                stats.dropped[reason if turn == 1 else f"{reason}_turn{turn}"] += 1
                continue
            self.messages[i].append({"role": role, "content": text})
            self.finish[i].append(completion.finish_reason)
            survivors.append(i)
        self.alive = survivors

    def table(self, model_name: str, model_hash: str, generator: TextGenerator) -> pl.DataFrame:
        """The live rows with their provenance, in the conversation schema."""
        config = self.config
        sampling = json.dumps(sampling_record(config), sort_keys=True)
        prefix_hashes = {prefix: sha256_text(prefix) for prefix in set(self.first_prefix.values())}
        return pl.DataFrame([
            {
                "conversation_id": f"{config.shard:05d}-{i:07d}",
                "messages": self.messages[i],
                "finish_reasons": self.finish[i],
                "num_turns": config.num_turns,
                "shard": config.shard,
                "row_index": i,
                "seed": config.seed,
                "generator_model": model_name,
                "generator_model_hash": model_hash,
                "pre_query_template_hash": prefix_hashes[self.first_prefix[i]],  # what this row's first turn used
                "sampling_params": sampling,
                "engine": generator.engine_name,
                "engine_version": generator.engine_version,
            }
            for i in self.alive
        ], schema=CONVERSATION_SCHEMA)


def _drop_reason(text: str, kind: str, leak_tokens: Sequence[str]) -> str | None:
    """Why a generated message ends its conversation: it is empty (a conversation needs text in every message), or
    it contains a template token."""
    if not text:
        return f"empty_{kind}"
    if any(token in text for token in leak_tokens):
        return f"template_leak_{kind}"
    return None


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
