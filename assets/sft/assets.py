"""`sft_model`: the base model fine-tuned on the mixture (TRL SFTTrainer + PEFT LoRA), with its lineage."""


from typing import Literal

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.models.integrity import model_content_hash, verified_model_dir
from assets.common.models.token_cache import CACHE_FOLDER as TOKEN_CACHE_FOLDER
from assets.common.orchestration.resources import (
    BASE_MODEL,
    CURRENT_MODEL,
    ENGINE_RETRY,
    GPU_POOL,
    MODEL_MANIFEST,
    PROMOTED_MODEL,
    RETRAIN_ON_UPSTREAM_CHANGE,
    SFT_MIXTURE,
    SFT_MODEL,
    DataStorage,
    external_inputs,
    input_error,
    latest_materialization,
    upstream_assets,
)
from assets.sft.checks import MAX_PERPLEXITY_INCREASE, forgetting_verdict, served_format_verdict
from assets.sft.lineage import lineage_summary
from training.config import TrainConfig
from training.continual import ContinualConfig
from training.run import run_training


class SFTModelConfig(dg.Config):
    """Recommended SFT defaults: LoRA r=16, alpha=32, dropout 0.05, LR 2e-4 (1e-5 full), cosine to 10% of peak,
    3% warmup, up to 2 epochs with early stopping on validation loss (patience 2 evaluations)."""

    model_name: str = "sft-model"
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    learning_rate: float | None = None
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.03
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 2048
    packing: bool = False
    """Pack examples into rows of max_length (padding-free, fewer and fuller steps)."""
    padding_free: bool = False
    """The same examples per step as without it, laid end to end in one row with no attention across examples:
    nothing is padded (the pre-flight `padding_fraction` is 0)."""
    eval_steps: int | None = None
    """Steps between validation evaluations (and checkpoints). Unset: min(steps per epoch // 4, total steps //
    (early_stopping_patience + 2)), at least 1, so that early stopping can end the run (see training.config)."""
    early_stopping_patience: int = 2
    """Stop after this many evaluations in a row without a better validation loss (0: off)."""
    seed: int = 0
    marker_init: Literal["text_end", "mean", "none"] = "text_end"
    """Chat-marker rows the student never learned (`chat_markers.json` of the prepared base model, e.g.
    gemma-3-270m's <end_of_turn>): "text_end" starts end-of-turn from the row of the token the base model ends texts
    with (others from the mean), "mean" all from the mean, "none" leaves them. They are trained with LoRA."""
    marker_learning_rate: float | None = None
    """Learning rate of those marker rows; unset: the run's learning rate."""
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    """"auto": only when the run's estimated peak memory without it exceeds the training device's budget (the estimate
    and the decision are in the metadata, `memory_plan`); it costs about a quarter more time per step."""
    token_metrics: bool = False
    """Log TRL's per-token entropy and mean token accuracy (a pass over the whole vocabulary per position)."""
    init_from: Literal["base", "previous"] = "base"
    """Where training starts. "base" (default): the base model, every time. "previous" (continual mode): the merged
    weights of the project's current model (the last `promoted_model`), plus rehearsal rows; needs
    rehearsal_fraction > 0."""
    rehearsal_fraction: float = 0.0
    """Continual mode only: rehearsal rows per new training row (e.g. 0.25), a seeded sample of the previous model's
    training conversations that are not in the new mixture, capped at what exists."""

    def to_core(self) -> TrainConfig:
        fields = self.model_dump()
        for name in ("model_name", "init_from", "rehearsal_fraction"):
            fields.pop(name)
        return TrainConfig.from_dict(fields)

    def to_continual(self) -> ContinualConfig:
        return ContinualConfig(init_from=self.init_from, rehearsal_fraction=self.rehearsal_fraction, seed=self.seed)


