"""`python -m training`: fine-tune a local chat model on conversation Parquet files, without Dagster.

Example:
    python -m training --model data/models/base/SmolLM2-135M-Instruct \\
        --data data/sft_mixture/data.parquet --output out/my-model --set num_train_epochs=1 --set lora_r=32
The data file needs a `messages` column (list of {role, content}); a `split` column ("train"/"validation")
selects the validation rows, else --validation gives a second file.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local Hugging Face model directory (the base model)")
    parser.add_argument("--data", required=True, help="Parquet file with a `messages` column")
    parser.add_argument("--validation", help="Parquet file of validation conversations (else: split column)")
    parser.add_argument("--output", required=True, help="model directory to write")
    parser.add_argument("--config", help="JSON file of TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args(argv)

    import polars as pl

    from training.trainer import train

    fields = json.loads(Path(args.config).read_text()) if args.config else {}
    config = TrainConfig.from_dict({**fields, **_parse_set(args.set)})
    data = pl.read_parquet(args.data)
    if "messages" not in data.columns:
        raise SystemExit(f"{args.data}: no `messages` column (columns: {data.columns})")
    if args.validation:
        train_rows, validation_rows = data, pl.read_parquet(args.validation)
    elif "split" in data.columns:
        train_rows = data.filter(pl.col("split") == "train")
        validation_rows = data.filter(pl.col("split") == "validation")
    else:
        train_rows, validation_rows = data, data.clear()
    result = train(args.model, train_rows["messages"].to_list(), validation_rows["messages"].to_list(),
                   args.output, config, lineage={"data": {"path": str(Path(args.data).resolve())}})
    print(f"Trained model: {result.model_dir}  lineage: {result.lineage_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
