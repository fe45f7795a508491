"""LoRA SFT throughput with and without packing (run by hand, not in CI).

    .venv/bin/python benchmarks/training.py                        # 64 conversations, 10 steps per mode
    .venv/bin/python benchmarks/training.py --max-steps 20 --conversations 128
    .venv/bin/python benchmarks/training.py --model /path/to/hf-model-dir

The same deterministic synthetic conversations (drawn from a fixed word list with a seeded RNG; 1 or 2 turns, user
and assistant lengths log-uniform, so the lengths vary widely as real SFT data does) are tokenized once with the
project's own code (``training.dataset.tokenize_rows``: the model's chat template, assistant-only masks) and trained
on with TRL's SFTTrainer + LoRA exactly as ``training.trainer.train`` configures it (``sft_config``), twice:

* padded: ``TrainConfig(packing=False)``; each batch of ``--batch-size`` conversations is padded to its longest;
* packed: ``TrainConfig(packing=True)``: TRL best-fit-decreasing packing into sequences of ``--max-length``
  tokens, padding-free (a batch is one row; position ids restart at each conversation, no attention across them).

Measured per mode, on a fresh base model each time (fp32 on CPU, LoRA r=16 on all linear layers):

* non-pad tokens/s: the trainer's own ``num_tokens`` count (attention-mask sum, or the padding-free row length)
  over ``train_runtime`` (the ``--max-steps`` optimisation steps; model loading and dataset preparation are not
  included); also over steps 2.. only, which leaves out the first step's warm-up;
* padding waste: the fraction of pad tokens in one epoch of the trainer's real collated batches, counted by the
  pre-flight checks (``training.preflight.check_batches``, which also validate the masks of every example).

Checkpoint saving is switched off (it would be timed otherwise); all output goes to a temporary directory.
The last line is ``packed_tok_s=<a> padded_tok_s=<b> packed_waste=<w1> padded_waste=<w2>``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import add_model_arguments, load_average, resolve_model  # noqa: E402

WORDS = (
    "the a an and or but if then when while because so of to in on at by for with from about into over after "
    "before between under again model data train test value number list table file line word text answer question "
    "example result function method class system process memory time space order error state network language "
    "python code simple small large fast slow good better best first second last next each every other same "
    "different important common useful clear short long high low new old early late easy hard true false open "
    "close read write find make take give show explain describe compare choose build run check change keep start "
    "stop use need want know think see look work help try learn teach ask tell call move turn put set get go "
    "come seem feel leave bring begin hold provide include continue follow create allow add grow offer "
    "remember consider appear buy wait serve send expect stay fall cut reach remain suggest raise pass report "
    "decide pull city country water food music history science energy market health family student teacher "
    "computer garden river mountain ocean planet story idea reason problem solution step part group case point"
).split()


def _sentence(rng: random.Random, n: int, end: str) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + end


def _text(rng: random.Random, n_words: int, end: str) -> str:
    sentences, left = [], n_words
    while left > 0:
        n = min(left, rng.randint(6, 16))
        sentences.append(_sentence(rng, n, end))
        left -= n
    return " ".join(sentences)


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def make_conversations(n: int, seed: int) -> list[list[dict]]:
    """``n`` deterministic conversations: 1 turn (75%) or 2; user 4-48 words, assistant 6-260 words (log-uniform)."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(n):
        messages = []
        for _turn in range(1 if rng.random() < 0.75 else 2):
            messages.append({"role": "user", "content": _text(rng, _log_uniform(rng, 4, 48), "?")})
            messages.append({"role": "assistant", "content": _text(rng, _log_uniform(rng, 6, 260), ".")})
        conversations.append(messages)
    return conversations


