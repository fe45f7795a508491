"""Turn completion and the paired comparison of two models (no Dagster here).

- **Turn completion**: the share of answers that ended on the model's own end-of-turn token (``finish_reason ==
  "stop"``) rather than hitting ``max_tokens`` (``"length"``); an answer that stopped on another stop token (the
  original ``<eos>``: ``"eos"``) is not a completed turn and is counted apart.
- **Comparison**: tuned - base differences with a seeded paired bootstrap 95% interval over prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from assets.evaluation.prompts import EvaluationInputError

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


