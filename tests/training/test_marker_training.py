"""A base model whose turn markers are new tokens (the tiny ChatML model prepared with the gemma template): the
trainer gives their rows a deliberate start, trains them besides LoRA (at their own learning rate when asked), and the
lineage and model card say so. Real TRL training on the tiny model."""

import json

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from assets.base_model.core import prepare_student
from assets.common.models.directories import prepare_local
from assets.common.models.templates import read_chat_markers
from training.config import TrainConfig
from training.dataset import conversation_rows
from training.trainer import train

CONVERSATIONS = [[{"role": "user", "content": f"Say the number {i}."},
                  {"role": "assistant", "content": f"The number is {i}."}] for i in range(12)]


@pytest.fixture(scope="module")
def student(tiny_model_dir, tmp_path_factory):
    return prepare_student(prepare_local(tiny_model_dir), "gemma", tmp_path_factory.mktemp("students")).model.path


def embedding_rows(model_dir, ids):
    weights = load_file(str(next(model_dir.glob("*.safetensors"))))
    name = next(k for k in weights if k.endswith("embed_tokens.weight"))
    return weights[name][ids]


@pytest.mark.parametrize("marker_lr", [None, 5e-2])
def test_new_marker_rows_start_deliberately_and_are_trained(student, tmp_path, marker_lr):
    record = read_chat_markers(student)
    ids = record.rows_to_initialise
    assert record.end_of_turn_id in ids and len(ids) == 2
    rows = conversation_rows(CONVERSATIONS[:10], CONVERSATIONS[10:])
    config = TrainConfig(max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, eval_steps=2,
                         max_length=128, marker_learning_rate=marker_lr)
    result = train(student, rows, tmp_path / "out", config, lineage={}, log=lambda _: None)
    lineage = json.loads(result.lineage_path.read_text())
    report = lineage["training"]["marker_init"]
    assert report["method"] == "text_end"
    sources = {r["id"]: r["source"] for r in report["rows"]}
    assert sources[record.end_of_turn_id].startswith("text_end:") and set(sources) == set(ids)
    before, after = embedding_rows(student, ids), embedding_rows(result.model_dir, ids)
    assert not torch.allclose(before, after)  # initialised and trained, merged into the saved embeddings
    others = [i for i in range(8, 40) if i not in ids]
    assert torch.equal(embedding_rows(student, others), embedding_rows(result.model_dir, others))
    assert "chat-marker rows the base model never trained" in (result.model_dir / "README.md").read_text()
    assert pl.read_parquet(result.train_rows_path).height == 12
