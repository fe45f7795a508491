"""The LLM check of the semantic detector's candidate pairs (no Dagster here): "is this training text a rephrasing of
that test item?", the LLM Decontaminator's step (Yang et al. 2023), asked of the judge model on the shared vLLM engine
and decoded under the JSON schema of the prompt file (``prompts/<name>.yaml``: system, user, schema; its SHA-256 is
each verdict's prompt hash). Verdicts: ``rephrasing``, ``not_rephrasing`` (the pair removes nothing), ``unparsed``
(an answer that still fails the schema, or a prompt too long for the engine: counted as a match), and ``unverified``
(a neighbour beyond the judged top-k, see :mod:`.semantic`). Verdicts are cached by (judge model hash, prompt hash,
message hash, eval text hash) in immutable Parquet shards, so a shard re-checked later is not judged again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.data.prompts import read_prompt_file
from assets.common.data.storage import sha256_text, write_parquet_atomic
from assets.common.models.chat_template import TemplateError, end_of_turn_after, render
from assets.common.models.engine import EngineConfig, SamplingConfig, TextGenerator
from assets.decontamination.config import RephraseVerifyConfig

PROMPTS_DIR = Path(__file__).parent / "prompts"
REPHRASING, NOT_REPHRASING, UNPARSED, UNVERIFIED = "rephrasing", "not_rephrasing", "unparsed", "unverified"
_CACHE_SCHEMA = {"message_hash": pl.Utf8, "eval_hash": pl.Utf8, "verdict": pl.Utf8, "raw": pl.Utf8}


@dataclass(frozen=True)
class RephrasePrompt:
    name: str
    system: str
    user: str
    schema: dict
    hash: str  # SHA-256 of the file's bytes (the schema is in the file)


def load_rephrase_prompt(name: str) -> RephrasePrompt:
    """``prompts/<name>.yaml`` with keys ``system``, ``user`` (placeholders ``{test}`` and ``{train}``), ``schema``."""
    doc, raw = read_prompt_file(PROMPTS_DIR, name, "rephrase", ("{test}", "{train}"))
    if not isinstance(doc.get("schema"), dict):
        raise ValueError(f"{PROMPTS_DIR / f'{name}.yaml'}: expected a 'schema' mapping (the answer's JSON schema)")
    return RephrasePrompt(name, str(doc.get("system") or ""), doc["user"], doc["schema"],
                          hashlib.sha256(raw).hexdigest())


def parse_verdict(text: str, finish_reason: str = "stop") -> tuple[str, str]:
    """(verdict, reason) of the judge's answer: ``rephrasing`` / ``not_rephrasing``, or ``unparsed`` and why."""
    try:
        obj = json.loads(text, strict=False)
    except json.JSONDecodeError as error:
        cut = " (cut at max_tokens)" if finish_reason == "length" else ""
        return UNPARSED, f"not JSON{cut}: {error.msg} at char {error.pos}"
    if not isinstance(obj, dict) or not isinstance(obj.get("rephrasing"), bool):
        return UNPARSED, f"expected an object with a boolean 'rephrasing', got {text[:80]!r}"
    return (REPHRASING if obj["rephrasing"] else NOT_REPHRASING), str(obj.get("reason", ""))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...cut]"


