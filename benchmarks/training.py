"""The project's trainer against the barest LoRA SFT loop, on the same batches, in one run (run by hand, not in CI).

    .venv/bin/python benchmarks/training.py                       # SmolLM2-135M: bare loop vs training/, 3 steps
    .venv/bin/python benchmarks/training.py --rounds 2            # alternate the two sides twice, medians
    .venv/bin/python benchmarks/training.py --model gemma         # demo student, batch 8, max_length 512: peak RSS
    .venv/bin/python benchmarks/training.py --set gradient_checkpointing=on --set token_metrics=true
    .venv/bin/python benchmarks/training.py --sides trainer --profile   # where a trainer step's time goes

Two sides, each in a fresh process (so each one's peak RSS is its own):

* bare: ``bare_step_seconds`` of ``bare_lora_loop.py`` (``--reference``; the shared reference, used unchanged): PEFT
  LoRA r16 on all linear layers, sdpa, fp32, full logits + masked cross-entropy, AdamW;
* trainer: the project's trainer as ``training.trainer.train`` builds it (``build_trainer``: TRL ``SFTTrainer``
  subclass, LoRA r16, its gradient-checkpointing decision and loss) on the same conversations, tokenized by
  ``training.dataset.tokenize_rows``, read in order (sequential sampler) so step k trains on the same
  ``--batch-size`` conversations as the bare loop's step k; checkpoint saving off (it would be timed).

Both time ``--steps`` optimizer steps after one warm-up step (the reference's rule): seconds per step is their mean.
Conversations are the reference's ``make_conversations`` (single-turn, 20-60 word instructions, 120-260 word
answers). With ``--model gemma`` (the demo's student, gemma-3-270m with a 262k vocabulary, prepared as the
``base_model`` asset does) only the trainer runs (the bare loop's full fp32 logits need ~21 GB there), on pairs of
the reference conversations joined into two-turn ones so that batches come close to ``--max-length`` (512, the
demo's) and the peak RSS is the demo's worst case.

The last line: ``step_ratio_vs_bare=<trainer s/step / bare s/step> trainer_s_per_step=... bare_s_per_step=...
peak_rss_gb=<trainer's> bare_peak_rss_gb=... gradient_checkpointing=... tokens_per_step=...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import load_average  # noqa: E402

REFERENCE_NAME = Path("shared") / "reference" / "bare_lora_loop.py"


def default_reference() -> Path:
    """``../shared/reference/bare_lora_loop.py`` from the main checkout (two levels up from a worktree)."""
    candidates = [REPO.parent / REFERENCE_NAME, REPO.parents[1] / REFERENCE_NAME]
    return next((c for c in candidates if c.exists()), candidates[0])


def load_reference(path: Path):
    spec = importlib.util.spec_from_file_location("bare_lora_loop", path)
    if spec is None or spec.loader is None or not path.exists():
        sys.exit(f"{path}: no bare_lora_loop.py there; pass --reference")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)


def bare_side(reference: str, model_path: str, conversations: list, batch_size: int, steps: int, seed: int) -> dict:
    module = load_reference(Path(reference))
    out = module.bare_step_seconds(model_path, conversations, batch_size=batch_size, steps=steps, seed=seed)
    return {**out, "peak_rss_gb": peak_rss_gb()}


def _overrides(pairs: list[str]) -> dict:
    import json

    values = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def trainer_side(model_path: str, conversations: list, args: dict) -> dict:
    """Train ``steps + 1`` steps with the project's trainer; seconds per step after the first."""
    import transformers
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_utils import SaveStrategy

    from assets.common.models.chat_template import read_chat_template
    from training.config import TrainConfig
    from training.dataset import conversation_rows, tokenize_rows
    from training.trainer import build_trainer

    transformers.logging.set_verbosity_error()
    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds.append(time.perf_counter() - self.t0)

    config = TrainConfig.from_dict({
        "max_steps": args["steps"] + 1, "per_device_train_batch_size": args["batch_size"],
        "max_length": args["max_length"], "logging_steps": args["steps"] + 1, "seed": args["seed"],
        "early_stopping_patience": 0, "extra": {"train_sampling_strategy": "sequential"}, **args["set"],
    })
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = tokenize_rows(tokenizer, conversation_rows(conversations), read_chat_template(model_path), config.max_length)
    lengths = [len(ids) for ids in data.train["input_ids"]]
    batch = config.per_device_train_batch_size
    batches = [lengths[i:i + batch] for i in range(0, len(lengths), batch)][1:args["steps"] + 1]
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        trainer = build_trainer(Path(model_path), tokenizer, data, config, Path(tmp) / "checkpoints",
                                log=lambda msg: print(f"[trainer] {msg}", flush=True), callbacks=[StepTimer()])
        trainer.args.save_strategy = SaveStrategy.NO
        if args["profile"]:
            output = _profiled(trainer)
        else:
            output = trainer.train()
    return {
        "seconds_per_step": statistics.mean(seconds[1:]),
        "step_seconds": seconds,
        "tokens_per_step": statistics.mean(sum(b) for b in batches),
        "max_width": max(max(b) for b in batches),
        "dropped": data.dropped(),
        "final_loss": output.metrics.get("train_loss"),
        "memory_plan": trainer.memory_plan,
        "peak_rss_gb": peak_rss_gb(),
    }


