"""The student's IFD (assets/difficulty): the two losses by hand on the tiny model, batching, determinism, and the
`instruction_difficulty` asset through Dagster."""

from __future__ import annotations

import math

import polars as pl
import pytest

from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import (
    BASE_MODEL,
    INSTRUCTION_DIFFICULTY,
    MODEL_MANIFEST,
    TAGGED_CONVERSATIONS,
    DataStorage,
)
from assets.difficulty.assets import instruction_difficulty
from assets.difficulty.core import IFDConfig, load_student, score_rows
from tests.asset_runs import conversation, failure_text, frame, materialization, materialize

ASSET = INSTRUCTION_DIFFICULTY.to_user_string()


def _rows() -> pl.DataFrame:
    rows = [conversation(i, f"Explain the item number {i} " * (i + 1),
                         f"The item {i} is " + "quite long " * (2 * i + 1)) for i in range(4)]
    rows.append(conversation(4, "Short question?", "Short answer.", system="Be brief."))
    return frame(rows)


@pytest.fixture(scope="module")
def student(tiny_model_dir):
    return load_student(tiny_model_dir, IFDConfig())


def _hand_loss(model, tokenizer, messages: list[dict]) -> float:
    """Mean NLL of the last message's words, from one unpadded full forward pass and the template rendered here."""
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False)
    answer = messages[-1]["content"]
    start = text.rindex(answer)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    positions = [t for t, (s, e) in enumerate(encoding["offset_mapping"]) if e > s and s < start + len(answer)
                 and e > start]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    return -sum(float(log_probs[t - 1, ids[t]]) for t in positions) / len(positions)


def test_ifd_equals_the_two_losses_computed_by_hand(student):
    model, tokenizer, template = student
    df = _rows()
    scores = score_rows(df, model, tokenizer, template, IFDConfig(batch_size=3))  # padded batches of mixed lengths
    row = 4  # the one with a system prompt: the instruction is system + user
    messages = df["messages"][row].to_list()
    conditioned = _hand_loss(model, tokenizer, messages)
    unconditioned = _hand_loss(model, tokenizer, [{"role": "user", "content": ""}, messages[-1]])
    got = scores.filter(pl.col("conversation_id") == df["conversation_id"][row]).row(0, named=True)
    assert got["ifd_status"] == "scored"
    assert got["ifd_loss_conditioned"] == pytest.approx(conditioned, rel=1e-5)
    assert got["ifd_loss_unconditioned"] == pytest.approx(unconditioned, rel=1e-5)
    assert got["ifd"] == pytest.approx(math.exp(conditioned - unconditioned), rel=1e-5)
    assert got["ifd_loss_conditioned"] != pytest.approx(got["ifd_loss_unconditioned"], rel=1e-9)
    assert scores["ifd_status"].to_list() == ["scored"] * df.height


def test_same_rows_same_bytes_and_too_long_rows_are_not_scored(student):
    model, tokenizer, template = student
    df = _rows()
    first = score_rows(df, model, tokenizer, template, IFDConfig(batch_size=2))
    again = score_rows(df.reverse(), model, tokenizer, template, IFDConfig(batch_size=2))
    assert first.equals(again)  # same rows in another order: same batches, same values
    short = score_rows(df, model, tokenizer, template, IFDConfig(batch_size=2, max_length=120))
    too_long = short.filter(pl.col("ifd_status") == "too_long")
    assert too_long.height == 2 and too_long["ifd"].null_count() == 2  # the rows of 133 and 163 tokens


def _storage_with_inputs(tmp_path, model_dir) -> DataStorage:
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_table(TAGGED_CONVERSATIONS, _rows().with_columns(pl.lit("general").alias("task")))
    storage.write_json(BASE_MODEL, MODEL_MANIFEST, {"path": str(model_dir), "name": "tiny",
                                                    "content_hash": model_content_hash(model_dir)})
    return storage


def test_asset_scores_every_row_and_reports_the_distribution(tmp_path, tiny_model_dir):
    storage = _storage_with_inputs(tmp_path, tiny_model_dir)
    result = materialize([instruction_difficulty], storage, tmp_path / "dagster",
                         {ASSET: {"batch_size": 4}})
    assert result.success, failure_text(result)
    metadata = materialization(result, ASSET)
    table = storage.read_table(ASSET)
    assert metadata["dagster/row_count"] == table.height == 5 and metadata["scored_rows"] == 5
    assert metadata["ifd_at_least_1"] == int((table["ifd"] >= 1).sum())
    assert "data:image/png;base64," in metadata["distribution"] and "general" in metadata["per_task"]
    assert storage.read_json(ASSET, "report")["base_model"]["name"] == "tiny"

    off = materialize([instruction_difficulty], storage, tmp_path / "dagster-off", {ASSET: {"enabled": False}})
    assert off.success and storage.read_table(ASSET)["ifd_status"].to_list() == ["off"] * 5
