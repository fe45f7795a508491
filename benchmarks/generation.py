"""Magpie generation throughput: vLLM offline engine vs transformers ``generate`` (run by hand, not in CI).

    .venv/bin/python benchmarks/generation.py                      # 256 conversations, SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/generation.py --conversations 64   # quick check
    .venv/bin/python benchmarks/generation.py --model /path/to/hf-model-dir --batch-size 16

The same Magpie workload (``assets.generation.magpie.generate_conversations``: pre-query instruction sampling, then
the answer; default 256 single-turn conversations, instructions up to 128 tokens at temperature 1.0 / top_p 1.0,
answers up to 256 tokens at temperature 0.7 / top_p 0.9, stop on the template's end-of-turn token and EOS) runs
through two backends implementing the same ``TextGenerator`` protocol:

* vLLM: :class:`assets.common.engine.VLLMGenerator` exactly as the pipeline uses it (per-request seeds, chunked
  prefill off, eager on CPU; ``VLLM_CPU_KVCACHE_SPACE`` / ``VLLM_CPU_OMP_THREADS_BIND`` are set only when unset);
* transformers: :class:`HFGenerator` below, static batches of ``--batch-size`` prompts (sorted by length, left
  padded), fp32 on CPU, ``model.generate`` with the same temperature / top_p / max_tokens (top_k off, as in vLLM)
  and the same stop token ids; one ``torch.manual_seed`` per batch (HF has no per-row seeds).

The rate of each backend is generated tokens (instruction + response tokens, stop tokens included, as counted by
``MagpieStats``) per second of ``generate_conversations``, start-up (engine start / model load) excluded and printed
separately; the time spent inside the backends' ``generate`` alone is printed too. Prompts are deterministic (fixed
seed); the sampled texts, so the token counts, differ between the backends, which is why tokens/s is compared.

The base model is the embedded SmolLM2-135M-Instruct GGUF converted once into ``--model-root`` (default
``data/models/embedded``, where the pipeline puts it), or any local Hugging Face directory given with ``--model``.

The last line is ``ratio=<vllm tok/s / hf tok/s> vllm_tok_s=<a> hf_tok_s=<b>``.
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

from assets.common.engine import Completion, SamplingConfig  # noqa: E402
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
        knobs = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0) if sample else {}
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
    """Wraps a TextGenerator and adds up the seconds spent in ``generate`` and the tokens it returned."""

    def __init__(self, inner):
        self.inner = inner
        self.engine_name, self.engine_version = inner.engine_name, inner.engine_version
        self.seconds = 0.0
        self.tokens = 0
        self.calls = 0

    def generate(self, prompts, sampling, stop_token_ids, seeds):
        started = time.monotonic()
        out = self.inner.generate(prompts, sampling, stop_token_ids, seeds)
        self.seconds += time.monotonic() - started
        self.tokens += sum(len(c.token_ids) for c in out)
        self.calls += 1
        return out


def magpie_config(args: argparse.Namespace):
    from assets.generation.magpie import MagpieConfig

    return MagpieConfig(
        num_conversations=args.conversations,
        num_turns=args.turns,
        instruction=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=args.instruction_max_tokens),
        response=SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=args.max_tokens),
        seed=args.seed,
    )


def run_backend(name: str, make_generator, tokenizer, config, model) -> dict:
    """Start a backend, run the Magpie workload through it, shut it down; return its figures."""
    from assets.generation.magpie import generate_conversations

    print(f"[{name}] starting ...", flush=True)
    generator = make_generator()
    print(f"[{name}] {generator.engine_name}=={generator.engine_version} up in {generator.startup_seconds:.1f}s",
          flush=True)
    timed = Timed(generator)
    try:
        table, stats = generate_conversations(timed, tokenizer, config, model.name, model.content_hash,
                                              log=lambda msg: print(f"[{name}] {msg}", flush=True))
    finally:
        generator.close()
        del generator
        gc.collect()
    figures = {
        "backend": name,
        "engine": f"{timed.engine_name}=={timed.engine_version}",
        "startup_s": timed.inner.startup_seconds,
        "kept": stats.kept,
        "attempted": stats.attempted,
        "dropped": dict(stats.dropped),
        "instruction_tokens": stats.instruction_tokens,
        "response_tokens": stats.response_tokens,
        "tokens": stats.tokens_generated,
        "seconds": stats.seconds,
        "tok_s": stats.tokens_generated / stats.seconds if stats.seconds else float("nan"),
        "engine_seconds": timed.seconds,
        "engine_tok_s": timed.tokens / timed.seconds if timed.seconds else float("nan"),
        "stop_fraction": _stop_fraction(table),
    }
    print(f"[{name}] {figures['tokens']} tokens in {figures['seconds']:.1f}s = {figures['tok_s']:.1f} tok/s "
          f"(inside generate: {figures['engine_seconds']:.1f}s); kept {stats.kept}/{stats.attempted}, "
          f"dropped {figures['dropped']}", flush=True)
    return figures


def _stop_fraction(table) -> float:
    reasons = [r for row in table["finish_reasons"].to_list() for r in row]
    return sum(r == "stop" for r in reasons) / len(reasons) if reasons else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=256, help="Magpie conversations (default 256)")
    parser.add_argument("--turns", type=int, default=1, help="turns per conversation (default 1)")
    parser.add_argument("--instruction-max-tokens", type=int, default=128, help="instruction max_tokens (128)")
    parser.add_argument("--max-tokens", type=int, default=256, help="response max_tokens (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="transformers backend batch size (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="Magpie run seed (default 0)")
    add_model_arguments(parser)
    parser.add_argument("--backends", default="vllm,hf", help="comma-separated, in run order (default vllm,hf)")
    parser.add_argument("--max-model-len", type=int, default=4096, help="vLLM max_model_len (default 4096)")
    parser.add_argument("--kv-cache-gb", type=int, default=4, help="vLLM CPU KV cache GB, if "
                        "VLLM_CPU_KVCACHE_SPACE is unset (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the transformers backend "
                        "(default: torch's own, all cores; on a machine busy with other work, fewer threads than "
                        "cores avoids OpenMP oversubscription collapse)")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"vllm", "hf"}
    if unknown:
        parser.error(f"--backends: unknown {sorted(unknown)}; choose from vllm, hf")

    from transformers import AutoTokenizer

    from assets.common.engine import EngineConfig, VLLMGenerator

    model = resolve_model(args)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    config = magpie_config(args)
    print(f"model {model.name} at {model.path}; {config.num_conversations} conversations x {config.num_turns} "
          f"turn(s); instruction {config.instruction.to_dict()}; response {config.response.to_dict()}; "
          f"seed {config.seed}; {len(os.sched_getaffinity(0))} cores; load average {load_average()}", flush=True)

    engine_config = EngineConfig(max_model_len=args.max_model_len, cpu_kv_cache_gb=args.kv_cache_gb)
    makers = {
        "vllm": lambda: VLLMGenerator(str(model.path), engine_config, seed=config.seed),
        "hf": lambda: HFGenerator(model.path, batch_size=args.batch_size, threads=args.threads,
                                  log=lambda msg: print(f"[hf] {msg}", flush=True)),
    }
    results = {name: run_backend(name, makers[name], tokenizer, config, model) for name in backends}

    print()
    header = (f"{'backend':<8} {'engine':<28} {'start-up s':>10} {'kept':>9} {'tokens':>8} {'seconds':>8} "
              f"{'tok/s':>8} {'gen tok/s':>9} {'stop %':>6}")
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(f"{r['backend']:<8} {r['engine']:<28} {r['startup_s']:>10.1f} {r['kept']:>4}/{r['attempted']:<4} "
              f"{r['tokens']:>8} {r['seconds']:>8.1f} {r['tok_s']:>8.1f} {r['engine_tok_s']:>9.1f} "
              f"{100 * r['stop_fraction']:>6.1f}")
    print("(tok/s: generated tokens per second of generate_conversations, start-up excluded; gen tok/s: per second "
          "inside the backend's generate; stop %: turns that ended on a stop token rather than max_tokens)")
    vllm_rate = results["vllm"]["tok_s"] if "vllm" in results else float("nan")
    hf_rate = results["hf"]["tok_s"] if "hf" in results else float("nan")
    ratio = vllm_rate / hf_rate if hf_rate else float("nan")
    print(f"vLLM / transformers: {ratio:.2f}x; load average now {load_average()} "
          "(other work on the machine skews rates)")
    print(f"ratio={ratio:.2f} vllm_tok_s={vllm_rate:.1f} hf_tok_s={hf_rate:.1f}")


if __name__ == "__main__":
    main()
