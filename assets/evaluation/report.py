"""The evaluation report: every model's IFEval accuracies and turn completion, tuned - base with its interval, as
data and as Markdown (no Dagster here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from assets.common.data.report import markdown_table
from assets.evaluation.prompts import EvaluationInputError, IFEvalItem, ifeval_source
from assets.evaluation.scoring import (
    ifeval_accuracy,
    per_instruction_table,
    prompt_scores,
    punkt_source,
    score_responses,
)
from assets.evaluation.statistics import Answer, paired_bootstrap, turn_completion

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


