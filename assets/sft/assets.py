"""`sft_model`: the base model fine-tuned on the mixture (TRL SFTTrainer + PEFT LoRA), with its lineage."""


from typing import Literal

import dagster as dg
import polars as pl

from assets.base_model.assets import MANIFEST
from assets.common.report import markdown_table
from assets.common.storage import sha256_text, write_parquet_atomic
from pipelines.automation import RETRAIN_ON_UPSTREAM_CHANGE
from pipelines.resources import DataStorage, VLLMEngine
from training.chat_template import read_chat_template
from training.config import TrainConfig

# Every table that made the model, in pipeline order; their files and reports are joined into lineage.json.
UPSTREAM_TABLES = (
    "eval_sets",
    "deduplicated_conversations",
    "decontaminated_conversations",
    "filtered_conversations",
    "sft_mixture",
)
TRAIN_ROW_COLUMNS = ("conversation_id", "shard", "row_index", "seed", "generator_model", "generator_model_hash",
                     "pre_query_template_hash", "task", "split")


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

    def to_core(self) -> TrainConfig:
        fields = self.model_dump()
        fields.pop("model_name")
        return TrainConfig.from_dict(fields)


@dg.asset(
    group_name="training",
    kinds={"pytorch", "huggingface"},
    deps=["base_model", "sft_mixture"],
    pool="gpu",
    automation_condition=RETRAIN_ON_UPSTREAM_CHANGE,
    check_specs=[dg.AssetCheckSpec("chat_template_matches_base", asset="sft_model")],
)
def sft_model(
    context: dg.AssetExecutionContext, config: SFTModelConfig, storage: DataStorage
) -> dg.MaterializeResult:
    """The base model fine-tuned on `sft_mixture` (always from the base model, never a previous fine-tune), saved as
    merged safetensors + LoRA adapter + the exact chat template used in training, with `lineage.json`,
    `train_rows.parquet` (every training row back to its generation shard and row) and a model card."""
    from training.trainer import train

    base = storage.read_json("base_model", MANIFEST)
    mixture = storage.read_table("sft_mixture")
    train_rows = mixture.filter(pl.col("split") == "train")
    validation_rows = mixture.filter(pl.col("split") == "validation")
    core = config.to_core()
    upstream = {"magpie_conversations": _generation_lineage(storage)}
    for asset in UPSTREAM_TABLES:
        table = storage.describe_table(asset)
        upstream[asset] = {
            "path": str(table.path),
            "content_hash": table.content_hash,
            "row_count": table.row_count,
            "report": _read_report(storage, asset),
        }
    run_key = sha256_text(f"{base['content_hash']}|{upstream['sft_mixture']['content_hash']}|"
                          f"{sorted(core.to_dict().items())}")[:16]
    output_dir = storage.root_path / "models" / "sft" / f"{config.model_name}-{run_key}"
    lineage = {
        "model_name": config.model_name,
        "dagster_run_id": context.run.run_id,
        "base_model": base,
        "assets": upstream,
        "retrained_from": "base_model",
    }
    context.log.info(f"training {config.method} on {train_rows.height} conversations "
                     f"({validation_rows.height} validation) -> {output_dir}")
    result = train(
        base["path"],
        train_rows["messages"].to_list(),
        validation_rows["messages"].to_list(),
        output_dir,
        core,
        lineage=lineage,
        log=context.log.info,
    )
    rows_path = result.model_dir / "train_rows.parquet"
    write_parquet_atomic(mixture.select([c for c in TRAIN_ROW_COLUMNS if c in mixture.columns]), rows_path)
    template_ok = read_chat_template(result.model_dir) == read_chat_template(base["path"])
    storage.write_json("sft_model", "latest", {"model_dir": str(result.model_dir), "base_path": base["path"],
                                               "run_id": context.run.run_id})
    model_hash = _model_hash(result.model_dir)
    context.log.info(f"model written to {result.model_dir}; lineage at {result.lineage_path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(result.model_dir)),
            "model_dir": dg.MetadataValue.path(str(result.model_dir)),
            "lineage_path": dg.MetadataValue.path(str(result.lineage_path)),
            "adapter_dir": dg.MetadataValue.path(str(result.adapter_dir)) if result.adapter_dir else None,
            "train_rows_path": dg.MetadataValue.path(str(rows_path)),
            "content_hash": model_hash,
            "dagster/row_count": train_rows.height,
            "validation_rows": validation_rows.height,
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


def _generation_lineage(storage: DataStorage) -> dict:
    """Every generation shard: its table's path, hash and rows, and how it was generated."""
    shards = {}
    for key, path in storage.shard_tables("magpie_conversations").items():
        table = storage.describe_table("magpie_conversations", f"shard-{key}")
        shards[key] = {"path": str(path), "content_hash": table.content_hash, "row_count": table.row_count,
                       "report": _read_report(storage, "magpie_conversations", f"report-{key}")}
    return {
        "content_hash": sha256_text("\n".join(f"{k}:{s['content_hash']}" for k, s in sorted(shards.items()))),
        "row_count": sum(s["row_count"] for s in shards.values()),
        "shards": shards,
    }


def _read_report(storage: DataStorage, asset: str, name: str = "report") -> dict | None:
    try:
        return storage.read_json(asset, name)
    except FileNotFoundError:
        return None


def _png_markdown(path) -> str:
    import base64

    if not path.exists():
        return "(no losses logged)"
    return f"![loss curve](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def _model_hash(model_dir) -> str:
    from assets.base_model.core import model_content_hash

    return model_content_hash(model_dir)


MAX_PERPLEXITY_INCREASE = 0.25  # general-text perplexity may rise at most 25% over the base model's
STOP_CHECK_MAX_TOKENS = 256


@dg.asset_check(asset=sft_model, description="Forgetting: perplexity on held-out general text (installed packages' "
                f"long descriptions) rises at most {MAX_PERPLEXITY_INCREASE:.0%} over the base model's.")
def general_text_forgetting(storage: DataStorage) -> dg.AssetCheckResult:
    from assets.sft.checks import general_text_passages, perplexity

    latest = storage.read_json("sft_model", "latest")
    passages = general_text_passages()
    before = perplexity(latest["base_path"], passages)
    after = perplexity(latest["model_dir"], passages)
    increase = after / before - 1.0
    return dg.AssetCheckResult(
        passed=increase <= MAX_PERPLEXITY_INCREASE,
        metadata={"perplexity_base": round(before, 3), "perplexity_tuned": round(after, 3),
                  "relative_increase": round(increase, 4), "threshold": MAX_PERPLEXITY_INCREASE,
                  "passages": len(passages)},
    )


@dg.asset_check(asset=sft_model, description="The tuned model, served by vLLM with its saved chat template, ends "
                "every answer to a fixed prompt set on its end-of-turn token (no runaway generations); base and "
                "tuned answers side by side.")
def answers_stop_on_eos(storage: DataStorage, engine: VLLMEngine) -> dg.AssetCheckResult:
    from assets.sft.checks import FIXED_PROMPTS, answer_prompts

    latest = storage.read_json("sft_model", "latest")
    tuned = answer_prompts(latest["model_dir"], FIXED_PROMPTS, engine.engine_config(), STOP_CHECK_MAX_TOKENS)
    base = answer_prompts(latest["base_path"], FIXED_PROMPTS, engine.engine_config(), STOP_CHECK_MAX_TOKENS)
    rows = [{"prompt": p, "base": b.text[:300], "tuned": t.text[:300], "tuned_finish": t.finish_reason}
            for p, b, t in zip(FIXED_PROMPTS, base, tuned, strict=True)]
    runaway = [r["prompt"] for r in rows if r["tuned_finish"] != "stop"]
    return dg.AssetCheckResult(
        passed=not runaway,
        metadata={"runaway_prompts": dg.MetadataValue.json(runaway), "max_tokens": STOP_CHECK_MAX_TOKENS,
                  "base_vs_tuned": dg.MetadataValue.md(markdown_table(rows))},
    )
