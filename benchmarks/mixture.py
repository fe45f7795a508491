"""The mixture's cost on this machine: ``build_mixture`` on a synthetic tagged pool (three sources, 16 tasks, five
languages, 5% refusals), with no constraint and with eight that all bind (source shares, caps, a floor, a refusal
share, language targets), and token counting with a model directory's tokenizer and chat template (``--model``).

    .venv/bin/python benchmarks/mixture.py --rows 50000 [--model DIR --token-rows 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from assets.common.data.schema import CONVERSATION_SCHEMA  # noqa: E402
from assets.mixture.core import MixtureConfig, build_mixture  # noqa: E402
from benchmarks.common import load_average  # noqa: E402

CONSTRAINED = MixtureConfig(source_shares={"a": 0.3, "b": 0.1}, category_caps={"t0": 0.03, "t1": 0.05},
                            category_floors={"t2": 0.1}, refusal_share=0.02,
                            language_targets={"de": 0.1, "fr": 0.3}, temperature=2.0)


def pool(n: int, seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = [{"conversation_id": f"00000-{i:07d}", "messages": [
        {"role": "user", "content": f"Question {i} about item {rng.randrange(1000)}?"},
        {"role": "assistant", "content": "An answer. " * rng.randrange(1, 40)}],
        "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": 0, "row_index": i, "seed": 0,
        "generator_model": "m", "generator_model_hash": "h", "pre_query_template_hash": "p", "sampling_params": "{}",
        "engine": "e", "engine_version": "v"} for i in range(n)]
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA).with_columns(
        pl.Series("task", [f"t{rng.randrange(16)}" for _ in range(n)]),
        pl.Series("source", [rng.choice([None, None, "a", "b"]) for _ in range(n)], dtype=pl.Utf8),
        pl.Series("instruction_language", [rng.choice(["en", "en", "en", "de", "fr"]) for _ in range(n)]),
        pl.Series("refusal", [rng.random() < 0.05 for _ in range(n)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--model", help="a model directory (tokenizer + chat template) to time token counting")
    parser.add_argument("--token-rows", type=int, default=2000)
    args = parser.parse_args()
    df = pool(args.rows)
    for name, cfg in (("unconstrained", MixtureConfig()), ("8 binding constraints", CONSTRAINED)):
        start = time.perf_counter()
        result = build_mixture(df, cfg)
        seconds = time.perf_counter() - start
        bound = sum(c["bound"] for c in result.manifest["constraints"])
        print(f"{name}: {seconds:.2f} s for {args.rows} rows ({args.rows / seconds:,.0f} rows/s), "
              f"{result.manifest['train_rows']} train rows, {bound} constraints bound")
    if args.model:
        from assets.mixture.tokens import student_token_counter

        count = student_token_counter(args.model)
        messages = df["messages"].head(args.token_rows).to_list()
        start = time.perf_counter()
        tokens = sum(c[0] for c in count.many(messages))  # in batches, as the mixture counts
        seconds = time.perf_counter() - start
        print(f"token counting: {len(messages) / seconds:,.0f} rows/s ({tokens / seconds:,.0f} tok/s)")
    print(f"load average: {load_average()}")


if __name__ == "__main__":
    main()
