"""Magpie lengths: how many conversations each instruction / response ``max_tokens`` keeps, from one generation run.

    .venv/bin/python benchmarks/generation_lengths.py                       # the demo's 96 conversations
    .venv/bin/python benchmarks/generation_lengths.py --conversations 32 --instruction-limits 96,128 \\
        --response-limits 256,384

The filtering stage's ``truncated`` rule rejects a conversation whose instruction or response ended on ``length``
(its ``max_tokens``) instead of a stop token. Which limits to set is a trade: longer limits keep more rows and cost
more tokens. This generates the demo's conversations once (shard 0, ``--seed``, the demo's sampling, one turn, no
system prompt unless ``--system-prompt`` / ``--response-system-prompt``) at the largest limits, then reads every
smaller limit off the same rows: a message that stops within a limit is the same message at any larger limit
(per-row seeds), and one that does not is cut. Each combination's rows go through the filtering stage's own rules
(``assets.filtering.core.apply_filters``, default thresholds, the teacher's special tokens and a Gemma student's
markers), so the figure is what reaches ``filtered_conversations``. Token counts for a limit below the run's are an
estimate where an instruction is cut (its answer is the one to the longer instruction).

Prints the length distributions, then one line per (instruction, response) limit: rows kept, cut instructions and
responses, tokens generated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import add_model_arguments, load_average, resolve_model  # noqa: E402

GEMMA_MARKERS = ("<start_of_turn>", "<end_of_turn>")  # the demo student's template markers (template-leak rule)


def generate(args: argparse.Namespace, model, tokenizer):
    """Instructions at the largest instruction limit, then their answers at the largest response limit: a table of
    per-row texts, finish reasons and token counts (rows with an empty or leaking instruction included)."""
    import polars as pl

    from assets.common.models.chat_template import render
    from assets.common.models.engine import EngineConfig, SamplingConfig, VLLMGenerator
    from assets.generation.magpie import MagpieConfig, _clean, _history, _pre_query, answering_messages, row_seed
    from assets.generation.templates import stop_token_ids

    config = MagpieConfig(
        num_conversations=args.conversations, seed=args.seed,
        instruction=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=max(args.instruction_limits)),
        response=SamplingConfig(temperature=0.7, min_p=0.05, max_tokens=max(args.response_limits),
                                repetition_penalty=1.05),
        system_prompts=((args.system_prompt, 1.0),), response_system_prompt=args.response_system_prompt)
    rows = range(config.num_conversations)
    pre_queries = [_pre_query(tokenizer, _history(args.system_prompt), config) for _ in rows]
    stops = sorted({t for pq in pre_queries for t in stop_token_ids(tokenizer, pq)})
    stop_strings = tokenizer.convert_ids_to_tokens(stops)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    generator = VLLMGenerator(str(model.path), EngineConfig(max_model_len=args.max_model_len,
                                                            cpu_kv_cache_gb=args.kv_cache_gb), seed=args.seed)
    print(f"engine up in {generator.startup_seconds:.0f}s; load average {load_average()}", flush=True)
    try:
        started = time.monotonic()
        instructions = generator.generate([ids(pq.prefix) for pq in pre_queries], config.instruction, stops,
                                          [row_seed(config, i, 1, "user") for i in rows])
        texts = [_clean(c.text, stop_strings) for c in instructions]
        middle = time.monotonic()
        prompts = [ids(render(tokenizer, answering_messages(
            [*_history(args.system_prompt), {"role": "user", "content": text or "?"}], config),
            add_generation_prompt=True)) for text in texts]
        responses = generator.generate(prompts, config.response, stops,
                                       [row_seed(config, i, 1, "assistant") for i in rows])
        ended = time.monotonic()
    finally:
        generator.close()
    print(f"instructions {middle - started:.0f}s, responses {ended - middle:.0f}s; load average {load_average()}")
    return pl.DataFrame({
        "instruction": texts, "instruction_finish": [c.finish_reason for c in instructions],
        "instruction_tokens": [len(c.token_ids) for c in instructions],
        "response": [_clean(c.text, stop_strings) for c in responses],
        "response_finish": [c.finish_reason for c in responses],
        "response_tokens": [len(c.token_ids) for c in responses]})


def kept_at(table, limits: tuple[int, int], filter_config) -> dict:
    """What the pipeline keeps of ``table`` at (instruction, response) limits: generation's own drops (an empty or
    leaking message), then the filtering stage's rules."""
    import polars as pl

    from assets.common.data.schema import CONVERSATION_SCHEMA
    from assets.filtering.core import apply_filters, truncated_messages

    def finish(reason: str, tokens: int, limit: int) -> str:
        return "stop" if reason == "stop" and tokens <= limit else "length"

    leaks = filter_config.special_tokens
    conversations = []
    for i, row in enumerate(table.iter_rows(named=True)):
        reasons = [finish(row["instruction_finish"], row["instruction_tokens"], limits[0]),
                   finish(row["response_finish"], row["response_tokens"], limits[1])]
        answered = reasons[0] != "stop" or (row["response"] and not any(t in row["response"] for t in leaks))
        if not row["instruction"] or any(t in row["instruction"] for t in leaks) or not answered:
            continue
        conversations.append({"conversation_id": str(i), "finish_reasons": reasons, "messages": [
            {"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"] or "?"}]})
    frame = pl.DataFrame(conversations, schema={k: CONVERSATION_SCHEMA[k] for k in
                                                ("conversation_id", "messages", "finish_reasons")})
    result = apply_filters(frame, filter_config)
    tokens = (table["instruction_tokens"].clip(upper_bound=limits[0]).sum(),
              table["response_tokens"].clip(upper_bound=limits[1]).sum())
    return {"kept": result.kept.height, "cut": truncated_messages(result.rejected),
            "rejected": dict(result.rejected.group_by("reason").len().iter_rows()), "tokens": tokens}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=96, help="conversations (default 96, the demo's)")
    parser.add_argument("--instruction-limits", default="64,96,128,192,256",
                        help="instruction max_tokens to compare (default 64,96,128,192,256; the largest is run)")
    parser.add_argument("--response-limits", default="256,320,384,448,512",
                        help="response max_tokens to compare (default 256,320,384,448,512; the largest is run)")
    parser.add_argument("--system-prompt", default="",
                        help="the system prompt of every conversation, as `system_prompts` in the pipeline: in the "
                             "pre-query prefix and when answering (default none: the template's own default)")
    parser.add_argument("--response-system-prompt", default="",
                        help="`response_system_prompt` in the pipeline: a system message for the answers only, not "
                             "in the pre-query prefix (after --system-prompt, if both are set; default none)")
    parser.add_argument("--seed", type=int, default=0, help="Magpie run seed (default 0, the demo's)")
    parser.add_argument("--max-model-len", type=int, default=2048, help="vLLM max_model_len (default 2048, the demo's)")
    parser.add_argument("--kv-cache-gb", type=int, default=2, help="vLLM CPU KV cache GB (default 2, the demo's)")
    add_model_arguments(parser)
    args = parser.parse_args()
    args.instruction_limits = sorted(int(x) for x in args.instruction_limits.split(","))
    args.response_limits = sorted(int(x) for x in args.response_limits.split(","))
    return args


