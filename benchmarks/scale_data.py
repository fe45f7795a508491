"""The scale benchmark's synthetic conversation table (benchmarks/scale.py), written as generation shards.

No demo rows exist to draw lengths from (a data root holds at most the demo's ~37 kept rows), so the shape is a
stated distribution, chosen to look like Magpie output of a small chat model:

- turns: 1 (70%), 2 (20%), 3 (10%); a system prompt on 20% of rows (one of eight);
- words per instruction ~ lognormal(median 25, sigma 0.7) in [3, 300]; per response ~ lognormal(median 150,
  sigma 0.8) in [5, 1200] (about 6 characters a word: a few responses pass filtering's 8,000-character bound);
- languages: en 70%, de/fr/es 6% each, it/pt/ru/zh/ja 2.4% each; the words of a row are drawn from the words of
  that language's texts in the language-ID planted set (assets/tagging/language_planted.yaml), so the detector sees
  real words (a character a word for zh and ja), in sentences of 8-20 words;
- planted, per row: 2% near-duplicates of an earlier row (same or earlier shard; half differ in case and
  punctuation only, half in one response word), 0.2% eval leaks (an eval_sets text as the instruction), 3%
  truncations (the last response cut, finish reason `length`), 2% refusals (a stock refusal phrase opens the last
  response).

Every row is a function of (seed, shard, row) alone: shard k is the same whatever the table size, so the 10k table
is shard 0, the 100k table shards 0-9, and a new shard added to a table is the shard a table of that size would
have had next.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from assets.common.data.schema import CONVERSATION_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SHARD_ROWS = 10_000
LANGUAGES = {"en": 0.70, "de": 0.06, "fr": 0.06, "es": 0.06, "it": 0.024, "pt": 0.024, "ru": 0.024, "zh": 0.024,
             "ja": 0.024}
NO_SPACES = ("zh", "ja")
TURNS = {1: 0.7, 2: 0.2, 3: 0.1}
SYSTEM_SHARE = 0.2
SYSTEM_PROMPTS = (
    "You are a helpful assistant.", "You are a concise assistant. Answer in as few words as possible.",
    "You are an expert Python programmer.", "You are a friendly tutor who explains things step by step.",
    "You are a careful assistant: say when you are unsure.", "You write clear, well-structured answers.",
    "You are a travel guide.", "You are a math teacher for high-school students.")
INSTRUCTION_WORDS = (25, 0.7, 3, 300)  # median, sigma, min, max
RESPONSE_WORDS = (150, 0.8, 5, 1200)
# Planted rows: (kind, share); a row's kind is drawn from its own seed.
PLANTED = (("near_duplicate", 0.02), ("eval_leak", 0.002), ("truncated", 0.03), ("refusal", 0.02))
REFUSALS = ("I'm sorry, but I can't help with that request.", "As an AI language model, I cannot do that.",
            "I am unable to assist with this.")


@dataclass(frozen=True)
class Shape:
    """What a generated table looked like: rows per planted kind, turns, system prompts and languages."""

    rows: int
    kinds: dict
    turns: dict
    system_prompts: int
    languages: dict

    def to_dict(self) -> dict:
        return self.__dict__


def vocabularies() -> dict[str, list[str]]:
    """Per language of LANGUAGES, the words (characters for zh, ja) of its planted language-ID texts."""
    planted = yaml.safe_load((REPO / "assets" / "tagging" / "language_planted.yaml").read_text())
    vocab = {}
    for lang in LANGUAGES:
        text = " ".join(re.sub(r"`[^`]*`", " ", t) for t in planted[lang])
        if lang in NO_SPACES:
            words = [c for c in text if c.isalpha()]
        else:
            words = [w for w in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text) if len(w) > 1]
        vocab[lang] = sorted(set(words))
    return vocab


def _row_seed(seed: int, shard: int, row: int, salt: int = 0) -> int:
    return ((seed * 1_000_003 + shard) * 10_000_019 + row) * 4 + salt


def _pick(u: float, weights: dict):
    total = 0.0
    for value, weight in weights.items():
        total += weight
        if u < total:
            return value
    return value


def _length(rng: np.random.Generator, spec: tuple) -> int:
    median, sigma, low, high = spec
    return max(low, min(high, int(rng.lognormal(math.log(median), sigma))))


def _text(rng: np.random.Generator, words: np.ndarray, n: int, lang: str) -> str:
    drawn = words[rng.integers(0, len(words), n)].tolist()
    stop = "。" if lang in NO_SPACES else "."
    ends = np.cumsum(rng.integers(8, 21, n // 8 + 1))
    for end in ends[ends < n].tolist():
        drawn[end - 1] += stop
        drawn[end] = drawn[end].capitalize()
    drawn[0], drawn[-1] = drawn[0].capitalize(), drawn[-1] + stop
    return ("" if lang in NO_SPACES else " ").join(drawn)


class Generator:
    """Rows of the synthetic table; ``eval_texts``: the eval_sets texts leaks are drawn from."""

    def __init__(self, eval_texts: list[str], seed: int = 0):
        self.vocab = {lang: np.array(words, dtype=object) for lang, words in vocabularies().items()}
        self.eval_texts = [t for t in eval_texts if len(t.split()) >= 20] or eval_texts
        self.seed = seed

    def kind(self, shard: int, row: int) -> str:
        u, total = random.Random(_row_seed(self.seed, shard, row, 1)).random(), 0.0
        for kind, share in PLANTED:
            total += share
            if u < total:
                return kind
        return "plain"

    def plain(self, shard: int, row: int) -> tuple[list[dict], list[str], str]:
        """The row's messages, finish reasons and language before any planting."""
        rng = np.random.default_rng(_row_seed(self.seed, shard, row))
        u = rng.random(4).tolist()
        lang, turns = _pick(u[0], LANGUAGES), _pick(u[1], TURNS)
        words = self.vocab[lang]
        system = SYSTEM_PROMPTS[int(u[3] * len(SYSTEM_PROMPTS))]
        messages = [{"role": "system", "content": system}] if u[2] < SYSTEM_SHARE else []
        for _ in range(turns):
            messages.append({"role": "user", "content": _text(rng, words, _length(rng, INSTRUCTION_WORDS), lang)})
            messages.append({"role": "assistant", "content": _text(rng, words, _length(rng, RESPONSE_WORDS), lang)})
        return messages, ["stop"] * (2 * turns), lang

    def _duplicate_source(self, rng: random.Random, shard: int, row: int) -> tuple[int, int] | None:
        for _ in range(20):
            source_shard = rng.randrange(shard + 1)
            limit = row if source_shard == shard else SHARD_ROWS
            if limit == 0:
                continue
            source_row = rng.randrange(limit)
            if self.kind(source_shard, source_row) == "plain":
                return source_shard, source_row
        return None

    def row(self, shard: int, row: int) -> tuple[list[dict], list[str], str, str]:
        """The row's messages, finish reasons, planted kind ("plain" when nothing was planted) and language."""
        kind = self.kind(shard, row)
        rng = random.Random(_row_seed(self.seed, shard, row, 2))
        source = self._duplicate_source(rng, shard, row) if kind == "near_duplicate" else None
        if kind == "near_duplicate" and source is None:
            kind = "plain"
        messages, finish, lang = self.plain(*source) if source else self.plain(shard, row)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if kind == "near_duplicate":
            if rng.random() < 0.5:
                messages = [{**m, "content": m["content"].upper() + "!"} for m in messages]
            else:
                words = messages[last]["content"].split(" ")
                words[rng.randrange(len(words))] = "changed"
                messages[last] = {**messages[last], "content": " ".join(words)}
        elif kind == "eval_leak":
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first] = {**messages[first], "content": rng.choice(self.eval_texts)}
        elif kind == "truncated":
            content = messages[last]["content"]
            messages[last] = {**messages[last], "content": content[:max(1, int(len(content) * rng.uniform(0.5, 0.9)))]}
            finish[-1] = "length"
        elif kind == "refusal":
            messages[last] = {**messages[last], "content": f"{rng.choice(REFUSALS)} {messages[last]['content'][:200]}"}
        return messages, finish, kind, lang

    def shard(self, shard: int, rows: int = SHARD_ROWS) -> tuple[pl.DataFrame, Shape]:
        """Shard ``shard`` as a conversation table, and its shape."""
        generated = [self.row(shard, i) for i in range(rows)]
        table = pl.DataFrame({
            "conversation_id": [f"{shard:05d}-{i:07d}" for i in range(rows)],
            "messages": [g[0] for g in generated],
            "finish_reasons": [g[1] for g in generated],
            "num_turns": [len(g[1]) // 2 for g in generated],
            "shard": [shard] * rows,
            "row_index": list(range(rows)),
            "seed": [self.seed] * rows,
            "generator_model": ["synthetic-scale"] * rows,
            "generator_model_hash": ["synthetic"] * rows,
            "pre_query_template_hash": ["synthetic"] * rows,
            "sampling_params": [json.dumps({"synthetic": True})] * rows,
            "engine": ["synthetic"] * rows,
            "engine_version": ["1"] * rows,
        }, schema=CONVERSATION_SCHEMA)
        return table, shape_of(generated)


def shape_of(generated: list[tuple]) -> Shape:
    kinds, turns, languages, system = {}, {}, {}, 0
    for messages, finish, kind, lang in generated:
        kinds[kind] = kinds.get(kind, 0) + 1
        languages[lang] = languages.get(lang, 0) + 1
        turns[len(finish) // 2] = turns.get(len(finish) // 2, 0) + 1
        system += messages[0]["role"] == "system"
    return Shape(rows=len(generated), kinds=dict(sorted(kinds.items())), turns=dict(sorted(turns.items())),
                 system_prompts=system, languages=dict(sorted(languages.items())))
