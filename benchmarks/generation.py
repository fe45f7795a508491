"""Magpie generation: tok/s per response-sampling setting on vLLM, vs its own greedy run and vs transformers.

    .venv/bin/python benchmarks/generation.py                      # 64 conversations per setting, 32 for the HF ratio
    .venv/bin/python benchmarks/generation.py --conversations 128 --hf-conversations 64
    .venv/bin/python benchmarks/generation.py --settings top_p=0.9,min_p=0.05,greedy --backends vllm

The Magpie workload of the pipeline (``assets.generation.magpie.generate_conversations``: pre-query instruction
sampling at temperature 1.0 / top_p 1.0, up to ``--instruction-max-tokens``, then the answer up to
``--max-tokens``, stop on the template's end-of-turn token and EOS, per-request seeds) on one vLLM engine
(:class:`assets.common.models.engine.VLLMGenerator` as the pipeline uses it), once per response-sampling setting
(``--settings``; each at temperature 0.7 and the demo's repetition penalty 1.05, greedy at temperature 0):

* ``top_p=0.9`` (the old default: vLLM-CPU sorts the whole vocabulary at every step for it), ``min_p=<p>``,
  ``top_k=<k>`` (no sort) and ``greedy``.

The instructions are the same for every setting (same seeds, same instruction sampling): they are generated once
and reused, so each setting's rate is its responses' tokens per second inside ``generate`` (``resp tok/s``). For
each setting the table also gives the rows the pipeline would keep: after generation's own drops and after the
filtering stage's rules (``assets.filtering.core.apply_filters``, default thresholds, the teacher's special tokens),
and the share of answers that ended on a stop token rather than ``max_tokens``: the setting is chosen by that keep
rate, not by guess.

``sampling_vs_greedy`` = the default setting's (``MagpieConfig().response``'s filter: min_p/top_k/top_p) response
tok/s / greedy's, same prompts, same engine, same run. ``ratio`` = vLLM / transformers ``generate`` (static batches of
``--batch-size``, left padding, fp32, the same settings) on the whole workload (instructions + responses) of the
first ``--hf-conversations`` conversations at the default setting, both backends on exactly that workload (the
transformers side is slow: a smaller workload than the per-setting runs, the same on both sides).

The base model is the embedded SmolLM2-135M-Instruct GGUF converted once into ``--model-root`` (default
``data/models/embedded``, where the pipeline puts it), or any local Hugging Face directory given with ``--model``.

The last line is ``sampling_vs_greedy=<x> ratio=<vllm/hf> default=<setting> vllm_tok_s=<a> hf_tok_s=<b>
<setting>_tok_s=... <setting>_keep=...``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from assets.common.models.engine import Completion, SamplingConfig  # noqa: E402
from benchmarks.common import add_model_arguments, load_average, resolve_model  # noqa: E402


class HFGenerator:
    """transformers ``generate`` behind the ``TextGenerator`` protocol: static batches, left padding, fp32 on CPU.

    Prompts are grouped into batches by length (less padding) and results returned in the input order. Per-row
    seeds are not available in ``generate``: each batch is seeded with ``torch.manual_seed(seed of its first row)``,
    so a run is reproducible but a row depends on the batch it lands in."""

    engine_name = "transformers"

    def __init__(self, model_path: str | Path, batch_size: int = 32, threads: int | None = None, log=None):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.logging.set_verbosity_error()
        self.engine_version = transformers.__version__
        if threads:
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.log = log
        started = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.startup_seconds = time.monotonic() - started

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 stop_token_ids: Sequence[int], seeds: Sequence[int]) -> list[Completion]:
        import torch

        stops = set(int(t) for t in stop_token_ids)
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        results: list[Completion | None] = [None] * len(prompts)
        sample = sampling.temperature > 0
        knobs = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                     min_p=sampling.min_p or None) if sample else {}
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(prompts[i]) for i in rows)
            input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                n = len(prompts[i])
                input_ids[r, width - n:] = torch.tensor(list(prompts[i]), dtype=torch.long)
                attention_mask[r, width - n:] = 1
            torch.manual_seed(int(seeds[rows[0]]))
            batch_started = time.monotonic()
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=sample,
                    max_new_tokens=sampling.max_tokens,
                    repetition_penalty=sampling.repetition_penalty,
                    eos_token_id=sorted(stops),
                    pad_token_id=self.pad_id,
                    **knobs,
                )
            for r, i in enumerate(rows):
                ids = out[r, width:].tolist()
                end = next((k for k, t in enumerate(ids) if t in stops), None)
                # like vLLM: the stop token is part of the output; what follows it is batch padding
                ids = ids[: end + 1] if end is not None else ids[: sampling.max_tokens]
                results[i] = Completion(text=self.tokenizer.decode(ids, skip_special_tokens=False),
                                        token_ids=tuple(ids), finish_reason="stop" if end is not None else "length")
            if self.log:
                generated = sum(len(results[i].token_ids) for i in rows)
                self.log(f"batch {start // self.batch_size + 1}/{-(-len(order) // self.batch_size)}: {len(rows)} "
                         f"prompts of <= {width} tokens, {generated} tokens ({out.shape[1] - width} steps) in "
                         f"{time.monotonic() - batch_started:.1f}s")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
        gc.collect()


class Timed:
    """Wraps a TextGenerator: adds up the seconds and tokens of its ``generate`` calls per sampling setting, and
    answers a call it has answered before (same prompts, sampling and seeds: the instructions) from memory."""

    def __init__(self, inner, reuse: bool = True):
        self.inner = inner
        self.engine_name, self.engine_version = inner.engine_name, inner.engine_version
        self.reuse = reuse
        self.seconds: dict[SamplingConfig, float] = {}
        self.tokens: dict[SamplingConfig, int] = {}
        self._answers: dict = {}

    def generate(self, prompts, sampling, stop_token_ids, seeds):
        key = (tuple(map(tuple, prompts)), sampling, tuple(stop_token_ids), tuple(seeds))
        if self.reuse and key in self._answers:
            return self._answers[key]
        started = time.monotonic()
        out = self.inner.generate(prompts, sampling, stop_token_ids, seeds)
        self.seconds[sampling] = self.seconds.get(sampling, 0.0) + time.monotonic() - started
        self.tokens[sampling] = self.tokens.get(sampling, 0) + sum(len(c.token_ids) for c in out)
        self._answers[key] = out
        return out


def parse_setting(text: str, args: argparse.Namespace) -> SamplingConfig:
    """``top_p=0.9``, ``min_p=0.05``, ``top_k=40`` or ``greedy``, at the benchmark's temperature and penalty."""
    common = dict(max_tokens=args.max_tokens, repetition_penalty=args.repetition_penalty)
    if text == "greedy":
        return SamplingConfig(temperature=0.0, **common)
    name, _, value = text.partition("=")
    if name not in ("top_p", "min_p", "top_k") or not value:
        raise ValueError(f"--settings: {text!r}; expected top_p=<p>, min_p=<p>, top_k=<k> or greedy")
    return SamplingConfig(temperature=args.temperature, **common, **{name: (int if name == "top_k" else float)(value)})


