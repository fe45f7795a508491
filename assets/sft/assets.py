"""`sft_model`: the base model fine-tuned on the mixture (TRL SFTTrainer + PEFT LoRA), with its lineage."""


from typing import Literal

import dagster as dg
import polars as pl

from assets.common.chat_template import read_chat_template
from assets.common.resources import (
    BASE_MODEL,
    CURRENT_MODEL,
    MODEL_MANIFEST,
    PROMOTED_MODEL,
    RETRAIN_ON_UPSTREAM_CHANGE,
    SFT_MIXTURE,
    SFT_MODEL,
    DataStorage,
    latest_materialization,
)
from assets.common.storage import sha256_text
from training.config import TrainConfig
from training.continual import ContinualConfig, StartingPoint, starting_point, train_rows_table


class SFTModelConfig(dg.Config):
    """Recommended SFT defaults: LoRA r=16, alpha=32, dropout 0.05, LR 2e-4 (1e-5 full), cosine to 10% of peak,
    3% warmup, up to 2 epochs with early stopping on validation loss."""

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
    eval_steps: int | None = None
    early_stopping_patience: int = 2
    seed: int = 0
    init_from: Literal["base", "previous"] = "base"
    """Where training starts. "base" (default): the base model, every time. "previous" (continual mode): the merged
    weights of the last sft_model (`sft_model/latest.json`), plus rehearsal rows; needs rehearsal_fraction > 0."""
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
    group_name="sft",
    kinds={"pytorch", "huggingface"},
    deps=[BASE_MODEL, SFT_MIXTURE],
    pool="gpu",
    automation_condition=RETRAIN_ON_UPSTREAM_CHANGE,
    check_specs=[dg.AssetCheckSpec("chat_template_matches_base", asset="sft_model")],
)
def sft_model(
    context: dg.AssetExecutionContext, config: SFTModelConfig, storage: DataStorage
) -> dg.MaterializeResult:
    """The base model fine-tuned on `sft_mixture`, saved as merged safetensors + LoRA adapter + the exact chat
    template used in training, with `lineage.json`, `train_rows.parquet` (every row back to its generation shard and
    row, with its messages) and a model card. Trained from the base model, never a previous fine-tune, unless
    continual mode is configured (`init_from: previous` with `rehearsal_fraction` > 0)."""
    from training.trainer import train

    continual = config.to_continual()  # fails here, before any work, on a continual mode without rehearsal
    base = storage.read_json(BASE_MODEL, MODEL_MANIFEST)
    mixture = storage.read_table(SFT_MIXTURE)
    train_rows = mixture.filter(pl.col("split") == "train")
    validation_rows = mixture.filter(pl.col("split") == "validation")
    core = config.to_core()
    start = _starting_point(context, storage, continual, base, mixture, train_rows.height)
    rehearsal_rows = start.rehearsal_rows
    n_rehearsal = rehearsal_rows.height if rehearsal_rows is not None else 0
    upstream = {name: storage.snapshot(name) for name in upstream_assets(context)}
    mixture_hash = storage.describe_table(SFT_MIXTURE).content_hash
    key = f"{base['content_hash']}|{mixture_hash}|{sorted(core.to_dict().items())}"
    if continual.continual:  # (base mode keeps the key it always had)
        key += f"|{sorted(continual.to_dict().items())}|{start.previous.content_hash if start.previous else ''}"
    run_key = sha256_text(key)[:16]
    output_dir = storage.root_path / "models" / "sft" / f"{config.model_name}-{run_key}"
    if start.previous is not None and output_dir.resolve() == start.previous.path.resolve():
        raise ValueError(f"{output_dir}: the new model would overwrite the previous model it starts from")
    lineage = {
        "model_name": config.model_name,
        "dagster_run_id": context.run.run_id,
        "base_model": base,
        "assets": upstream,
        "retrained_from": start.retrained_from,
    }
    conversations = train_rows["messages"].to_list()
    if rehearsal_rows is not None:
        conversations += rehearsal_rows["messages"].to_list()
    context.log.info(f"training {config.method} from {start.model_path} on {train_rows.height} conversations "
                     f"+ {n_rehearsal} rehearsal ({validation_rows.height} validation) -> {output_dir}")
    result = train(
        start.model_path,
        conversations,
        validation_rows["messages"].to_list(),
        output_dir,
        core,
        lineage=lineage,
        log=context.log.info,
        train_rows=train_rows_table(mixture, rehearsal_rows),
    )
    rows_path = result.train_rows_path
    template_ok = read_chat_template(result.model_dir) == read_chat_template(base["path"])  # the base's, always
    model_hash = _model_hash(result.model_dir)
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
            "dagster/row_count": train_rows.height + n_rehearsal,
            "new_train_rows": train_rows.height,
            "rehearsal_rows": n_rehearsal,
            "validation_rows": validation_rows.height,
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
            "preflight": dg.MetadataValue.json(result.preflight),
            "training_config": dg.MetadataValue.json(core.to_dict()),
            "loss_curve": dg.MetadataValue.md(_png_markdown(result.model_dir / "loss_curve.png")),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="chat_template_matches_base",
                passed=template_ok,
                metadata={"detail": "saved chat template is byte-identical to the base model's"
                          if template_ok else "saved chat template differs from the base model's"},
            )
        ],
        data_version=dg.DataVersion(model_hash),
    )


