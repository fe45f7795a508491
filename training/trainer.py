"""The training loop: TRL's SFTTrainer with PEFT LoRA (or full fine-tuning), no Dagster here.

``train`` takes a run's rows (conversation_id, split, messages: see :mod:`training.dataset`), tokenizes them with the
start model's own chat template, runs the pre-flight checks on the real collated batches, trains with validation and
early stopping (schedule: :meth:`training.config.TrainConfig.eval_interval`), resuming a killed run from its last
checkpoint (:mod:`training.checkpoints`), and writes the model directory (:mod:`training.model_dir`).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.models.chat_template import read_chat_template
from assets.common.models.token_cache import TokenizedRowsCache
from training.checkpoints import checkpoint_dir, last_checkpoint, run_fingerprint, step_of
from training.config import TrainConfig
from training.dataset import TRAINED, TokenizedRows, tokenize_rows
from training.distributed import batch_settings, process_state
from training.memory import DeviceMemory, MemoryPlan, ModelShape, plan_memory
from training.model_dir import TrainedModel, TrainResult, model_dir_result, write_model_dir
from training.preflight import PreflightError, check_batches, check_template_identity, template_markers

__all__ = ["TrainResult", "build_trainer", "sft_config", "train"]


def train(
    model_path: str | Path,
    rows: pl.DataFrame,
    output_dir: str | Path,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen dataclass)
    lineage: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    token_cache: str | Path | None = None,
) -> TrainResult:
    """Fine-tune ``model_path`` on ``rows`` (split train/rehearsal: trained; validation: validated); write the model
    directory at ``output_dir`` (or, when ``output_dir`` holds another model, beside it: the result says where).

    ``model_path`` is the model training starts from: the base model, or in continual mode the previous fine-tune
    (then ``lineage["base_model"]`` names the base model). Every row is listed in the directory's
    ``train_rows.parquet`` with what became of it (trained, validated or dropped). ``token_cache``: see _tokenize."""
    import torch
    from transformers import AutoTokenizer

    started = time.monotonic()
    model_path, output_dir, lineage = Path(model_path), Path(output_dir), lineage or {}
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = read_chat_template(model_path)
    check_template_identity(tokenizer.chat_template or "", template, f"{model_path} (tokenizer as loaded)")
    data = _tokenize(tokenizer, rows, template, config, log, model_path, token_cache)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoint_dir(output_dir)
    # before the Trainer exists (it creates the directory): resume only a checkpoint of this same run
    fingerprint = run_fingerprint(model_path, config, lineage.get("base_model", {}).get("content_hash"), data.train,
                                  data.validation)
    with process_state().main_process_first():  # the main process prepares (or discards) the checkpoints first
        resume = last_checkpoint(checkpoints, fingerprint, log)
    trainer = build_trainer(model_path, tokenizer, data, config, checkpoints, log)
    preflight, schedule = _prepare(trainer, tokenizer, template, config, has_eval=len(data.validation) > 0, log=log)
    if resume:
        log(f"resuming from {resume}")
    train_output = trainer.train(resume_from_checkpoint=resume)
    early_stopping = early_stopping_outcome(trainer, config, schedule)  # before evaluate(): it counts too
    metrics = _metrics(trainer, train_output.metrics, resume, has_eval=len(data.validation) > 0)
    metrics["train_seconds"] = round(time.monotonic() - started, 1)
    metrics["memory_plan"] = trainer.memory_plan  # gradient checkpointing: estimate, budget, decision
    metrics["peak_rss_gb"] = peak_rss_gb()
    metrics.update(batch_settings(config.per_device_train_batch_size, config.gradient_accumulation_steps))
    if early_stopping["fired"]:
        log(f"early stopping fired at step {early_stopping['stopped_at_step']} of {early_stopping['max_steps']}")
    trained = TrainedModel(model=trainer.model, tokenizer=tokenizer, chat_template=template, start_path=model_path,
                           config=config, data=data, metrics=metrics, preflight=preflight,
                           early_stopping=early_stopping, log_history=trainer.state.log_history,
                           marker_init=trainer.marker_report)
    state = process_state()
    written = None
    if state.is_main_process:  # one writer (rank 0); the other processes of a multi-process run wait for it
        written = write_model_dir(trained, output_dir, lineage)
        shutil.rmtree(checkpoints, ignore_errors=True)
        log(f"model directory written by process {state.process_index} of {state.num_processes}: "
            f"{written.model_dir}" + ("" if written.model_dir == output_dir else f" (not {output_dir}: see "
                                      "training.model_dir)"))
    state.wait_for_everyone()
    return written or model_dir_result(trained, output_dir)  # (the other processes: the requested name)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)  # KiB on Linux


def _tokenize(tokenizer: Any, rows: pl.DataFrame, template: str, config: TrainConfig, log: Callable[[str], None],
              model_path: Path, token_cache: str | Path | None = None) -> TokenizedRows:
    """``rows`` tokenized; with ``token_cache`` (a folder of rows tokenized before,
    :class:`~assets.common.models.token_cache.TokenizedRowsCache`), the rows found there under ``model_path``'s
    tokenizer identity are read, not tokenized again: everything trained is the same with or without it."""
    cache = TokenizedRowsCache(model_path, token_cache) if token_cache is not None else None
    data = tokenize_rows(tokenizer, rows, template, config.max_length, cache=cache)
    if cache is not None:
        log(f"token cache {cache.folder}: {data.rows_from_cache} of {rows.height} rows read, the others tokenized"
            + (f"; parts skipped: {cache.skipped}" if cache.skipped else ""))
    if len(data.train) == 0:
        raise PreflightError(f"no training examples left ({data.dropped()} rows longer than max_length="
                             f"{config.max_length} were dropped): nothing to train on; raise max_length")
    log(f"tokenized {len(data.train)} train / {len(data.validation)} validation conversations "
        f"(dropped {data.dropped()} longer than {config.max_length} tokens)")
    return data


def _precision(config: TrainConfig) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    return {"bf16": bf16, "use_cpu": not cuda}


def sft_config(config: TrainConfig, output_dir: Path, has_eval: bool, gradient_checkpointing: bool):
    """TRL's SFTConfig for ``config``. Evaluation and checkpoints are step-based; with ``eval_steps`` unset, the
    interval here is a placeholder that :func:`_prepare` replaces once the number of steps is known. Gradient
    checkpointing is set explicitly (TRL turns it on by default): :func:`memory_plan` decides."""
    from trl import SFTConfig

    interval = config.eval_steps or 1
    batch = batch_settings(config.per_device_train_batch_size, config.gradient_accumulation_steps)
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
        # the config's batch is the global batch: with N processes, each takes 1/N of it (training.distributed)
        per_device_train_batch_size=batch["per_process_batch"],
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=batch["gradient_accumulation_steps"],
        # rows longer than max_length were dropped (and listed) already: unpacked, TRL truncates nothing and so drops
        # no row itself; packing needs the length of its rows
        max_length=config.max_length if config.packing else None,
        packing=config.packing,
        padding_free=config.packing or config.padding_free,
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
        gradient_checkpointing=gradient_checkpointing,
        **_precision(config),
        **eval_kwargs,
        **config.extra,
    )


def _peft_config(config: TrainConfig, model: Any = None, marker_rows: list[int] | None = None):
    """LoRA on every linear layer by default, plus the chat-marker rows to train (if any)."""
    if config.method != "lora":
        return None
    from peft import LoraConfig

    from training.markers import trainable_token_config

    modules = config.lora_target_modules
    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=modules[0] if modules == ("all-linear",) else list(modules), task_type="CAUSAL_LM",
        **(trainable_token_config(model, marker_rows) if marker_rows else {}),
    )


def build_trainer(model_path: Path, tokenizer: Any, data: TokenizedRows, config: TrainConfig, checkpoints: Path,
                  log: Callable[[str], None], callbacks: Sequence[Any] = (), memory: DeviceMemory | None = None):
    """The project's trainer (:func:`_trainer_class`) for ``config`` on ``data``, checkpointing under ``checkpoints``:
    gradient checkpointing as :func:`memory_plan` decides, the lean loss unless ``config.token_metrics``. The plan
    is ``trainer.memory_plan``; ``callbacks`` are added to the project's own; ``memory``: the training device's
    (default: read from the device, :func:`training.memory.device_memory`)."""
    import torch
    from transformers import AutoModelForCausalLM, EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    has_eval = len(data.validation) > 0
    dtype = torch.bfloat16 if _precision(config)["bf16"] else torch.float32
    plan = memory_plan(model_path, data, config, memory)
    log(f"gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}: {plan.reason} "
        f"(with it: {plan.estimate_checkpointed_gb} GB)")
    callbacks = [_log_progress(log), *callbacks]
    if has_eval and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    marker_rows, marker_report = _initialise_markers(model, tokenizer, model_path, config, log)
    trainer = _trainer_class()(
        model=model,
        args=sft_config(config, checkpoints, has_eval=has_eval, gradient_checkpointing=plan.gradient_checkpointing),
        train_dataset=data.train,
        eval_dataset=data.validation if has_eval else None,
        processing_class=tokenizer,
        peft_config=_peft_config(config, model, marker_rows),
        callbacks=callbacks,
    )
    trainer.marker_learning_rate = config.marker_learning_rate if marker_rows else None
    trainer.marker_report = marker_report
    trainer.memory_plan = {**plan.to_dict(), "lean_loss": trainer.use_lean_loss(not config.token_metrics)}
    trainer.remove_callback(PrinterCallback)  # progress goes through `log` instead
    return trainer


def memory_plan(model_path: Path, data: TokenizedRows, config: TrainConfig,
                memory: DeviceMemory | None = None) -> MemoryPlan:
    """Whether this run needs gradient checkpointing (:mod:`training.memory`): from the model's config, this
    process's batch (its share of the global batch, :mod:`training.distributed`) and the most tokens one of its steps
    can hold (:func:`tokens_per_batch`), against the memory of the device this process trains on."""
    from assets.common.models.templates import read_chat_markers
    from training.loss import VOCABULARY_CHUNK

    lengths = data.rows.filter(pl.col("status") == TRAINED)["num_tokens"]
    markers = read_chat_markers(model_path)
    batch = batch_settings(config.per_device_train_batch_size, config.gradient_accumulation_steps)["per_process_batch"]
    return plan_memory(ModelShape.from_model_dir(model_path), tokens_per_batch(lengths, batch, config),
                       lora=config.method == "lora", setting=config.gradient_checkpointing,
                       budget_gb=config.memory_budget_gb, memory=memory,
                       bytes_per_value=2 if _precision(config)["bf16"] else 4,
                       vocabulary_chunk=32768 if config.token_metrics else VOCABULARY_CHUNK,
                       trained_embedding_rows=bool(markers and markers.rows_to_initialise and config.method == "lora"))


def tokens_per_batch(lengths: pl.Series, batch: int, config: TrainConfig) -> int:
    """The most tokens one step's forward pass can hold: packing fills rows of ``max_length``; padding-free batches
    lay their rows end to end, so the ``batch`` longest rows together bound any step; padded batches are as long as
    their longest row, ``batch`` times over."""
    if config.packing:
        return batch * config.max_length
    if config.padding_free:
        return int(lengths.sort(descending=True).head(batch).sum() or 0)
    return batch * int(lengths.max() or 0)


def _initialise_markers(model: Any, tokenizer: Any, model_path: Path, config: TrainConfig,
                        log: Callable[[str], None]) -> tuple[list[int], dict[str, Any] | None]:
    """A prepared student's never-trained chat-marker rows (its chat_markers.json) get a deliberate start
    (:mod:`training.markers`); returns their ids (trained besides LoRA) and the report for the lineage."""
    from assets.common.models.templates import read_chat_markers
    from training.markers import initialise_marker_rows

    record = read_chat_markers(model_path)
    rows = record.rows_to_initialise if record is not None else []
    if not rows or config.marker_init == "none":
        return (rows if config.method == "lora" else []), None
    report = initialise_marker_rows(model, tokenizer, rows, end_of_turn_id=record.end_of_turn_id,
                                    text_end_id=record.text_end_id, method=config.marker_init).to_dict()
    log(f"chat-marker rows initialised ({config.marker_init}): " + ", ".join(
        f"{r['token']} <- {r['source']}" for r in report["rows"]))
    return (rows if config.method == "lora" else []), report


def _trainer_class():
    from trl import SFTTrainer

    class MarkerTrainer(SFTTrainer):
        """SFTTrainer whose trained marker rows may have their own learning rate (no weight decay), and whose loss
        skips TRL's per-token metrics unless asked (:mod:`training.loss`)."""

        marker_learning_rate: float | None = None
        marker_report: dict[str, Any] | None = None
        memory_plan: dict[str, Any] | None = None
        lean_loss: bool = False

        def create_optimizer(self, model=None):
            if self.optimizer is None and self.marker_learning_rate:
                import torch

                from training.markers import marker_parameter_groups

                groups = marker_parameter_groups(self.model, self.args.learning_rate, self.marker_learning_rate,
                                                 self.args.weight_decay)
                self.optimizer = torch.optim.AdamW(groups, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                                   eps=self.args.adam_epsilon)
            return super().create_optimizer(model) if model is not None else super().create_optimizer()

        def use_lean_loss(self, wanted: bool) -> bool:
            """Switch to the lean loss when ``wanted`` and it computes TRL's loss here (a plain NLL, no loss
            function, label smoothing or MoE loss of TRL's to honour); returns whether it is on."""
            from training.loss import add_lean_lm_head, supports_lean_head

            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            self.lean_loss = (wanted and self.compute_loss_func is None and self.label_smoother is None
                              and self.args.loss_type == "nll" and not self.aux_loss_enabled
                              and supports_lean_head(base))
            if self.lean_loss:
                add_lean_lm_head(base)
            return self.lean_loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from training.markers import effective_output_head

            with effective_output_head(model):  # the fused loss must see the trained marker rows of the head
                if self.lean_loss and not return_outputs:
                    return self._lean_loss(model, inputs, num_items_in_batch)
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

        def _lean_loss(self, model, inputs, num_items_in_batch):
            from training.loss import lean_trainer_loss

            return lean_trainer_loss(self, model, inputs, num_items_in_batch)

    return MarkerTrainer


