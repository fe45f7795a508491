"""What the evaluation concludes from the answers (no Dagster here): which prompts, P(end-of-turn) at answer ends, the
"not worse than base" verdict, new runaways, and the texts and tables of the report."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence

import polars as pl

from assets.common.data.report import markdown_table
from assets.evaluation.answering import (
    ModelAnswers,
    end_of_turn_probability,
    load_causal_lm,
    marker_initialised_model,
)
from assets.evaluation.prompts import (
    DEFAULT_INSTRUCTION_RULES,
    IFEvalItem,
    ifeval_source,
    item_allowed,
    load_ifeval_items,
    select_prompts,
)
from assets.evaluation.scoring import punkt_source

BASE, TUNED, TEACHER = "base", "tuned", "teacher"
IFEVAL, STOP_CHECK = "ifeval", "stop_check"  # the prompt sets every model answers
AFTER_MARKER_INIT = "after_marker_initialisation"


def choose_prompts(num_prompts: int, seed: int, short_answers_only: bool,
                   instruction_types: Sequence[str]) -> list[IFEvalItem]:
    """A seeded sample of at most ``num_prompts`` IFEval prompts: only those whose every instruction matches
    ``instruction_types`` (when given) and, with ``short_answers_only``, one a short answer can meet. Raises
    ValueError naming the settings when none is left."""
    items = load_ifeval_items()
    if instruction_types:
        items = [item for item in items if item_allowed(item, list(instruction_types))]
    rules = DEFAULT_INSTRUCTION_RULES if short_answers_only else ["*"]
    chosen = select_prompts(items, num_prompts, seed, rules)
    if not chosen:
        raise ValueError(f"no IFEval prompt has only instructions of types {list(instruction_types)}"
                         f"{' admitted for short answers' if short_answers_only else ''}: widen "
                         "instruction_types (e.g. 'change_case:*') or turn short_answers_only off")
    return chosen


def end_of_turn_probabilities(conversations: list, base_dir: str, tuned_dir: str, source: str,
                              skipped_reason: str, log: Callable[[str], None]) -> dict:
    """P(end-of-turn) at the answer ends of ``conversations``: the base model, the base with its marker rows
    initialised as training did (see `marker_initialised_model`), the tuned model. ``skipped_reason`` is reported
    when there are no conversations."""
    result: dict = {"conversations": len(conversations), "source": source, "models": {}}
    if not conversations:
        log(f"P(end-of-turn) not measured: {skipped_reason}")
        result["reason"] = skipped_reason
        return result
    for name, model_dir in ((BASE, base_dir), (AFTER_MARKER_INIT, None), (TUNED, tuned_dir)):
        loaded = load_causal_lm(model_dir) if model_dir is not None else marker_initialised_model(base_dir, tuned_dir)
        if isinstance(loaded, str):
            result["models"][name] = {"mean": None, "reason": loaded}
            continue
        probabilities = end_of_turn_probability(*loaded, conversations)
        result["models"][name] = {"mean": probabilities.mean, "per_conversation": probabilities.per_row}
        del loaded
    return result


def not_worse_verdict(comparison: dict, tolerance_points: float) -> dict:
    difference = 100 * comparison["difference"]
    passed = difference >= -tolerance_points - 1e-9
    interval = f"[{100 * comparison['low']:+.1f}, {100 * comparison['high']:+.1f}]"
    detail = (f"prompt-level strict accuracy: base {100 * comparison['base']:.1f}%, tuned "
              f"{100 * comparison['tuned']:.1f}%, tuned - base {difference:+.1f} points (95% interval {interval}, "
              f"{comparison['prompts']} prompts); required >= {-tolerance_points:+.1f}")
    return {"passed": passed, "detail": detail, "difference_points": round(difference, 3),
            "ci95_low_points": round(100 * comparison["low"], 3),
            "ci95_high_points": round(100 * comparison["high"], 3), "tolerance_points": tolerance_points,
            "prompts": comparison["prompts"]}


def new_runaways(table: pl.DataFrame) -> list[int]:
    """IFEval keys the tuned model runs to max_tokens on and the base model answers within it (reported only: a
    tuned model that follows a 'write 300 words' instruction may need more than the budget)."""
    ifeval = table.filter(pl.col("prompt_set") == IFEVAL)
    wide = (ifeval.filter(pl.col("model") == TUNED).select("key", tuned="finish_reason")
            .join(ifeval.filter(pl.col("model") == BASE).select("key", base="finish_reason"), on="key"))
    return wide.filter((pl.col("tuned") == "length") & (pl.col("base") != "length"))["key"].sort().to_list()


def difference_text(comparison: dict) -> str:
    return (f"{100 * comparison['difference']:+.1f} points (95% CI [{100 * comparison['low']:+.1f}, "
            f"{100 * comparison['high']:+.1f}], {comparison['prompts']} prompts)")


def end_of_turn_line(end_of_turn: dict) -> str:
    if not end_of_turn["models"]:
        return f"P(end-of-turn) at answer ends: not measured ({end_of_turn.get('reason')})"
    parts = [f"{name.replace('_', ' ')} {v['mean']:.3f}" if v["mean"] is not None
             else f"{name.replace('_', ' ')} ({v['reason']})" for name, v in end_of_turn["models"].items()]
    return (f"P(end-of-turn) at answer ends ({end_of_turn['conversations']} {end_of_turn['source']}): "
            + " → ".join(parts))


def side_by_side(table: pl.DataFrame, models: list[str], n: int) -> str:
    ifeval = table.filter(pl.col("prompt_set") == IFEVAL)
    keys = ifeval["key"].unique().sort().head(n).to_list()
    rows = []
    for key in keys:
        answers = ifeval.filter(pl.col("key") == key)
        row = {"key": key, "prompt": answers["prompt"][0]}
        for model in models:
            answer = answers.filter(pl.col("model") == model).row(0, named=True)
            row[model] = f"[{answer['finish_reason']}] {answer['response']}"
        rows.append(row)
    return markdown_table(rows) if rows else "(none)"


def source_versions(results: dict[str, ModelAnswers]) -> dict[str, str]:
    versions = {"ifeval": ifeval_source(), "nltk_punkt": punkt_source()}
    for dist in ("if-verifiable", "nltk", "langdetect", "transformers"):
        versions[dist] = importlib.metadata.version(dist)
    versions["engine"] = next(iter(results.values())).engine
    return versions