def _starting_point(context: dg.AssetExecutionContext, storage: DataStorage, continual: ContinualConfig, base: dict,
                    mixture: pl.DataFrame, new_train_rows: int) -> StartingPoint:
    """Base mode: the base model. Continual mode: the project's current model, the last one promoted after its
    checks passed (validated against the base model), or the base model when none was promoted yet (the reason
    goes into the lineage)."""
    previous_dir, reason = None, "no previous model"
    if continual.continual:
        if storage.has(PROMOTED_MODEL, CURRENT_MODEL):
            previous_dir = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)["model_dir"]
        else:
            reason = (f"no previous sft_model yet: none promoted ({storage.asset_dir(PROMOTED_MODEL) / CURRENT_MODEL}"
                      " does not exist)")
            context.log.warning(f"continual mode: {reason}; training from the base model")
    start = starting_point(continual, base["path"], base["content_hash"], previous_dir,
                           mixture["conversation_id"].to_list(), new_train_rows, reason)
    if start.rehearsal is not None:
        stats = start.rehearsal.stats
        context.log.info(f"continual mode: starting from {start.model_path}; rehearsal {stats['rows']} rows "
                         f"(requested {stats['requested']}, available {stats['available']}, "
                         f"{stats['excluded_in_new_data']} already in the new mixture)")
        if stats["rows"] < stats["requested"]:
            context.log.warning(f"continual mode: only {stats['rows']} of {stats['requested']} rehearsal rows "
                                "available (the rest of the previous training set is in the new mixture)")
    return start


def upstream_assets(context: dg.AssetExecutionContext) -> list[str]:
    """Every asset upstream of this one in the run's asset graph (the whole code location's graph when launched from
    its Definitions), in topological order: a stage added to the Definitions appears in the lineage without an edit
    here. Upstream assets that were never materialized into storage are listed with no tables."""
    graph = context.job_def.asset_layer.asset_graph
    ancestors = set(graph.upstream_key_iterator(context.asset_key))
    return [key.to_user_string() for key in graph.toposorted_asset_keys if key in ancestors]


def _png_markdown(path) -> str:
    import base64

    if not path.exists():
        return "(no losses logged)"
    return f"![loss curve](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def _model_hash(model_dir) -> str:
    from assets.common.models import model_content_hash

    return model_content_hash(model_dir)


def _candidate(context: dg.AssetCheckExecutionContext) -> tuple[str, str]:
    """The model this check examines, the latest `sft_model` materialization (not the promoted one), and the base
    model it was trained from (its lineage.json)."""
    import json
    from pathlib import Path

    model_dir = str(latest_materialization(context.instance, SFT_MODEL).value("model_dir"))
    lineage = json.loads((Path(model_dir) / "lineage.json").read_text())
    return model_dir, lineage["base_model"]["path"]


MAX_PERPLEXITY_INCREASE = 0.25  # general-text perplexity may rise at most 25% over the base model's


@dg.asset_check(asset=sft_model, blocking=True, description="Forgetting: perplexity on held-out general text "
                f"(installed packages' long descriptions) rises at most {MAX_PERPLEXITY_INCREASE:.0%} over the base "
                "model's.")
def general_text_forgetting(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    from assets.sft.checks import general_text_passages, perplexity

    model_dir, base_path = _candidate(context)
    passages = general_text_passages()
    before = perplexity(base_path, passages)
    after = perplexity(model_dir, passages)
    increase = after / before - 1.0
    return dg.AssetCheckResult(
        passed=increase <= MAX_PERPLEXITY_INCREASE,
        metadata={"perplexity_base": round(before, 3), "perplexity_tuned": round(after, 3),
                  "relative_increase": round(increase, 4), "threshold": MAX_PERPLEXITY_INCREASE,
                  "passages": len(passages)},
    )
