"""A cheap, deterministic `TextGenerator` for generation tests that do not need a real engine.

Each completion is a function of its seed alone (as a real engine's is with per-request seeds), so rows do not
depend on batching. A few seeds give an empty completion or one that leaks a template token, so the drop paths
run too. ``fail_on_call`` makes the n-th ``generate`` call (1-based) raise, to simulate a run killed mid-shard.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from assets.common.models.engine import Completion, SamplingConfig

WORDS = ("river stone lantern meadow copper violin harbor orchard thunder saffron glacier pepper marble falcon "
         "velvet canyon ember willow quartz tundra pebble cobalt nectar prairie").split()


class CrashedRun(RuntimeError):
    """Raised by the fake engine to simulate a run killed between batches."""


class FakeGenerator:
    engine_name = "fake-engine"
    engine_version = "1.0"
    startup_seconds = 0.0
    devices = "none (fake engine)"  # where a VLLMGenerator says it runs

    def __init__(self, fail_on_call: int | None = None):
        self.fail_on_call = fail_on_call
        self.calls: list[dict] = []  # one per generate call: prompts (token ids), seeds, sampling

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 stop_token_ids: Sequence[int], seeds: Sequence[int]) -> list[Completion]:
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise CrashedRun(f"simulated crash on generate call {self.fail_on_call}")
        self.calls.append({"prompts": [list(p) for p in prompts], "seeds": list(seeds), "sampling": sampling})
        return [completion(seed) for seed in seeds]


def completion(seed: int) -> Completion:
    rng = random.Random(seed)
    if seed % 17 == 0:
        text = ""
    else:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        if seed % 19 == 0:
            text += " <|im_start|>user"
    return Completion(text=text, token_ids=tuple(range(len(text.split()) + 1)), finish_reason="stop")
