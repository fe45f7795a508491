"""A fake judge engine: answers each judge prompt by a function of the conversation it contains."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from assets.common.models.engine import Completion, SamplingConfig


def answer(category="information_seeking", difficulty=2, instruction_quality=4, response_quality=4,
           refusal=False, reason="Clear question, correct answer.") -> str:
    return json.dumps({"reason": reason, "category": category, "difficulty": difficulty,
                       "instruction_quality": instruction_quality, "response_quality": response_quality,
                       "refusal": refusal}, separators=(",", ":"))


class FakeJudge:
    """``respond(prompt_text) -> (text, finish_reason)``; records every call's schema and sampling."""

    engine_name, engine_version, startup_seconds = "fake-judge", "1.0", 0.0

    def __init__(self, tokenizer, respond: Callable[[str], tuple[str, str]]):
        self.tokenizer, self.respond, self.calls = tokenizer, respond, []

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, stop_token_ids: Sequence[int],
                 seeds: Sequence[int], json_schema: dict | None = None) -> list[Completion]:
        self.calls.append({"rows": len(prompts), "schema": json_schema, "sampling": sampling, "seeds": list(seeds)})
        out = []
        for ids in prompts:
            text, finish = self.respond(self.tokenizer.decode(ids))
            out.append(Completion(text=text, token_ids=tuple(range(len(text) // 4 + 1)), finish_reason=finish))
        return out
