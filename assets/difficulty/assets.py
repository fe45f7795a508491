"""`instruction_difficulty`: the student's Instruction-Following Difficulty (IFD) of every tagged row."""

import base64
import time
from typing import Literal

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.models.integrity import ModelChangedError, verified_model_dir
from assets.common.orchestration.resources import (
    BASE_MODEL,
    ENGINE_RETRY,
    GPU_POOL,
    INSTRUCTION_DIFFICULTY,
    MODEL_MANIFEST,
    REBUILD_ON_UPSTREAM_CHANGE,
    TAGGED_CONVERSATIONS,
    DataStorage,
    input_error,
)
from assets.difficulty.core import IFDConfig, load_student, off_table, score_rows
from assets.difficulty.report import histogram_png, summary


class DifficultySettings(dg.Config):
    enabled: bool = True
    """Score every row (off: each row gets ifd_status 'off', no model is loaded; the mixture cannot select by IFD)."""
    batch_size: int = 8
    """Sequences per forward pass (two per row: with and without the instruction)."""
    max_length: int = 2048
    """Rows whose conditioned rendering is longer (in the student's tokens) are not scored (ifd_status too_long)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bfloat16 on a GPU that supports it, float32 otherwise."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    """CPU threads of torch (0: its default)."""

    def to_core(self) -> IFDConfig:
        return IFDConfig(**self.model_dump())


def _png(data: bytes | None) -> str:
    if data is None:
        return "(no scored rows)"
    return f"![IFD distribution](data:image/png;base64,{base64.b64encode(data).decode()})"


@dg.asset(group_name="data", kinds={"pytorch", "parquet"}, deps=[TAGGED_CONVERSATIONS, BASE_MODEL], pool=GPU_POOL,
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE, retry_policy=ENGINE_RETRY)
def instruction_difficulty(
    context: dg.AssetExecutionContext, config: DifficultySettings, storage: DataStorage
) -> dg.MaterializeResult:
    """The student's Instruction-Following Difficulty of every tagged row (Li et al. 2024, Cherry LLM): its mean loss
    on the first answer with the instruction (`ifd_loss_conditioned`) and without it (`ifd_loss_unconditioned`), and
    IFD = exp(conditioned - unconditioned) = PPL(answer | instruction) / PPL(answer), computed by the prepared
    `base_model` under its chosen chat template (forward passes only, batched; CPU here, a GPU when present, in the
    `gpu` pool). The mixture can select by it (`select: {by: ifd}`); rows at IFD >= 1 are the ones it drops."""
    try:
        core = config.to_core()
        rows = storage.read_conversations(TAGGED_CONVERSATIONS)
        base = storage.read_json(BASE_MODEL, MODEL_MANIFEST) if core.enabled else None
        model_dir = verified_model_dir(base["path"], base["content_hash"], "the base_model manifest") if base else None
    except (ValueError, FileNotFoundError, KeyError, ModelChangedError) as error:
        raise input_error(error) from error
    started = time.perf_counter()
    if core.enabled:
        model, tokenizer, template = load_student(model_dir, core)
        context.log.info(f"scoring {rows.height} rows with {base.get('name', model_dir)} on "
                         f"{next(model.parameters()).device} ({next(model.parameters()).dtype})")
        scores = score_rows(rows, model, tokenizer, template, core,
                            progress=lambda done, total: context.log.debug(f"IFD: {done}/{total} sequences"))
    else:
        context.log.info("IFD scoring is off (enabled: false): every row gets ifd_status 'off'")
        scores = off_table(rows["conversation_id"].to_list())
    seconds = time.perf_counter() - started
    stored = storage.write_table(INSTRUCTION_DIFFICULTY, scores)
    tasks = rows.select("conversation_id", "task") if "task" in rows.columns else None
    report = summary(scores, tasks)
    storage.write_json(INSTRUCTION_DIFFICULTY, "report", {**report, "config": config.model_dump(),
                                                          "base_model": base})
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "enabled": core.enabled,
            "scored_rows": report["scored"],
            "by_status": dg.MetadataValue.json(report["by_status"]),
            "ifd_at_least_1": report["ifd_at_least_1"],
            "quantiles": dg.MetadataValue.json(report["quantiles"]),
            "mean_loss_conditioned": report["mean_loss_conditioned"],
            "mean_loss_unconditioned": report["mean_loss_unconditioned"],
            "per_task": dg.MetadataValue.md(markdown_table(report["per_task"]) if tasks is not None else "(no task)"),
            "distribution": dg.MetadataValue.md(_png(histogram_png(scores))),
            "base_model_content_hash": (base or {}).get("content_hash") or "(off)",
            "seconds": round(seconds, 2),
            "parameters": dg.MetadataValue.json(config.model_dump()),
        },
        data_version=dg.DataVersion(stored.content_hash),
    )
