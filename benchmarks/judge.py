"""The LLM judge on this machine: throughput, parse share and agreement with the planted set.

One vLLM engine (the pipeline's, CPU settings of the demo profile) on the judge model (default: the embedded
SmolLM2-135M-Instruct, the demo's teacher): it first generates ``--conversations`` Magpie conversations (the rows the
judge sees in the demo), then judges them (rows/s, generated tok/s, share of answers that parse), then judges the
planted set (``assets/tagging/planted.yaml``) and prints its agreement per label and per kind of row, and judges the
planted set once more without the JSON schema (free generation) to show what structured decoding buys.

    .venv/bin/python benchmarks/judge.py --conversations 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_model_arguments, load_average, resolve_model  # noqa: E402


class WithoutSchema:
    """The engine with structured decoding off: the judge's prompt alone asks for JSON."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, prompts, sampling, stop_token_ids, seeds, json_schema=None):
        return self.engine.generate(prompts, sampling, stop_token_ids, seeds, json_schema=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256, help="the judge's max_tokens (default 256)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--prompt", default="judge-v1", help="a prompt file in assets/tagging/prompts/")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from assets.common.models.engine import EngineConfig, SamplingConfig, VLLMGenerator
    from assets.generation.magpie import MagpieConfig, generate_conversations
    from assets.tagging.core import JudgeProvenance, tag_rows
    from assets.tagging.judge import JudgeConfig, judge_stop_token_ids, load_prompt, run_judge
    from assets.tagging.planted import agreement, disagreements, planted_table

    model = resolve_model(args)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    engine_config = EngineConfig(max_model_len=2048, cpu_kv_cache_gb=2)  # the demo profile's engine
    cfg = JudgeConfig(prompt=args.prompt, max_tokens=args.max_tokens, batch_size=args.batch_size)
    prompt, stops = load_prompt(cfg.prompt), judge_stop_token_ids(tokenizer)
    limit = engine_config.max_model_len - cfg.max_tokens
    print(f"model {model.name}; load {load_average()}", flush=True)
    with VLLMGenerator(str(model.path), engine_config, seed=0) as engine:
        print(f"engine up in {engine.startup_seconds:.0f}s", flush=True)
        magpie = MagpieConfig(num_conversations=args.conversations, num_turns=1, seed=0,
                              instruction=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=128),
                              response=SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=256,
                                                      repetition_penalty=1.05))
        rows = planted_table().clear()
        if args.conversations:
            rows, _ = generate_conversations(engine, tokenizer, magpie, model.name, model.content_hash)
        print(f"{rows.height} conversations generated; judging", flush=True)
        began = time.monotonic()
        labels, stats = run_judge(engine, tokenizer, rows, cfg, prompt, stops, limit, log=print)
        wall = time.monotonic() - began
        planted = planted_table()
        planted_labels, planted_stats = run_judge(engine, tokenizer, planted, cfg, prompt, stops, limit)
        _, free_stats = run_judge(WithoutSchema(engine), tokenizer, planted, cfg, prompt, stops, limit)
    tagged = tag_rows(planted, planted_labels, JudgeProvenance(model.name, model.content_hash, prompt.name,
                                                               prompt.hash))
    figures = {"model": model.name, "prompt": prompt.name, "prompt_hash": prompt.hash, "judge": stats.to_dict(),
               "wall_seconds": round(wall, 1), "prompt_tokens_per_row": round(stats.prompt_tokens / max(stats.rows, 1)),
               "planted_judge": planted_stats.to_dict(), "agreement": agreement(tagged),
               "planted_without_schema": free_stats.to_dict(),
               "unparsed_errors": labels.filter(labels["judge_status"] == "unparsed")["judge_error"].head(5).to_list(),
               "categories": dict(labels["judge_category"].value_counts().sort("count", descending=True).iter_rows()),
               "load": load_average()}
    print(json.dumps(figures, indent=1, default=str))
    with __import__("polars").Config(tbl_rows=30, fmt_str_lengths=60, tbl_width_chars=250):
        print(disagreements(tagged, limit=30))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
