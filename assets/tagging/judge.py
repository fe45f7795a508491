"""The LLM judge: per conversation a category from the project's taxonomy, difficulty, instruction quality and
response quality (1-5), a refusal flag and a one-line reason (no Dagster here).

The judge is any local chat model on the shared vLLM engine (the teacher by default). Its answer is decoded under a
JSON schema (:func:`judge_schema`; vLLM structured outputs, xgrammar), so even a small model returns the fields in
the right types and ranges, and is then validated again here (:func:`parse_judgement`): an answer that still fails
(cut by ``max_tokens``, a prompt longer than the engine's context) is labelled ``unparsed`` with the error, and
counted; its row is never dropped for it. The prompt is a versioned file in ``prompts/``; its hash (file bytes +
taxonomy + schema) is each row's ``judge_prompt_hash``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.data.prompts import read_prompt_file
from assets.common.data.taxonomy import CATEGORIES
from assets.common.models.chat_template import TemplateError, render
from assets.common.models.engine import SamplingConfig, TextGenerator

PROMPTS_DIR = Path(__file__).parent / "prompts"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PARSED, UNPARSED, NO_JUDGE = "parsed", "unparsed", "no_judge"
SCORES = ("difficulty", "instruction_quality", "response_quality")
REASON_MAX_CHARS = 160
FIELDS = ("reason", "category", *SCORES, "refusal")  # the order the judge writes them: the reason first

# the judge's columns on every tagged row (null where there is no parsed label)
JUDGE_COLUMNS: dict[str, pl.DataType] = {
    "judge_status": pl.Utf8,  # parsed | unparsed | no_judge
    "judge_error": pl.Utf8,  # why an answer is unparsed
    "judge_category": pl.Utf8,
    "difficulty": pl.Int64,
    "instruction_quality": pl.Int64,
    "response_quality": pl.Int64,
    "judge_refusal": pl.Boolean,
    "judge_reason": pl.Utf8,
    "judge_raw": pl.Utf8,  # the judge's answer as generated
    "judge_tokens": pl.Int64,  # tokens the judge generated for this row
}


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge is asked. ``prompt``: a file name in ``prompts/`` without ``.yaml``. Greedy by default (a
    label should not depend on a draw); ``seed`` only matters with ``temperature`` > 0. Message contents longer
    than ``max_message_chars`` are cut (the judge sees the start); ``batch_size`` rows go to the engine at once."""

    prompt: str = "judge-v1"
    temperature: float = 0.0
    max_tokens: int = 256
    batch_size: int = 256
    max_message_chars: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ValueError(f"judge max_tokens must be >= 16 (the JSON answer alone needs ~40), got {self.max_tokens}")
        if self.batch_size < 1 or self.max_message_chars < 1:
            raise ValueError(f"judge batch_size and max_message_chars must be >= 1, got {self.batch_size}, "
                             f"{self.max_message_chars}")


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system: str
    user: str
    hash: str  # sha256 of the file's bytes + the taxonomy + the JSON schema


def judge_schema(categories: Sequence[str] = tuple(CATEGORIES)) -> dict:
    """The JSON schema the judge's answer is decoded under (and validated against)."""
    score = {"type": "integer", "enum": [1, 2, 3, 4, 5]}
    properties = {
        "reason": {"type": "string", "minLength": 1, "maxLength": REASON_MAX_CHARS},
        "category": {"type": "string", "enum": list(categories)},
        **{name: score for name in SCORES},
        "refusal": {"type": "boolean"},
    }
    return {"type": "object", "properties": properties, "required": list(FIELDS), "additionalProperties": False}


def load_prompt(name: str) -> JudgePrompt:
    """The judge prompt ``prompts/<name>.yaml`` (keys ``system`` and ``user``; ``user`` has the placeholders
    ``{categories}`` and ``{conversation}``)."""
    doc, raw = read_prompt_file(PROMPTS_DIR, name, "judge", ("{conversation}",))
    digest = hashlib.sha256(raw)
    digest.update(json.dumps({"categories": CATEGORIES, "schema": judge_schema()}, sort_keys=True).encode())
    return JudgePrompt(name=name, system=str(doc.get("system") or ""), user=doc["user"], hash=digest.hexdigest())


def render_conversation(messages: Sequence[dict], max_chars: int) -> str:
    """The conversation as the judge reads it: ``User:``/``Assistant:``/``System:`` blocks, each cut at
    ``max_chars``."""
    blocks = []
    for message in messages:
        content = message["content"] or ""
        if len(content) > max_chars:
            content = content[:max_chars] + " [...cut]"
        blocks.append(f"{message['role'].capitalize()}: {content}")
    return "\n\n".join(blocks)


def judge_messages(prompt: JudgePrompt, conversation: Sequence[dict], max_chars: int) -> list[dict]:
    categories = "\n".join(f"  - {slug}: {text}" for slug, text in CATEGORIES.items())
    user = prompt.user.replace("{categories}", categories).replace(
        "{conversation}", render_conversation(conversation, max_chars))
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]


