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


@dataclass(frozen=True)
class StopVerdict:
    rows: list[dict]  # prompt, base / tuned answer (first 300 characters) and finish reason
    new_runaways: list[str]  # prompts the tuned model runs to max_tokens on and the base model does not
    inherited_runaways: list[str]  # prompts both models run to max_tokens on (greedy loops of the base model)
    stopped: int  # tuned answers that ended on a stop token

    @property
    def passed(self) -> bool:
        """No new runaway, and at least one answer ends on its own (a model that never stops fails, whatever the
        base does)."""
        return not self.new_runaways and self.stopped > 0


def stop_verdict(prompts: Sequence[str], base: Sequence, tuned: Sequence) -> StopVerdict:
    """Compare base and tuned greedy answers (Completions with ``text`` and ``finish_reason``) prompt by prompt."""
    rows = [{"prompt": p, "base": b.text[:300], "base_finish": b.finish_reason, "tuned": t.text[:300],
             "tuned_finish": t.finish_reason} for p, b, t in zip(prompts, base, tuned, strict=True)]
    return StopVerdict(
        rows=rows,
        new_runaways=[r["prompt"] for r in rows if r["tuned_finish"] != "stop" and r["base_finish"] == "stop"],
        inherited_runaways=[r["prompt"] for r in rows if r["tuned_finish"] != "stop" and r["base_finish"] != "stop"],
        stopped=sum(r["tuned_finish"] == "stop" for r in rows),
    )