def _profiled(trainer):
    """Train under the torch profiler; print the operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        output = trainer.train()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), flush=True)
    return output


def run_in_process(function, *arguments):
    """``function(*arguments)`` in a fresh spawned process (its own peak RSS); its return value."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, arguments)


def resolve(args: argparse.Namespace) -> tuple[str, str]:
    """(name, path) of the model to train."""
    from assets.common.models.directories import prepare_embedded_smollm2, prepare_local

    if args.model == "smollm2":
        model = prepare_embedded_smollm2(args.model_root)
        return model.name, str(model.path)
    if args.model == "gemma":
        from assets.base_model.core import prepare_student, template_choice
        from assets.base_model.gemma import prepare_embedded_gemma

        original = prepare_embedded_gemma(args.model_root)
        student = prepare_student(original, template_choice("gemma", original, embedded=True),
                                  Path(args.model_root).parent / "student")
        return f"{original.name} (student, gemma template)", str(student.model.path)
    model = prepare_local(args.model, require_chat_template=True)
    return model.name, str(model.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2 (default: the embedded SmolLM2-135M-Instruct), "
                        "gemma (the demo's student; trainer side only) or a local Hugging Face model directory")
    parser.add_argument("--model-root", default=str(REPO / "data" / "models" / "embedded"),
                        help="where the embedded GGUFs are converted, or found converted "
                        "(default data/models/embedded)")
    parser.add_argument("--reference", default=str(default_reference()), help="bare_lora_loop.py (default: "
                        "../shared/reference/bare_lora_loop.py of the main checkout)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side, after one warm-up (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per step (default 8, the demo's)")
    parser.add_argument("--max-length", type=int, default=512, help="TrainConfig.max_length (default 512, the demo's)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the sides this many times; medians "
                        "(default 1)")
    parser.add_argument("--sides", default=None, help="comma-separated, in run order (default bare,trainer; with "
                        "--model gemma: trainer)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field for the trainer side, e.g. gradient_checkpointing=on")
    parser.add_argument("--profile", action="store_true", help="run the trainer side under the torch profiler")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sides = [s.strip() for s in (args.sides or ("trainer" if args.model == "gemma" else "bare,trainer")).split(",")]
    if set(sides) - {"bare", "trainer"}:
        parser.error(f"--sides: unknown {sorted(set(sides) - {'bare', 'trainer'})}; choose from bare, trainer")

    reference = load_reference(Path(args.reference))
    name, path = resolve(args)
    # gemma: two-turn conversations (pairs of the reference's), twice as many as the steps need, the ones longer than
    # --max-length dropped by the trainer's tokenization: batches close to max_length
    needed = args.batch_size * (args.steps + 1)
    conversations = reference.make_conversations(needed * 4 if args.model == "gemma" else needed, args.seed)
    if args.model == "gemma":
        conversations = [a + b for a, b in zip(conversations[::2], conversations[1::2], strict=True)]
    print(f"model {name} at {path}; {len(conversations)} conversations, batch {args.batch_size}, {args.steps} timed "
          f"steps after 1 warm-up, sides {sides} x {args.rounds} round(s); trainer config overrides "
          f"{_overrides(args.set)}; load average {load_average()}", flush=True)
    trainer_args = {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                    "seed": args.seed, "set": _overrides(args.set), "profile": args.profile}
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side in sides:
            started = time.monotonic()
            if side == "bare":
                out = run_in_process(bare_side, args.reference, path, conversations, args.batch_size, args.steps,
                                     args.seed)
            else:
                out = run_in_process(trainer_side, path, conversations, trainer_args)
            results[side].append(out)
            print(f"[{side} round {round_ + 1}] {out['seconds_per_step']:.2f} s/step, {out['tokens_per_step']:.0f} "
                  f"non-pad tokens/step, loss {out['final_loss']:.4f}, peak RSS {out['peak_rss_gb']:.2f} GB "
                  f"({time.monotonic() - started:.0f}s with start-up); load average {load_average()}", flush=True)
    report(results, args)


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    nan = float("nan")

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side]) if results.get(side) else nan

    bare, trainer = median("bare", "seconds_per_step"), median("trainer", "seconds_per_step")
    plan = results["trainer"][-1]["memory_plan"] if results.get("trainer") else {}
    if plan:
        print(f"trainer memory plan: {plan}")
        last = results["trainer"][-1]
        print(f"trainer step seconds (first is warm-up): {[round(s, 2) for s in last['step_seconds']]}; widest "
              f"example {last['max_width']} tokens; dropped {last['dropped']}")
    if results.get("bare") and results.get("trainer"):
        ratios = [t["seconds_per_step"] / b["seconds_per_step"]
                  for b, t in zip(results["bare"], results["trainer"], strict=True)]
        print(f"per-round ratios: {[round(r, 3) for r in ratios]}")
    print(f"load average now {load_average()} (other work on the machine skews rates)")
    tokens = median("trainer", "tokens_per_step") if results.get("trainer") else median("bare", "tokens_per_step")
    print(f"step_ratio_vs_bare={trainer / bare:.3f} trainer_s_per_step={trainer:.2f} bare_s_per_step={bare:.2f} "
          f"peak_rss_gb={median('trainer', 'peak_rss_gb'):.2f} bare_peak_rss_gb={median('bare', 'peak_rss_gb'):.2f} "
          f"gradient_checkpointing={plan.get('gradient_checkpointing')} lean_loss={plan.get('lean_loss')} "
          f"tokens_per_step={tokens:.0f}")


if __name__ == "__main__":
    main()