def prompt_token_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The judge's prompt rendered with its own chat template (system folded into the user turn for templates
    without a system role), ready for generation."""
    try:
        text = render(tokenizer, messages, add_generation_prompt=True)
    except TemplateError:
        merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}]
        text = render(tokenizer, merged, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def parse_judgement(text: str, finish_reason: str = "stop") -> tuple[dict | None, str | None]:
    """``(labels, None)`` for an answer that is one JSON object matching :func:`judge_schema`, else
    ``(None, error)``."""
    try:
        obj = json.loads(text, strict=False)  # xgrammar lets raw control characters into strings; tolerate them
    except json.JSONDecodeError as error:
        cut = " (cut at max_tokens)" if finish_reason == "length" else ""
        return None, f"not JSON{cut}: {error.msg} at char {error.pos}"
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {type(obj).__name__}"
    if set(obj) != set(FIELDS):
        return None, f"fields {sorted(obj)}, expected {sorted(FIELDS)}"
    problems = [f"category {obj['category']!r} is not in the taxonomy"] if obj["category"] not in CATEGORIES else []
    problems += [f"{name} {obj[name]!r} is not an integer 1-5" for name in SCORES
                 if type(obj[name]) is not int or not 1 <= obj[name] <= 5]
    problems += ["refusal is not a boolean"] if not isinstance(obj["refusal"], bool) else []
    reason = obj["reason"]
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX_CHARS:
        problems.append(f"reason must be a non-empty string of at most {REASON_MAX_CHARS} characters")
    if problems:
        return None, "; ".join(problems)
    return {**obj, "reason": " ".join(_CONTROL.sub(" ", reason).split())}, None  # one printable line


@dataclass
class JudgeStats:
    rows: int = 0
    parsed: int = 0
    unparsed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # engine time of the judge's batches (start-up excluded)
    batches: int = 0

    def to_dict(self) -> dict:
        seconds = self.seconds or float("nan")
        return {**asdict(self), "parse_share": self.parsed / self.rows if self.rows else None,
                "tokens_per_second": round(self.completion_tokens / seconds, 2) if self.seconds else None,
                "rows_per_second": round(self.rows / seconds, 3) if self.seconds else None}


def no_judge_labels(rows: int) -> pl.DataFrame:
    """The judge's columns when no judge ran: status ``no_judge``, labels null."""
    frame = pl.DataFrame({name: pl.Series(name, [None] * rows, dtype=dtype) for name, dtype in JUDGE_COLUMNS.items()})
    return frame.with_columns(pl.lit(NO_JUDGE).alias("judge_status"))


def _row_label(text: str, tokens: int, finish_reason: str) -> dict:
    labels, error = parse_judgement(text, finish_reason)
    row = dict.fromkeys(JUDGE_COLUMNS) | {"judge_raw": text, "judge_tokens": tokens}
    if labels is None:
        return row | {"judge_status": UNPARSED, "judge_error": error}
    return row | {"judge_status": PARSED, "judge_category": labels["category"], "judge_refusal": labels["refusal"],
                  "judge_reason": labels["reason"], **{name: labels[name] for name in SCORES}}


def row_seed(seed: int, conversation_id: str) -> int:
    digest = hashlib.blake2b(conversation_id.encode(), digest_size=4, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big")


def run_judge(generator: TextGenerator, tokenizer: Any, df: pl.DataFrame, cfg: JudgeConfig, prompt: JudgePrompt,
              stop_token_ids: Sequence[int], max_prompt_tokens: int,
              log: Callable[[str], None] = lambda _: None) -> tuple[pl.DataFrame, JudgeStats]:
    """The judge's labels for every row of ``df`` (its :data:`JUDGE_COLUMNS`, in ``df``'s order) and its stats.
    A prompt over ``max_prompt_tokens`` (the engine's context minus ``max_tokens``) is not sent: its row is
    ``unparsed`` with the reason."""
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=1.0, max_tokens=cfg.max_tokens)
    schema, stats, labels = judge_schema(), JudgeStats(rows=df.height), []
    ids = df["conversation_id"].to_list()
    for start in range(0, df.height, cfg.batch_size):
        batch = df["messages"].slice(start, cfg.batch_size).to_list()
        prompts = [prompt_token_ids(tokenizer, judge_messages(prompt, m, cfg.max_message_chars)) for m in batch]
        fits = [i for i, p in enumerate(prompts) if len(p) <= max_prompt_tokens]
        began = time.monotonic()
        completions = generator.generate([prompts[i] for i in fits], sampling, stop_token_ids,
                                         [row_seed(cfg.seed, ids[start + i]) for i in fits], json_schema=schema)
        stats.seconds += time.monotonic() - began
        stats.batches += 1
        answered = dict(zip(fits, completions, strict=True))
        for i, p in enumerate(prompts):
            if i not in answered:
                labels.append(dict.fromkeys(JUDGE_COLUMNS) | {
                    "judge_status": UNPARSED, "judge_tokens": 0,
                    "judge_error": f"prompt of {len(p)} tokens > {max_prompt_tokens} (max_model_len - max_tokens)"})
                continue
            c = answered[i]
            stats.prompt_tokens += len(p)
            stats.completion_tokens += len(c.token_ids)
            labels.append(_row_label(c.text, len(c.token_ids), c.finish_reason))
        log(f"judge: {min(start + cfg.batch_size, df.height)}/{df.height} rows, {stats.completion_tokens} tokens in "
            f"{stats.seconds:.0f}s")
    frame = pl.DataFrame(labels, schema=JUDGE_COLUMNS) if labels else no_judge_labels(0)
    stats.parsed = int((frame["judge_status"] == PARSED).sum())
    stats.unparsed = frame.height - stats.parsed
    return frame, stats


def judge_stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end the judge's turn: the tokenizer's EOS and the token its template closes a turn with."""
    from assets.common.models.chat_template import end_of_turn_after

    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    try:
        end = end_of_turn_after(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    except TemplateError:
        end = None
    if end:
        ids.add(int(tokenizer.convert_tokens_to_ids(end)))
    return sorted(ids)
