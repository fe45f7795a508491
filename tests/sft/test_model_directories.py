"""The promoted model's directory is never rewritten: `sft_model` materialized again with nothing changed, after a
training-code change (the directory key goes through the real key computation, with the training sources' hash
substituted) and with its write failing while it is published each leave it byte for byte as it was; and a
promoted directory whose bytes changed is refused by continual training, which re-hashes it against the pointer.
Real Dagster runs of `sft_model`, real TRL training of the tiny model for two steps."""

from __future__ import annotations

import os

import dagster as dg
import polars as pl
import pytest

from assets.common.data.storage import sha256_file
from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import (
    BASE_MODEL,
    CURRENT_MODEL,
    MODEL_MANIFEST,
    PROMOTED_MODEL,
    SFT_MIXTURE,
    DataStorage,
)
from assets.promotion.core import Decision, promotion_record
from assets.sft.assets import sft_model
from tests.asset_runs import conversation, failure_text, frame, materialization
from training import model_dir as model_dir_module

TINY = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 256, "early_stopping_patience": 0,
        "model_name": "tiny"}


def files(root) -> dict[str, str]:
    """Every file of a directory with its SHA-256 (lineage, rows and card too): what byte-identical compares."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_json(BASE_MODEL, MODEL_MANIFEST, {"path": str(tiny_model_dir),
                                                    "content_hash": model_content_hash(tiny_model_dir)})
    rows = [conversation(i, f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(24)]
    storage.write_table(SFT_MIXTURE, frame(rows).with_columns(
        split=pl.Series(["validation" if i % 6 == 0 else "train" for i in range(24)])))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield storage, instance


def train(storage, instance, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize([sft_model], instance=instance, resources={"storage": storage}, raise_on_error=False,
                          run_config={"ops": {"sft_model": {"config": {**TINY, **config}}}})


def promote(storage, model_dir) -> None:
    """What `promoted_model` writes once every check passed: the pointer naming the directory and its hash."""
    record = promotion_record(str(model_dir), model_content_hash(model_dir), "run", Decision(True, (), "test"))
    storage.write_json(PROMOTED_MODEL, CURRENT_MODEL, record)


def trained_dir(result) -> str:
    assert result.success, failure_text(result)
    return materialization(result, "sft_model")["model_dir"]


def test_the_promoted_directory_survives_a_rerun_a_code_change_and_a_failed_write(project, monkeypatch):
    from pathlib import Path

    storage, instance = project
    promoted = Path(trained_dir(train(storage, instance)))
    promote(storage, promoted)
    before = files(promoted)

    # nothing changed: the same key; the same model is trained and the existing directory kept as it is
    assert trained_dir(train(storage, instance)) == str(promoted)
    assert files(promoted) == before

    # the training code changed: its hash is part of the key, so the model goes to a new directory
    monkeypatch.setattr(model_dir_module, "training_sources_hash", lambda: "0" * 16)
    changed = Path(trained_dir(train(storage, instance)))
    assert changed != promoted and changed.parent == promoted.parent
    assert files(promoted) == before
    lineage = (changed / "lineage.json").read_text()
    assert '"sources": "0000000000000000"' in lineage  # the lineage records the code version the key covered

    # a write that fails while its directory is published (once for a new directory, once for the promoted one's)
    real_rename = os.rename

    def killed(src, dst):
        if Path(src).name.startswith(f".{promoted.name.rsplit('-', 1)[0]}"):
            raise dg.Failure("killed while publishing the model directory", allow_retries=False)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", killed)
    monkeypatch.setattr(model_dir_module, "training_sources_hash", lambda: "1" * 16)
    failed = train(storage, instance)
    assert not failed.success and "killed while publishing" in failure_text(failed)
    monkeypatch.undo()
    monkeypatch.setattr(os, "rename", killed)
    assert files(promoted) == before
    train(storage, instance)  # the promoted directory's own key: it exists, nothing is renamed over it
    assert files(promoted) == before
    left = sorted(p.name for p in promoted.parent.iterdir() if not p.name.endswith(".checkpoints"))
    assert left == sorted([promoted.name, changed.name])  # nothing partial (the failed run keeps its checkpoints)


def test_continual_training_refuses_a_promoted_directory_whose_bytes_changed(project):
    storage, instance = project
    promoted = trained_dir(train(storage, instance))
    promote(storage, promoted)
    expected = model_content_hash(promoted)
    weights = f"{promoted}/model.safetensors"
    data = bytearray(open(weights, "rb").read())
    data[-1] ^= 0x01  # one flipped bit in the weights
    open(weights, "wb").write(bytes(data))
    result = train(storage, instance, init_from="previous", rehearsal_fraction=0.25)
    assert not result.success
    text = failure_text(result)
    assert f"{promoted}: content hash {model_content_hash(promoted)}, but the promoted-model pointer" in text, text
    assert f"records {expected}" in text and "re-materialize sft_model" in text
    started = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert len(started) == 1  # refused at once: not retried