def main() -> None:
    args = arguments()
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import special_token_strings
    from assets.filtering.core import FilterConfig

    model = resolve_model(args)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    table = generate(args, model, tokenizer)
    stopped = table.filter(table["instruction_finish"] == "stop")["instruction_tokens"]
    answered = table.filter(table["response_finish"] == "stop")["response_tokens"]
    print(f"instructions that stopped: {stopped.len()} of {table.height}, median {stopped.median()} tokens, longest "
          f"{stopped.max()}; responses that stopped: {answered.len()}, median {answered.median()}, all responses' "
          f"median {table['response_tokens'].median()}")
    filter_config = FilterConfig(special_tokens=tuple(special_token_strings(tokenizer)), template_markers=GEMMA_MARKERS)
    print("| instruction / response max_tokens | kept | cut: instruction / response | other rejections | "
          "tokens (instructions + responses) |")
    for limits in ((i, r) for i in args.instruction_limits for r in args.response_limits):
        kept = kept_at(table, limits, filter_config)
        other = {k: v for k, v in kept["rejected"].items() if k != "truncated"}
        print(f"| {limits[0]} / {limits[1]} | {kept['kept']} ({kept['kept'] / table.height:.1%}) | "
              f"{kept['cut']['instruction']} / {kept['cut']['response']} | {other or '-'} | "
              f"{sum(kept['tokens']):,} ({kept['tokens'][0]:,} + {kept['tokens'][1]:,}) |")


if __name__ == "__main__":
    main()
