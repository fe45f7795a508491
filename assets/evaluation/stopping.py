"""Does the tuned model still end its answers? The stop check's rule and its fixed prompts (no Dagster here).

The prompts are answered in the evaluation's engine runs (one start per model), beside the IFEval prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Prompts every fine-tune is compared on (fixed, so models can be compared across runs).
FIXED_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences what a hash table is.",
    "Give me three tips for a good night's sleep.",
    "Translate 'good morning' into Spanish.",
)


MIN_STOPPED = 4  # of the 5 fixed prompts, tuned answers that must end on the end-of-turn token


@dataclass(frozen=True)
class StopVerdict:
    rows: list[dict]  # prompt, base / tuned answer (first 300 characters) and finish reason
    new_runaways: list[str]  # prompts the tuned model runs to max_tokens on and the base model does not
    inherited_runaways: list[str]  # prompts both models run to max_tokens on (greedy loops of the base model)
    stopped: int  # tuned answers that ended on the end-of-turn token
    other_eos: list[str]  # prompts whose tuned answer stopped on another stop token (e.g. <eos>): not stopped
    min_stopped: int = MIN_STOPPED

    @property
    def passed(self) -> bool:
        """No new runaway, and at least ``min_stopped`` answers end on the end-of-turn token, whatever the base does
        (a model that stops once in five fails, even if the base never stops)."""
        return not self.new_runaways and self.stopped >= self.min_stopped

    def description(self) -> str:
        parts = [f"{self.stopped}/{len(self.rows)} tuned answers ended on the end-of-turn token (at least "
                 f"{self.min_stopped} required)"]
        if self.other_eos:
            parts.append(f"{len(self.other_eos)} stopped on another stop token instead (not a completed turn): "
                         f"{self.other_eos}")
        if self.new_runaways:
            parts.append(f"ran to max_tokens where the base stops: {self.new_runaways}")
        if self.inherited_runaways:
            parts.append(f"ran to max_tokens like the base: {self.inherited_runaways}")
        return "; ".join(parts)


def stop_verdict(prompts: Sequence[str], base: Sequence, tuned: Sequence, min_stopped: int = MIN_STOPPED
                 ) -> StopVerdict:
    """Compare base and tuned greedy answers (Completions with ``text`` and ``finish_reason``: "stop", "eos" or
    "length", see :func:`assets.evaluation.answering.turn_finish`) prompt by prompt."""
    if not 1 <= min_stopped <= len(prompts):
        raise ValueError(f"min_stopped must be between 1 and the {len(prompts)} prompts, got {min_stopped}")
    rows = [{"prompt": p, "base": b.text[:300], "base_finish": b.finish_reason, "tuned": t.text[:300],
             "tuned_finish": t.finish_reason} for p, b, t in zip(prompts, base, tuned, strict=True)]
    runaways = [r for r in rows if r["tuned_finish"] == "length"]
    return StopVerdict(
        rows=rows,
        new_runaways=[r["prompt"] for r in runaways if r["base_finish"] != "length"],
        inherited_runaways=[r["prompt"] for r in runaways if r["base_finish"] == "length"],
        stopped=sum(r["tuned_finish"] == "stop" for r in rows),
        other_eos=[r["prompt"] for r in rows if r["tuned_finish"] == "eos"],
        min_stopped=min_stopped,
    )