def setting_name(sampling: SamplingConfig) -> str:
    if sampling.temperature == 0:
        return "greedy"
    for name, off in (("min_p", 0.0), ("top_k", 0), ("top_p", 1.0)):
        if getattr(sampling, name) != off:
            return f"{name}={getattr(sampling, name):g}"
    return "plain"


def magpie_config(args: argparse.Namespace, response: SamplingConfig, conversations: int):
    from assets.generation.magpie import MagpieConfig

    return MagpieConfig(
        num_conversations=conversations,
        num_turns=args.turns,
        instruction=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=args.instruction_max_tokens),
        response=response,
        seed=args.seed,
    )


def run_setting(timed: Timed, tokenizer, config, model, filter_config) -> dict:
    """The Magpie workload at one response setting; its response rate and what the pipeline would keep."""
    from assets.filtering.core import apply_filters
    from assets.generation.magpie import generate_conversations

    name = setting_name(config.response)
    table, stats = generate_conversations(timed, tokenizer, config, model.name, model.content_hash,
                                          log=lambda msg: None)
    kept = apply_filters(table, filter_config).kept.height if table.height else 0
    seconds, tokens = timed.seconds.get(config.response, 0.0), timed.tokens.get(config.response, 0)
    figures = {
        "setting": name, "attempted": stats.attempted, "generated": stats.kept, "kept": kept,
        "keep": kept / stats.attempted if stats.attempted else float("nan"),
        "response_tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds if seconds else float("nan"),
        "workload_tokens": stats.tokens_generated, "workload_seconds": stats.seconds,
        "stop_fraction": _stop_fraction(table), "dropped": dict(stats.dropped),
    }
    print(f"[vllm {name}] {tokens} response tokens in {seconds:.1f}s = {figures['tok_s']:.1f} tok/s; generated "
          f"{stats.kept}/{stats.attempted}, kept by the filters {kept} ({figures['keep']:.1%}); stop "
          f"{figures['stop_fraction']:.1%}; load average {load_average()}", flush=True)
    return figures


