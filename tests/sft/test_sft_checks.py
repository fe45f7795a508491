"""`sft_model`'s blocking checks shown failing, each run by Dagster against a real instance: a tiny model trained
for real (TRL, one step), recorded as the latest `sft_model` materialization, then only the check executed. The
template half of `served_format_matches_training` fails on a base whose template differs by one character;
`general_text_forgetting` fails on a model whose perplexity clearly rises (its output layer doubled)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets.common.models.chat_template import read_chat_template
from assets.common.orchestration.resources import DataStorage
from assets.sft.assets import general_text_forgetting, served_format_matches_training, sft_model
from assets.sft.checks import MAX_PERPLEXITY_INCREASE, general_text_passages
from tests.training_worker import conversations
from training.config import TrainConfig
from training.dataset import conversation_rows
from training.trainer import train

PASSAGES = 12  # of the general-text set: enough to measure, quick on the tiny model


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(model directory, its base): one real training step from a copy of the tiny model."""
    root = tmp_path_factory.mktemp("sft_checks")
    base = root / "base"
    shutil.copytree(tiny_model_dir, base)
    chats = conversations(12, seed=3)
    config = TrainConfig(max_steps=1, per_device_train_batch_size=4, max_length=256, logging_steps=1,
                         early_stopping_patience=0)
    result = train(base, conversation_rows(chats[:9], chats[9:]), root / "model", config, log=lambda _: None)
    return result.model_dir, base


def copy_with_base(trained, tmp_path: Path, base: Path | None = None) -> Path:
    """A copy of the trained model whose lineage names ``base`` (default: its own base)."""
    model_dir, own_base = trained
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    lineage = json.loads((model / "lineage.json").read_text())
    lineage["base_model"]["path"] = str(base or own_base)
    (model / "lineage.json").write_text(json.dumps(lineage))
    return model


def run_check(check, model: Path, tmp_path: Path) -> dg.AssetCheckEvaluation:
    """``model`` recorded as the latest `sft_model` materialization, then ``check`` alone, by Dagster."""
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "sft_model", metadata={"model_dir": dg.MetadataValue.path(str(model))}))
        result = dg.materialize([sft_model, check], selection=dg.AssetSelection.checks(check), instance=instance,
                                resources={"storage": DataStorage(root=str(tmp_path / "data"))},
                                raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


@pytest.fixture(autouse=True)
def few_passages(monkeypatch):
    """The forgetting check on the first PASSAGES general-text passages (the same real texts, fewer of them)."""
    import assets.sft.checks as checks

    passages = general_text_passages()[:PASSAGES]
    monkeypatch.setattr(checks, "general_text_passages", lambda: passages)


def test_served_format_passes_on_the_trained_model(trained, tmp_path):
    check = run_check(served_format_matches_training, copy_with_base(trained, tmp_path), tmp_path)
    assert check.passed and check.metadata["template_identical_to_base"].value is True
    assert check.metadata["rows_mismatched"].value == 0 and check.metadata["rows_retokenized"].value == 12


def test_served_format_fails_when_the_template_differs_from_the_base(trained, tmp_path):
    """The template half alone: every row still re-tokenizes as trained (the model directory is unchanged), but the
    base it names has a template one space longer, so the model would not be served in the base's format."""
    _, own_base = trained
    other_base = tmp_path / "other-base"
    shutil.copytree(own_base, other_base)
    template = read_chat_template(own_base)
    changed = template.replace("helpful AI", "helpful  AI")
    (other_base / "chat_template.jinja").write_text(changed, encoding="utf-8")
    model = copy_with_base(trained, tmp_path, other_base)
    check = run_check(served_format_matches_training, model, tmp_path)
    assert not check.passed
    assert check.metadata["template_identical_to_base"].value is False
    assert check.metadata["rows_mismatched"].value == 0  # the token half passes: only the template half failed
    at = template.index("helpful AI") + len("helpful ")
    assert check.description.startswith(f"{model}: its chat template differs from the base model's ({other_base}), "
                                        f"first at character {at}: 'AI assistant")
    assert "Retrain sft_model" in check.description


def test_general_text_forgetting_passes_on_the_trained_model(trained, tmp_path):
    check = run_check(general_text_forgetting, copy_with_base(trained, tmp_path), tmp_path)
    assert check.passed
    assert abs(check.metadata["relative_increase"].value) < 0.05  # one small step barely moves it
    assert check.metadata["passages"].value == PASSAGES


def test_general_text_forgetting_fails_when_perplexity_clearly_rises(trained, tmp_path):
    """The trained model with its output layer doubled: the same ranking of tokens, more confident, so real text
    gets less probability and perplexity rises well past the +25% allowed (about +60%: a rise that a units slip
    between fractions and percent, allowing +2500%, would let through)."""
    from safetensors.torch import load_file, save_file

    model = copy_with_base(trained, tmp_path)
    weights = load_file(model / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 2
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    check = run_check(general_text_forgetting, model, tmp_path)
    assert not check.passed
    increase = check.metadata["relative_increase"].value
    assert 2 * MAX_PERPLEXITY_INCREASE < increase < 5
    assert check.metadata["perplexity_tuned"].value > check.metadata["perplexity_base"].value
    assert f"{increase:+.1%}, allowed at most +25% on {PASSAGES} passages" in check.description
    assert "the fine-tune forgot general language" in check.description