@dg.asset(
    group_name="training",
    kinds={"pytorch", "huggingface"},
    deps=[BASE_MODEL, SFT_MIXTURE],
    pool=GPU_POOL,
    automation_condition=RETRAIN_ON_UPSTREAM_CHANGE,
    retry_policy=ENGINE_RETRY,
)
def sft_model(
    context: dg.AssetExecutionContext, config: SFTModelConfig, storage: DataStorage
) -> dg.MaterializeResult:
    """The base model fine-tuned on `sft_mixture`, saved as merged safetensors + LoRA adapter + the exact chat
    template used in training, with `lineage.json`, `train_rows.parquet` (every row back to its generation shard and
    row, with its messages and whether it was trained, validated or dropped as too long) and a model card. Trained
    from the base model, never a previous fine-tune, unless continual mode is configured (`init_from: previous` with
    `rehearsal_fraction` > 0)."""
    try:  # config and inputs first, before any work; their errors are not retried (ENGINE_RETRY)
        continual = config.to_continual()  # e.g. a continual mode without rehearsal
        base = storage.read_json(BASE_MODEL, MODEL_MANIFEST)
        mixture = storage.read_conversations(SFT_MIXTURE)
        core = config.to_core()
        previous_dir, no_previous_reason = _previous_model(storage, continual)
    except (ValueError, FileNotFoundError, KeyError) as error:
        raise input_error(error) from error
    snapshots = {name: storage.snapshot(name) for name in upstream_assets(context)}
    external = external_inputs(context)  # not snapshotted: the assets reading them record their hashes
    run = run_training(
        base, mixture, core, continual, storage.root_path / "models" / "sft", config.model_name,
        data_hash=storage.describe_table(SFT_MIXTURE).content_hash,
        previous_model_dir=previous_dir,
        no_previous_reason=no_previous_reason,
        lineage_extras={"dagster_run_id": context.run.run_id, "assets": snapshots,
                        "external_inputs": external},
        log=context.log.info,
        warn=context.log.warning,
        token_cache=storage.asset_dir(SFT_MIXTURE) / TOKEN_CACHE_FOLDER,  # the rows the mixture tokenized, read again
    )
    result, start = run.result, run.start
    rows_path = result.train_rows_path
    model_hash = model_content_hash(result.model_dir)
    context.log.info(f"model written to {result.model_dir}; lineage at {result.lineage_path}")
    retrained_from = start.retrained_from
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(result.model_dir)),
            "model_dir": dg.MetadataValue.path(str(result.model_dir)),
            "lineage_path": dg.MetadataValue.path(str(result.lineage_path)),
            "adapter_dir": dg.MetadataValue.path(str(result.adapter_dir)) if result.adapter_dir else None,
            "train_rows_path": dg.MetadataValue.path(str(rows_path)),
            "content_hash": model_hash,
            "dagster/row_count": run.new_train_rows + run.rehearsal_rows,
            "new_train_rows": run.new_train_rows,
            "rehearsal_rows": run.rehearsal_rows,
            "validation_rows": run.validation_rows,
            "dropped_too_long": result.dropped_too_long,
            "token_rows_from_cache": result.rows_from_cache,  # tokenized by the mixture's counter, read, not redone
            "init_from": config.init_from,
            "retrained_from": dg.MetadataValue.json(retrained_from) if isinstance(retrained_from, dict)
            else retrained_from,
            "previous_model_dir": dg.MetadataValue.path(str(start.previous.path)) if start.previous else None,
            "previous_model_content_hash": start.previous.content_hash if start.previous else None,
            "train_loss": result.metrics.get("train_loss"),
            "best_eval_loss": result.metrics.get("best_eval_loss"),
            "eval_perplexity": result.metrics.get("eval_perplexity"),
            "global_step": result.metrics.get("global_step"),
            "train_seconds": result.metrics.get("train_seconds"),
            "early_stopped": result.early_stopping["fired"],
            "early_stopping_step": result.early_stopping["stopped_at_step"],
            "early_stopping": dg.MetadataValue.json(result.early_stopping),
            "preflight": dg.MetadataValue.json(result.preflight),
            "gradient_checkpointing": result.metrics["memory_plan"]["gradient_checkpointing"],
            "memory_plan": dg.MetadataValue.json(result.metrics["memory_plan"]),
            "peak_rss_gb": result.metrics["peak_rss_gb"],
            "training_config": dg.MetadataValue.json(core.to_dict()),
            "loss_curve": dg.MetadataValue.md(_png_markdown(result.model_dir / "loss_curve.png")),
            "lineage": dg.MetadataValue.md(lineage_summary(snapshots, base, external)),
        },
        data_version=dg.DataVersion(model_hash),
    )


def _previous_model(storage: DataStorage, continual: ContinualConfig) -> tuple[str | None, str]:
    """Continual mode: the project's current model, the last one promoted after its checks passed, or None and
    why (then training starts from the base model and the lineage says so). Base mode: (None, ""). A promoted directory
    whose files no longer hash to the pointer's content hash is refused (``ModelChangedError``)."""
    if not continual.continual:
        return None, ""
    if storage.has(PROMOTED_MODEL, CURRENT_MODEL):  # re-hashed: it must still be the model that was promoted
        pointer = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)
        recorded_by = f"the promoted-model pointer ({storage.asset_dir(PROMOTED_MODEL) / CURRENT_MODEL})"
        return str(verified_model_dir(pointer["model_dir"], pointer["content_hash"], recorded_by)), ""
    return None, (f"no previous sft_model yet: none promoted ({storage.asset_dir(PROMOTED_MODEL) / CURRENT_MODEL} "
                  "does not exist)")


def _png_markdown(path) -> str:
    import base64

    if not path.exists():
        return "(no losses logged)"
    return f"![loss curve](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def _candidate(context: dg.AssetCheckExecutionContext) -> tuple[str, str]:
    """The model this check examines, the latest `sft_model` materialization (not the promoted one), and the base
    model it was trained from (its lineage.json)."""
    import json
    from pathlib import Path

    model_dir = str(latest_materialization(context.instance, SFT_MODEL).value("model_dir"))
    lineage = json.loads((Path(model_dir) / "lineage.json").read_text())
    return model_dir, lineage["base_model"]["path"]


@dg.asset_check(asset=sft_model, blocking=True, description="The model directory serves conversations exactly as "
                "they were trained: its own tokenizer and chat_template.jinja re-tokenize every trained and validated "
                "row of train_rows.parquet to the token ids and loss mask recorded during training (digests), and "
                "the template is byte-identical to the base model's.")
def served_format_matches_training(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    verdict = served_format_verdict(*_candidate(context))
    mismatches = verdict.metadata["mismatches"]
    return dg.AssetCheckResult(
        passed=verdict.passed, description=verdict.description,
        metadata={**verdict.metadata, "mismatches": dg.MetadataValue.md(markdown_table(mismatches) if mismatches
                                                                        else "none")},
    )


@dg.asset_check(asset=sft_model, blocking=True, description="Forgetting: perplexity on held-out general text "
                f"(installed packages' long descriptions) rises at most {MAX_PERPLEXITY_INCREASE:.0%} over the base "
                "model's.")
def general_text_forgetting(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    verdict = forgetting_verdict(*_candidate(context))
    return dg.AssetCheckResult(passed=verdict.passed, description=verdict.description, metadata=verdict.metadata)