def _stop_fraction(table) -> float:
    reasons = [r for row in table["finish_reasons"].to_list() for r in row]
    return sum(r == "stop" for r in reasons) / len(reasons) if reasons else float("nan")


def workload_rate(generator, tokenizer, config, model, label: str) -> dict:
    """Instructions + responses of ``config`` on ``generator`` from scratch: tokens per second of the workload."""
    from assets.generation.magpie import generate_conversations

    _, stats = generate_conversations(generator, tokenizer, config, model.name, model.content_hash,
                                      log=lambda msg: print(f"[{label}] {msg}", flush=True))
    rate = stats.tokens_generated / stats.seconds if stats.seconds else float("nan")
    print(f"[{label}] {stats.tokens_generated} tokens in {stats.seconds:.1f}s = {rate:.1f} tok/s "
          f"({config.num_conversations} conversations); load average {load_average()}", flush=True)
    return {"tokens": stats.tokens_generated, "seconds": stats.seconds, "tok_s": rate}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=64, help="conversations per setting (default 64)")
    parser.add_argument("--hf-conversations", type=int, default=32, help="conversations of the vLLM/transformers "
                        "ratio, run on both backends (default 32)")
    parser.add_argument("--settings", default="top_p=0.9,min_p=0.05,min_p=0.1,top_k=40,greedy",
                        help="response settings, comma-separated (default top_p=0.9,min_p=0.05,min_p=0.1,top_k=40,"
                        "greedy; the default setting and greedy are added when missing)")
    parser.add_argument("--temperature", type=float, default=0.7, help="response temperature (default 0.7)")
    parser.add_argument("--repetition-penalty", type=float, default=1.05, help="(default 1.05, the demo's)")
    parser.add_argument("--turns", type=int, default=1, help="turns per conversation (default 1)")
    parser.add_argument("--instruction-max-tokens", type=int, default=128, help="instruction max_tokens (128)")
    parser.add_argument("--max-tokens", type=int, default=256, help="response max_tokens (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="transformers backend batch size (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="Magpie run seed (default 0)")
    add_model_arguments(parser)
    parser.add_argument("--backends", default="vllm,hf", help="vllm, or vllm,hf (default): hf adds the ratio")
    parser.add_argument("--max-model-len", type=int, default=4096, help="vLLM max_model_len (default 4096)")
    parser.add_argument("--kv-cache-gb", type=int, default=4, help="vLLM CPU KV cache GB, if "
                        "VLLM_CPU_KVCACHE_SPACE is unset (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the transformers backend "
                        "(default: torch's own, all cores)")
    return parser.parse_args()


def default_setting(args: argparse.Namespace) -> SamplingConfig:
    """The core default's filter (``MagpieConfig().response``) at the benchmark's temperature and penalty."""
    from assets.generation.magpie import MagpieConfig

    core = MagpieConfig().response
    return SamplingConfig(temperature=args.temperature, top_p=core.top_p, max_tokens=args.max_tokens,
                          repetition_penalty=args.repetition_penalty, min_p=core.min_p, top_k=core.top_k)


def main() -> None:
    args = arguments()
    from transformers import AutoTokenizer

    from assets.common.models.engine import EngineConfig, VLLMGenerator
    from assets.filtering.core import FilterConfig

    model = resolve_model(args)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    default = default_setting(args)
    settings = [parse_setting(t.strip(), args) for t in args.settings.split(",") if t.strip()]
    settings += [s for s in (default, parse_setting("greedy", args)) if s not in settings]
    filter_config = FilterConfig(special_tokens=tuple(tokenizer.all_special_tokens))
    print(f"model {model.name} at {model.path}; {args.conversations} conversations x {args.turns} turn(s) per "
          f"setting: {[setting_name(s) for s in settings]} (default {setting_name(default)}); transformers ratio on "
          f"{args.hf_conversations}; {len(os.sched_getaffinity(0))} cores; load average {load_average()}", flush=True)

    engine_config = EngineConfig(max_model_len=args.max_model_len, cpu_kv_cache_gb=args.kv_cache_gb)
    generator = VLLMGenerator(str(model.path), engine_config, seed=args.seed)
    print(f"[vllm] {generator.engine_name}=={generator.engine_version} up in {generator.startup_seconds:.1f}s",
          flush=True)
    try:
        timed = Timed(generator)
        results = [run_setting(timed, tokenizer, magpie_config(args, s, args.conversations), model, filter_config)
                   for s in settings]
        vllm = (workload_rate(generator, tokenizer, magpie_config(args, default, args.hf_conversations), model,
                              "vllm workload") if "hf" in args.backends else None)
    finally:
        generator.close()
        del generator
        gc.collect()
    hf = None
    if "hf" in args.backends:
        hf_generator = HFGenerator(model.path, batch_size=args.batch_size, threads=args.threads,
                                   log=lambda msg: print(f"[hf] {msg}", flush=True))
        hf = workload_rate(hf_generator, tokenizer, magpie_config(args, default, args.hf_conversations), model,
                           "hf workload")
        hf_generator.close()
    report(results, setting_name(default), vllm, hf)


def report(results: list[dict], default: str, vllm: dict | None, hf: dict | None) -> None:
    print()
    header = (f"{'setting':<12} {'resp tokens':>11} {'seconds':>8} {'resp tok/s':>10} {'generated':>9} "
              f"{'kept':>9} {'keep %':>6} {'stop %':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['setting']:<12} {r['response_tokens']:>11} {r['seconds']:>8.1f} {r['tok_s']:>10.1f} "
              f"{r['generated']:>9} {r['kept']:>4}/{r['attempted']:<4} {100 * r['keep']:>6.1f} "
              f"{100 * r['stop_fraction']:>6.1f}")
    print("(resp tok/s: response tokens per second inside vLLM's generate; kept: rows left after generation's drops "
          "and the filtering stage's rules; stop %: turns that ended on a stop token)")
    by_name = {r["setting"]: r for r in results}
    nan = float("nan")
    sampling_vs_greedy = by_name[default]["tok_s"] / by_name["greedy"]["tok_s"]
    ratio = vllm["tok_s"] / hf["tok_s"] if vllm and hf else nan
    print(f"load average now {load_average()} (other work on the machine skews rates)")
    per_setting = " ".join(f"{r['setting'].replace('=', '')}_tok_s={r['tok_s']:.1f} "
                           f"{r['setting'].replace('=', '')}_keep={r['keep']:.3f}" for r in results)
    print(f"sampling_vs_greedy={sampling_vs_greedy:.3f} ratio={ratio:.2f} default={default.replace('=', '')} "
          f"vllm_tok_s={vllm['tok_s'] if vllm else nan:.1f} hf_tok_s={hf['tok_s'] if hf else nan:.1f} {per_setting}")


if __name__ == "__main__":
    main()