class RephraseJudge:
    """Verdicts from the judge model ``model`` (``path``, ``name``, ``content_hash``); the engine starts on the first
    pair that is not in the cache (``cache_dir``; None: no cache) and stops on :meth:`close`. ``generator``: a started
    engine to use instead (it is not closed here)."""

    def __init__(self, model: dict, cfg: RephraseVerifyConfig, engine: EngineConfig, cache_dir: str | Path | None,
                 generator: TextGenerator | None = None) -> None:
        self.model, self.cfg, self.engine, self.prompt = model, cfg, engine, load_rephrase_prompt(cfg.prompt)
        self.cache_dir = (Path(cache_dir) / model["content_hash"] / self.prompt.hash) if cache_dir else None
        self._generator, self._owned, self._tokenizer = generator, generator is None, None
        self.judged = 0  # pairs sent to the engine by this judge

    def provenance(self) -> dict[str, Any]:
        return {"model": self.model["name"], "model_hash": self.model["content_hash"], "prompt": self.prompt.name,
                "prompt_hash": self.prompt.hash}

    def verdicts(self, train: Sequence[str], test: Sequence[str]) -> list[str]:
        """The verdict of each pair (``train[i]``, ``test[i]``), from the cache where it has them."""
        keys = [(sha256_text(a), sha256_text(b)) for a, b in zip(train, test, strict=True)]
        known = self._read_cache()
        missing = sorted({key: i for i, key in enumerate(keys) if key not in known}.items())
        if missing:
            answers = self._ask([train[i] for _, i in missing], [test[i] for _, i in missing])
            fresh = pl.DataFrame({"message_hash": [k[0] for k, _ in missing], "eval_hash": [k[1] for k, _ in missing],
                                  "verdict": [a[0] for a in answers], "raw": [a[1] for a in answers]},
                                 schema=_CACHE_SCHEMA)
            self._write_cache(fresh)
            known |= {key: verdict for (key, _), (verdict, _) in zip(missing, answers, strict=True)}
        return [known[key] for key in keys]

    def _ask(self, train: list[str], test: list[str]) -> list[tuple[str, str]]:
        """(verdict, raw answer) per pair, asked of the engine in batches; a prompt too long is ``unparsed``."""
        generator, tokenizer = self._started()
        sampling = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=self.cfg.max_tokens)
        limit = self.engine.max_model_len - self.cfg.max_tokens
        out: list[tuple[str, str]] = []
        for start in range(0, len(train), self.cfg.batch_size):
            prompts = [self._prompt_ids(tokenizer, a, b) for a, b in
                       zip(train[start:start + self.cfg.batch_size], test[start:start + self.cfg.batch_size],
                           strict=True)]
            fits = [i for i, p in enumerate(prompts) if len(p) <= limit]
            done = dict(zip(fits, generator.generate([prompts[i] for i in fits], sampling, self._stops, [0] * len(fits),
                                                     json_schema=self.prompt.schema), strict=True))
            self.judged += len(fits)
            out += [(parse_verdict(done[i].text, done[i].finish_reason)[0], done[i].text) if i in done
                    else (UNPARSED, f"prompt of {len(p)} tokens > {limit}") for i, p in enumerate(prompts)]
        return out

    def _prompt_ids(self, tokenizer: Any, train: str, test: str) -> list[int]:
        user = self.prompt.user.replace("{test}", _cut(test, self.cfg.max_chars)).replace(
            "{train}", _cut(train, self.cfg.max_chars))
        messages = [{"role": "system", "content": self.prompt.system}, {"role": "user", "content": user}]
        try:
            text = render(tokenizer, messages, add_generation_prompt=True)
        except TemplateError:  # a template without a system role: fold it into the user turn
            text = render(tokenizer, [{"role": "user", "content": f"{self.prompt.system}\n\n{user}"}],
                          add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def _started(self) -> tuple[TextGenerator, Any]:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model["path"])
            stops = {int(self._tokenizer.eos_token_id)} if self._tokenizer.eos_token_id is not None else set()
            try:
                end = end_of_turn_after(self._tokenizer, [{"role": "user", "content": "q"},
                                                          {"role": "assistant", "content": "a"}])
            except TemplateError:
                end = None
            self._stops = sorted(stops | ({int(self._tokenizer.convert_tokens_to_ids(end))} if end else set()))
        if self._generator is None:
            from assets.common.models.engine import VLLMGenerator

            self._generator = VLLMGenerator(self.model["path"], self.engine, seed=0)
        return self._generator, self._tokenizer

    def close(self) -> None:
        if self._owned and self._generator is not None:
            self._generator.close()
            self._generator = None

    def __enter__(self) -> RephraseJudge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_cache(self) -> dict[tuple[str, str], str]:
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return {}
        shards = sorted(self.cache_dir.glob("*.parquet"))
        if not shards:
            return {}
        table = pl.read_parquet(shards).unique(["message_hash", "eval_hash"], keep="first", maintain_order=True)
        return {(a, b): v for a, b, v in table.select("message_hash", "eval_hash", "verdict").iter_rows()}

    def _write_cache(self, fresh: pl.DataFrame) -> None:
        if self.cache_dir is None:
            return
        name = hashlib.sha256("\n".join(a + b for a, b in fresh.select("message_hash", "eval_hash").iter_rows())
                              .encode()).hexdigest()
        path = self.cache_dir / f"{name}.parquet"
        if not path.exists():
            write_parquet_atomic(fresh, path)