def run_mode(packing: bool, model_path: Path, tokenizer, template: str, dataset, args: argparse.Namespace,
             work_dir: Path) -> dict:
    """Train ``--max-steps`` LoRA steps in one mode; return throughput and padding figures."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import SaveStrategy
    from trl import SFTTrainer

    from training.config import TrainConfig
    from training.preflight import check_batches, template_markers
    from training.trainer import sft_config

    name = "packed" if packing else "padded"
    config = TrainConfig(
        packing=packing,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        logging_steps=1,  # num_tokens after every step
        seed=args.seed,
        precision="fp32",
    )
    torch.manual_seed(config.seed)
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    modules = config.lora_target_modules
    peft_config = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=modules[0] if modules == ("all-linear",) else list(modules), task_type="CAUSAL_LM",
    )
    sft_args = sft_config(config, work_dir / name, has_eval=False)
    sft_args.save_strategy = SaveStrategy.NO  # checkpoints would be timed with the steps

    step_seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            step_seconds.append(time.monotonic() - self.t0)

    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[StepTimer()])
    trainer.remove_callback(PrinterCallback)
    setup_seconds = time.monotonic() - started

    # padding waste (and the pre-flight mask checks) over one epoch of the real collated batches
    batches = list(trainer.get_train_dataloader())
    report = check_batches(batches, template_markers(tokenizer, template), tokenizer)
    widths = [int(b["input_ids"].shape[1]) for b in batches]
    rows = [int(b["input_ids"].shape[0]) for b in batches]
    packed_sequences = len(trainer.train_dataset) if packing else None

    output = trainer.train()
    metrics = dict(output.metrics)
    tokens_by_step = [(e["step"], e["num_tokens"]) for e in trainer.state.log_history if "num_tokens" in e]
    tokens = int(tokens_by_step[-1][1]) if tokens_by_step else 0
    first_step_tokens = int(tokens_by_step[0][1]) if tokens_by_step and tokens_by_step[0][0] == 1 else None
    runtime = float(metrics["train_runtime"])
    steady = float("nan")
    if first_step_tokens is not None and len(step_seconds) > 1:
        steady = (tokens - first_step_tokens) / sum(step_seconds[1:])
    result = {
        "mode": name,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens": tokens,
        "runtime_s": runtime,
        "tok_s": tokens / runtime if runtime else float("nan"),
        "steady_tok_s": steady,
        "first_step_s": step_seconds[0] if step_seconds else float("nan"),
        "setup_s": setup_seconds,
        "waste": report.padding_fraction,
        "epoch_tokens": report.tokens,
        "epoch_pad_tokens": report.padding_tokens,
        "epoch_examples": report.examples,
        "batches_per_epoch": len(batches),
        "mean_batch_positions": statistics.mean(w * r for w, r in zip(widths, rows, strict=True)),
        "packed_sequences": packed_sequences,
        "train_loss": metrics.get("train_loss"),
    }
    print(f"[{name}] {result['steps']} steps ({result['epochs']:.2f} epochs), {tokens} non-pad tokens in "
          f"{runtime:.1f}s = {result['tok_s']:.1f} tok/s (steps 2..: {steady:.1f} tok/s; first step "
          f"{result['first_step_s']:.1f}s); padding waste {report.padding_fraction:.2%} over one epoch "
          f"({report.padding_tokens} pad of {report.padding_tokens + report.tokens} positions, "
          f"{len(batches)} batches); loss {result['train_loss']}", flush=True)
    del trainer, model
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=64, help="synthetic conversations (default 64)")
    parser.add_argument("--max-steps", type=int, default=10, help="optimisation steps per mode (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="per-device train batch size (default 8); "
                        "with packing, packed sequences per batch")
    parser.add_argument("--max-length", type=int, default=1024, help="max tokens per example, and the packed "
                        "sequence length (default 1024; the pipeline's default is 2048)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    parser.add_argument("--modes", default="padded,packed", help="comma-separated, in run order "
                        "(default padded,packed)")
    add_model_arguments(parser)
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"padded", "packed"}:
        parser.error(f"--modes: unknown {sorted(set(modes) - {'padded', 'packed'})}; choose from padded, packed")

    import transformers
    from transformers import AutoTokenizer

    from assets.common.chat_template import read_chat_template
    from training.dataset import conversation_rows, tokenize_rows
    from training.preflight import check_template_identity

    transformers.logging.set_verbosity_error()
    model = resolve_model(args)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    template = read_chat_template(model.path)
    check_template_identity(tokenizer.chat_template or "", template, f"{model.path} (tokenizer as loaded)")
    conversations = make_conversations(args.conversations, args.seed)
    tokenized = tokenize_rows(tokenizer, conversation_rows(conversations), template, args.max_length)
    dataset, dropped = tokenized.train.select_columns(["input_ids", "assistant_masks"]), tokenized.dropped()
    lengths = sorted(len(ids) for ids in dataset["input_ids"])
    if not lengths:
        sys.exit(f"all {dropped} conversations are longer than --max-length {args.max_length}")
    print(f"model {model.name} at {model.path}; {len(dataset)} conversations tokenized ({dropped} dropped, longer "
          f"than {args.max_length}); tokens per conversation min {lengths[0]} median {statistics.median(lengths):.0f} "
          f"max {lengths[-1]}, total {sum(lengths)}; batch {args.batch_size}, {args.max_steps} steps per mode; "
          f"load average {load_average()}",
          flush=True)

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        for mode in modes:
            results[mode] = run_mode(mode == "packed", model.path, tokenizer, template, dataset, args, Path(tmp))

    print()
    header = (f"{'mode':<7} {'steps':>5} {'epochs':>6} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'tok/s 2..':>9} "
              f"{'waste':>7} {'batches/ep':>10} {'positions/batch':>15} {'loss':>7}")
    print(header)
    print("-" * len(header))
    for r in results.values():
        loss = f"{r['train_loss']:.3f}" if r["train_loss"] is not None else "-"
        print(f"{r['mode']:<7} {r['steps']:>5} {r['epochs']:>6.2f} {r['tokens']:>7} {r['runtime_s']:>8.1f} "
              f"{r['tok_s']:>7.1f} {r['steady_tok_s']:>9.1f} {r['waste']:>7.2%} {r['batches_per_epoch']:>10} "
              f"{r['mean_batch_positions']:>15.0f} {loss:>7}")
    print("(tokens: non-pad tokens trained, trainer's num_tokens; tok/s 2..: steps after the first; waste: pad "
          "fraction of one epoch of collated batches; positions/batch: rows x width, pad included)")
    if "packed" in results:
        print(f"packed: {results['packed']['packed_sequences']} sequences of <= {args.max_length} tokens from "
              f"{len(dataset)} conversations")
    if len(results) == 2:
        speedup = results["packed"]["tok_s"] / results["padded"]["tok_s"]
        print(f"packed / padded non-pad tokens/s: {speedup:.2f}x")
    print(f"load average now {load_average()} (other work on the machine skews rates)")
    nan = float("nan")
    packed, padded = results.get("packed", {}), results.get("padded", {})
    print(f"packed_tok_s={packed.get('tok_s', nan):.1f} padded_tok_s={padded.get('tok_s', nan):.1f} "
          f"packed_waste={packed.get('waste', nan):.4f} padded_waste={padded.get('waste', nan):.4f}")


if __name__ == "__main__":
    main()
