"""`python -m training`: fine-tune a local chat model on conversation Parquet files, without Dagster.

Example:
    python -m training --model data/models/base/SmolLM2-135M-Instruct \\
        --data data/sft_mixture/data.parquet --output out/my-model --set num_train_epochs=1 --set lora_r=32
The data file needs a `messages` column (list of {role, content}); a `split` column ("train"/"validation")
selects the validation rows, else --validation gives a second file. Rows without a `conversation_id` get one from
a hash of their messages. The model directory keeps the rows (with messages) in train_rows.parquet, each marked
trained, validated, or dropped (longer than max_length) with the reason.

Continual mode (start from a previous fine-tune of the same base model, with rehearsal of its training rows):
    python -m training --model BASE --data new.parquet --output out/round-2 \
        --init-from previous --previous-model out/round-1 --rehearsal-fraction 0.25
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.config import TrainConfig


def _parse_set(values: list[str]) -> dict:
    overrides = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE (e.g. --set lora_r=32)")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local Hugging Face model directory (the base model)")
    parser.add_argument("--data", required=True, help="Parquet file with a `messages` column")
    parser.add_argument("--validation", help="Parquet file of validation conversations (else: split column)")
    parser.add_argument("--output", required=True, help="model directory to write")
    parser.add_argument("--config", help="JSON file of TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--init-from", choices=("base", "previous"), default="base",
                        help="start from the base model (default) or from --previous-model (continual mode)")
    parser.add_argument("--previous-model", help="continual mode: the previous fine-tune's model directory")
    parser.add_argument("--rehearsal-fraction", type=float, default=0.0,
                        help="continual mode: rehearsal rows from the previous model per new training row (> 0)")
    parser.add_argument("--token-cache", help="optional: a folder of rows tokenized before with this model's tokenizer "
                        "(a data root's sft_mixture/token_counts): rows found there are not tokenized again")
    return parser


def _read_rows(data_path: str, validation_path: str | None):
    """The data set as one table: split "train" / "validation", a conversation_id on every row."""
    import polars as pl

    from assets.common.data.user_files import read_user_parquet
    from training.dataset import content_conversation_ids

    data = read_user_parquet(data_path, SystemExit)
    if "messages" not in data.columns:
        raise SystemExit(f"{data_path}: no `messages` column (columns: {data.columns})")
    if validation_path:
        train_rows, validation_rows = data, read_user_parquet(validation_path, SystemExit)
    elif "split" in data.columns:
        train_rows = data.filter(pl.col("split") == "train")
        validation_rows = data.filter(pl.col("split") == "validation")
    else:
        train_rows, validation_rows = data, data.clear()
    rows = pl.concat([train_rows.with_columns(split=pl.lit("train")),
                      validation_rows.with_columns(split=pl.lit("validation"))], how="diagonal_relaxed")
    if "conversation_id" not in rows.columns:
        rows = rows.with_columns(conversation_id=pl.Series(content_conversation_ids(rows["messages"].to_list()),
                                                           dtype=pl.Utf8))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)

    from assets.common.data.user_files import read_user_json
    from assets.common.models.integrity import model_content_hash
    from training.continual import ContinualConfig, ContinualError
    from training.run import run_training

    fields = read_user_json(args.config, SystemExit) if args.config else {}
    config = TrainConfig.from_dict({**fields, **_parse_set(args.set)})
    try:
        continual = ContinualConfig(args.init_from, args.rehearsal_fraction, seed=config.seed)
    except ContinualError as error:
        raise SystemExit(f"--init-from/--rehearsal-fraction: {error}") from None
    if continual.continual != bool(args.previous_model):
        raise SystemExit("--previous-model DIR goes with --init-from previous (and only with it)")
    rows = _read_rows(args.data, args.validation)
    base = {"path": str(Path(args.model).resolve()), "content_hash": model_content_hash(args.model)}
    output = Path(args.output)
    try:
        run = run_training(base, rows, config, continual, output.parent, output.name,
                           previous_model_dir=args.previous_model, token_cache=args.token_cache,
                           lineage_extras={"data": {"path": str(Path(args.data).resolve())}})
    except ContinualError as error:
        raise SystemExit(str(error)) from None
    print(f"Trained model: {run.result.model_dir}  lineage: {run.result.lineage_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
