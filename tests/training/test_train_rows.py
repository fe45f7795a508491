"""Conversation ids travel through tokenization (training/dataset.py): train_rows.parquet lists every row of a run
with what became of it, a row longer than max_length included, marked dropped with its reason; through the shared
entry point (training/run.py) on the tiny model."""

from __future__ import annotations

import json

import polars as pl
import pytest

from tests.training_worker import conversations
from training.config import TrainConfig
from training.continual import ContinualConfig
from training.dataset import (
    DROPPED,
    OUTCOME_COLUMNS,
    TRAINED,
    VALIDATED,
    check_rows,
    conversation_rows,
    tokenize_rows,
)
from training.run import run_training

LONG = [{"role": "user", "content": "Tell me a long story."},
        {"role": "assistant", "content": " ".join(["once upon a time there was a lantern by the river"] * 40)}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def mixture(n_train: int = 12, n_validation: int = 4) -> pl.DataFrame:
    """A mixture-shaped table: provenance columns, one over-long conversation in each split."""
    chats = conversations(n_train + n_validation, seed=5)
    chats[3], chats[n_train + 1] = LONG, LONG
    splits = ["train"] * n_train + ["validation"] * n_validation
    return pl.DataFrame({
        "conversation_id": [f"00000-{i:07d}" for i in range(len(chats))],
        "shard": [0] * len(chats),
        "row_index": list(range(len(chats))),
        "task": ["qa"] * len(chats),
        "split": splits,
        "messages": chats,
        "quality_score": [1.0] * len(chats),  # a mixture column the model directory does not keep
    })


def test_tokenized_examples_keep_their_ids_and_long_rows_are_listed_as_dropped(tokenizer, tiny_model_dir):
    from assets.common.models.chat_template import read_chat_template

    rows = mixture().drop("quality_score")
    rows = pl.concat([rows, rows.head(2).with_columns(split=pl.lit("rehearsal"), conversation_id=pl.lit("old-1"))])
    data = tokenize_rows(tokenizer, rows, read_chat_template(tiny_model_dir), max_length=256)

    table = data.rows
    assert table.columns == [*rows.columns, *OUTCOME_COLUMNS]
    assert table.drop(*OUTCOME_COLUMNS).equals(rows)  # every row, in order
    long_tokens = table["num_tokens"][3]
    assert long_tokens > 256
    assert table["status"].to_list() == ([TRAINED] * 3 + [DROPPED] + [TRAINED] * 8 + [VALIDATED, DROPPED]
                                         + [VALIDATED] * 2 + [TRAINED] * 2)
    assert table["drop_reason"].to_list()[3] == f"longer than max_length=256 tokens ({long_tokens})"
    assert table.filter(pl.col("status") != DROPPED)["drop_reason"].null_count() == table.height - 2
    assert data.dropped() == 2 and data.dropped(["validation"]) == 1

    trained = table.filter(pl.col("status") == TRAINED)
    train, validation = data.train.to_dict(), data.validation.to_dict()
    assert train["conversation_id"] == trained["conversation_id"].to_list()
    assert train["split"] == trained["split"].to_list()  # train rows, then the rehearsal rows
    assert train["split"][-2:] == ["rehearsal", "rehearsal"]
    assert [len(ids) for ids in train["input_ids"]] == trained["num_tokens"].to_list()
    validated = table.filter(pl.col("status") == VALIDATED)
    assert validation["conversation_id"] == validated["conversation_id"].to_list()


@pytest.mark.parametrize("chunk_rows", [1, 3, 5])
def test_rows_tokenized_in_chunks_give_the_same_examples_table_and_fingerprint(tokenizer, tiny_model_dir, chunk_rows):
    """tokenize_rows holds a chunk's token lists at a time (memory); the datasets it returns (several Arrow chunks,
    a chunk with no validation row among them), the rows table and the checkpoint fingerprint are the whole
    table's."""
    from pathlib import Path

    from assets.common.models.chat_template import read_chat_template
    from training.checkpoints import run_fingerprint

    rows, template = mixture().drop("quality_score"), read_chat_template(tiny_model_dir)
    whole = tokenize_rows(tokenizer, rows, template, max_length=256, chunk_rows=rows.height)
    chunked = tokenize_rows(tokenizer, rows, template, max_length=256, chunk_rows=chunk_rows)
    assert chunked.rows.equals(whole.rows)
    assert len(chunked.train.data.column("input_ids").chunks) > 1
    for split in ("train", "validation"):
        assert getattr(chunked, split).features == getattr(whole, split).features
        assert getattr(chunked, split).to_dict() == getattr(whole, split).to_dict()
    fingerprint = [run_fingerprint(Path("m"), TrainConfig(), "h", data.train, data.validation)
                   for data in (whole, chunked)]
    assert fingerprint[0] == fingerprint[1]


@pytest.mark.parametrize(("rows", "message"), [
    (pl.DataFrame({"split": ["train"], "messages": [[{"role": "user", "content": "x"}]]}),
     r"no column\(s\) \['conversation_id'\]"),
    (conversation_rows(conversations(2, seed=0)).with_columns(split=pl.lit("test")),
     r"unknown split value\(s\) \['test'\]"),
])
def test_rows_without_ids_or_with_unknown_splits_are_rejected(rows, message):
    with pytest.raises(ValueError, match=message):
        check_rows(rows)


def test_train_rows_list_trained_validated_and_dropped_rows(tiny_model_dir, tmp_path):
    config = TrainConfig(max_steps=2, per_device_train_batch_size=4, max_length=256, logging_steps=1,
                         early_stopping_patience=0)
    base = {"path": str(tiny_model_dir), "content_hash": "base-hash"}
    lines: list[str] = []
    run = run_training(base, mixture(), config, ContinualConfig(), tmp_path / "models", "tiny", data_hash="data-hash",
                       lineage_extras={"dagster_run_id": "run-1"}, log=lines.append)

    result = run.result
    assert result.model_dir == tmp_path / "models" / f"tiny-{run.run_key}" and len(run.run_key) == 16
    assert (run.new_train_rows, run.rehearsal_rows, run.validation_rows) == (12, 0, 4)
    assert result.dropped_too_long == 2
    assert any(line.startswith("tokenized 11 train / 3 validation conversations (dropped 2") for line in lines)

    rows = pl.read_parquet(result.train_rows_path)
    assert rows.columns == ["conversation_id", "shard", "row_index", "task", "split", "messages", *OUTCOME_COLUMNS]
    assert rows["conversation_id"].to_list() == mixture()["conversation_id"].to_list()
    dropped = rows.filter(pl.col("status") == DROPPED)
    assert dropped["row_index"].to_list() == [3, 13]
    assert dropped["drop_reason"].to_list() == [f"longer than max_length=256 tokens ({n})"
                                                for n in dropped["num_tokens"]]
    trained = rows.filter(pl.col("status") == TRAINED)
    assert trained.height == 11 and set(trained["split"]) == {"train"}
    assert rows.filter(pl.col("status") == VALIDATED).height == 3
    assert result.preflight["examples"] == trained.height  # what the trainer's batches held: exactly those rows

    lineage = json.loads(result.lineage_path.read_text())
    assert lineage["training"]["examples"] == {"train": 11, "validation": 3, "dropped_too_long": 2,
                                               "dropped_too_long_train": 1, "dropped_too_long_validation": 1}
    assert lineage["model_name"] == "tiny" and lineage["dagster_run_id"] == "run-1"
    assert lineage["base_model"] == base and lineage["retrained_from"] == "base_model"
    assert "2 dropped as longer than max_length" in (result.model_dir / "README.md").read_text()