def _log_progress(log: Callable[[str], None]):
    from transformers import TrainerCallback

    class LogProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()}
                log(f"step {state.global_step}/{state.max_steps}: {shown}")

    return LogProgress()


def _prepare(trainer, tokenizer: Any, template: str, config: TrainConfig, has_eval: bool,
             log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pre-flight checks on the real batches, then the evaluation schedule; returns (pre-flight report, schedule)."""
    markers = template_markers(tokenizer, template)
    train_loader = trainer.get_train_dataloader()
    report = check_batches(train_loader, markers, tokenizer)
    if has_eval:
        check_batches(trainer.get_eval_dataloader(), markers, tokenizer)
    log(f"pre-flight passed: {report.to_dict()}")
    schedule = evaluation_schedule(trainer, config, train_loader, has_eval)
    every = f"every {schedule['eval_steps']} of {schedule['max_steps']} steps"
    log(f"evaluating and checkpointing {every} ({schedule['evaluations']} evaluations)" if has_eval
        else f"no validation rows: checkpointing {every}")
    return report.to_dict(), schedule


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


def _metrics(trainer, train_metrics: dict[str, Any], resume: str | None, has_eval: bool) -> dict[str, Any]:
    metrics = dict(train_metrics)
    metrics["resumed_from_step"] = step_of(resume)  # train_loss/runtime then cover the resumed steps only
    if has_eval:
        metrics.update(trainer.evaluate())  # the best checkpoint's (loaded at the end)
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    metrics["best_step"] = step_of(trainer.state.best_model_checkpoint)
    metrics["best_eval_loss"] = trainer.state.best_metric
    metrics["global_step"] = trainer.state.global_step
    metrics["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return metrics
