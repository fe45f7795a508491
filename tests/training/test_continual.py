"""Continual mode (training/continual.py): rehearsal selection on real Parquet-shaped frames, validation of the
previous model directory, and real TRL training from a previous fine-tune through `python -m training`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from assets.common.models.integrity import model_content_hash
from tests.training_worker import conversations
from training.__main__ import main as cli
from training.continual import (
    ContinualConfig,
    ContinualError,
    load_previous_model,
    rehearsal_size,
    select_rehearsal,
    starting_point,
)
from training.dataset import REHEARSAL_SPLIT, content_conversation_ids

SMALL_RUN = ["--set", "max_steps=2", "--set", "per_device_train_batch_size=4", "--set", "max_length=256",
             "--set", "logging_steps=1", "--set", "early_stopping_patience=0"]


def previous_rows(n_train: int = 40, n_validation: int = 5, n_rehearsal: int = 5) -> pl.DataFrame:
    """A previous model's train_rows.parquet: train, validation and (from an earlier round) rehearsal rows."""
    splits = ["train"] * n_train + ["validation"] * n_validation + [REHEARSAL_SPLIT] * n_rehearsal
    messages = conversations(len(splits), seed=7)
    return pl.DataFrame({
        "conversation_id": [f"00000-{i:05d}" for i in range(len(splits))],
        "shard": [0] * len(splits),
        "row_index": list(range(len(splits))),
        "task": ["math" if i % 2 else "qa" for i in range(len(splits))],
        "split": splits,
        "messages": messages,
    })


def ids(frame: pl.DataFrame) -> list[str]:
    return frame["conversation_id"].to_list()


# --- rehearsal selection ---------------------------------------------------------------------------------------


def test_rehearsal_is_deterministic_seeded_and_independent_of_row_order():
    rows = previous_rows()
    first = select_rehearsal(rows, [], new_train_rows=40, fraction=0.25, seed=3)
    again = select_rehearsal(rows.reverse(), [], new_train_rows=40, fraction=0.25, seed=3)
    other_seed = select_rehearsal(rows, [], new_train_rows=40, fraction=0.25, seed=4)
    assert first.rows.equals(again.rows)
    assert ids(first.rows) != ids(other_seed.rows)
    assert first.rows.height == other_seed.rows.height == 10
    larger = select_rehearsal(rows, [], new_train_rows=40, fraction=0.5, seed=3)
    assert set(ids(first.rows)) < set(ids(larger.rows))  # a larger fraction adds rows, never swaps them


def test_rehearsal_excludes_conversations_in_the_new_data_and_never_takes_validation_rows():
    rows = previous_rows()
    in_new_data = ids(rows.filter(pl.col("split") == "train"))[:30]  # e.g. rows the new mixture still has
    result = select_rehearsal(rows, in_new_data, new_train_rows=100, fraction=1.0, seed=0)
    trained = rows.filter(pl.col("split") != "validation")
    assert set(ids(result.rows)) == set(ids(trained)) - set(in_new_data)  # capped at all 15 that are left
    assert result.stats == {"rows": 15, "fraction": 1.0, "seed": 0, "new_train_rows": 100, "requested": 100,
                            "previous_trained_rows": 45, "excluded_in_new_data": 30, "available": 15}


def test_rehearsal_rows_keep_their_provenance_and_messages():
    rows = previous_rows()
    result = select_rehearsal(rows, [], new_train_rows=40, fraction=0.5, seed=0)
    assert result.rows["split"].unique().to_list() == [REHEARSAL_SPLIT]
    original = rows.drop("split").join(result.rows.drop("split"), on="conversation_id", how="inner", suffix="_r")
    assert original.height == result.rows.height
    for column in ("shard", "row_index", "task", "messages"):
        assert (original[column] == original[f"{column}_r"]).all(), column


def test_rehearsal_never_takes_rows_the_previous_model_dropped():
    rows = previous_rows(n_train=10, n_validation=0, n_rehearsal=0)
    status = ["dropped" if i % 2 else "trained" for i in range(rows.height)]
    result = select_rehearsal(rows.with_columns(status=pl.Series(status)), [], new_train_rows=100, fraction=1.0,
                              seed=0)
    assert ids(result.rows) == ids(rows)[::2] and result.stats["previous_trained_rows"] == 5
    assert "status" not in result.rows.columns  # what becomes of them is this run's to say


def test_rehearsal_takes_each_conversation_once():
    rows = previous_rows(n_train=10, n_validation=0, n_rehearsal=0)
    upsampled = pl.concat([rows, rows])  # a mixture with allow_upsampling repeats rows
    result = select_rehearsal(upsampled, [], new_train_rows=100, fraction=1.0, seed=0)
    assert result.rows.height == 10 and result.rows["conversation_id"].n_unique() == 10


@pytest.mark.parametrize(("fraction", "new_train_rows", "expected"), [
    (0.25, 40, 10),
    (0.5, 3, 2),  # 1.5 rounds half up
    (0.01, 10, 1),  # at least one row when rehearsal is asked for
    (2.0, 10, 20),  # the ratio is relative to the new data and may exceed 1
    (0.0, 10, 0),
])
def test_rehearsal_size_is_the_fraction_of_the_new_training_rows(fraction, new_train_rows, expected):
    assert rehearsal_size(fraction, new_train_rows) == expected


def test_rehearsal_is_capped_at_what_exists():
    result = select_rehearsal(previous_rows(n_train=8, n_validation=2, n_rehearsal=0), [], new_train_rows=40,
                              fraction=1.0, seed=0)
    assert (result.stats["requested"], result.stats["available"], result.rows.height) == (40, 8, 8)


# --- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"init_from": "previous"}, "continual mode needs rehearsal"),
    ({"init_from": "previous", "rehearsal_fraction": 0.0}, "continual mode needs rehearsal"),
    ({"init_from": "base", "rehearsal_fraction": 0.2}, "only applies in continual mode"),
    ({"init_from": "previous", "rehearsal_fraction": -0.1}, "expected a number >= 0"),
    ({"init_from": "latest", "rehearsal_fraction": 0.1}, "expected 'base'"),
])
def test_invalid_continual_configs_are_rejected(fields, message):
    with pytest.raises(ContinualError, match=message):
        ContinualConfig(**fields)


def test_asset_config_defaults_to_base_and_rejects_continual_without_rehearsal():
    from assets.sft.assets import SFTModelConfig

    default = SFTModelConfig()
    assert default.to_continual() == ContinualConfig()  # from the base model, no rehearsal
    assert "init_from" not in default.to_core().to_dict()
    with pytest.raises(ContinualError, match="continual mode needs rehearsal"):
        SFTModelConfig(init_from="previous").to_continual()


# --- real training through `python -m training` ----------------------------------------------------------------


def write_data(path: Path, chats: list, validation: int = 4) -> Path:
    splits = ["train"] * (len(chats) - validation) + ["validation"] * validation
    pl.DataFrame({"messages": chats, "split": splits}).write_parquet(path)
    return path


FIRST_CHATS = conversations(24, seed=11)
SECOND_CHATS = FIRST_CHATS[:8] + conversations(16, seed=12)  # 8 conversations of round 1 come back in round 2


@pytest.fixture(scope="module")
def first_model(tiny_model_dir, tmp_path_factory):
    """Round 1: trained from the base model by the CLI."""
    root = tmp_path_factory.mktemp("continual")
    data = write_data(root / "round-1.parquet", FIRST_CHATS)
    assert cli(["--model", str(tiny_model_dir), "--data", str(data), "--output", str(root / "round-1"),
                *SMALL_RUN]) == 0
    return root / "round-1"


def test_a_base_run_records_its_start_and_keeps_its_rows_with_messages(first_model, tiny_model_dir):
    lineage = json.loads((first_model / "lineage.json").read_text())
    assert lineage["retrained_from"] == "base_model"
    assert lineage["base_model"]["content_hash"] == model_content_hash(tiny_model_dir)
    assert lineage["training"]["initial_weights"] == str(tiny_model_dir)
    rows = pl.read_parquet(first_model / "train_rows.parquet")
    assert rows["messages"].to_list() == FIRST_CHATS
    assert rows["conversation_id"].to_list() == content_conversation_ids(FIRST_CHATS)
    assert "Trained from the base model" in (first_model / "README.md").read_text()


def break_lineage(model: Path) -> None:
    (model / "lineage.json").unlink()


def break_base_hash(model: Path) -> None:
    lineage = json.loads((model / "lineage.json").read_text())
    lineage["base_model"]["content_hash"] = "0" * 64
    (model / "lineage.json").write_text(json.dumps(lineage))


def break_rows(model: Path) -> None:
    (model / "train_rows.parquet").unlink()


def break_messages(model: Path) -> None:
    path = model / "train_rows.parquet"
    pl.read_parquet(path).drop("messages").write_parquet(path)


@pytest.mark.parametrize(("damage", "message"), [
    (break_lineage, r"round-1/lineage\.json: missing"),
    (break_base_hash, r"lineage\.json: base_model\.content_hash is 0{64}, but the current base model's is"),
    (break_rows, r"train_rows\.parquet: missing"),
    (break_messages, r"train_rows\.parquet: no column\(s\) \['messages'\]"),
])
def test_an_unusable_previous_model_is_rejected(first_model, tiny_model_dir, tmp_path, damage, message):
    model = tmp_path / "round-1"
    shutil.copytree(first_model, model)
    damage(model)
    with pytest.raises(ContinualError, match=message):
        load_previous_model(model, model_content_hash(tiny_model_dir))


def test_a_previous_model_whose_chat_template_differs_from_the_base_is_refused(first_model, tiny_model_dir,
                                                                              tmp_path):
    """Continual training starts from the previous model only if it serves the base model's template byte for byte
    (the run's own start, `starting_point`, reads the base's template)."""
    model = tmp_path / "round-1"
    shutil.copytree(first_model, model)
    jinja = model / "chat_template.jinja"
    jinja.write_text(jinja.read_text(encoding="utf-8").replace("helpful AI", "helpful  AI"), encoding="utf-8")
    at = jinja.read_text(encoding="utf-8").index("helpful  AI") + len("helpful ")
    with pytest.raises(ContinualError, match=rf"round-1: its chat template \(chat_template.jinja\) differs from the "
                                             rf"base model's, first at character {at}: ' AI"):
        starting_point(ContinualConfig(init_from="previous", rehearsal_fraction=0.5), tiny_model_dir,
                       model_content_hash(tiny_model_dir), model, [], 10)
    jinja.write_text((first_model / "chat_template.jinja").read_text(encoding="utf-8"), encoding="utf-8")
    start = starting_point(ContinualConfig(init_from="previous", rehearsal_fraction=0.5), tiny_model_dir,
                           model_content_hash(tiny_model_dir), model, [], 10)
    assert start.model_path == model  # the same directory with the base's template is accepted


def test_the_cli_rejects_continual_mode_without_rehearsal(first_model, tiny_model_dir, tmp_path):
    data = write_data(tmp_path / "round-2.parquet", SECOND_CHATS)
    with pytest.raises(SystemExit, match="continual mode needs rehearsal"):
        cli(["--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "out"),
             "--init-from", "previous", "--previous-model", str(first_model)])
    assert not (tmp_path / "out").exists()


def test_continual_training_starts_from_the_previous_weights_with_rehearsal(first_model, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = write_data(tmp_path / "round-2.parquet", SECOND_CHATS)
    out = tmp_path / "round-2"
    # learning rate 0: LoRA's B starts at zero, so the merged model is exactly the weights training started from
    assert cli(["--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), *SMALL_RUN,
                "--set", "learning_rate=0.0", "--init-from", "previous", "--previous-model", str(first_model),
                "--rehearsal-fraction", "0.5"]) == 0
    weights, previous, base = (load_file(p / "model.safetensors") for p in (out, first_model, tiny_model_dir))
    assert all((weights[name] == previous[name]).all() for name in previous)
    assert any((previous[name] != base[name]).any() for name in base)  # round 1 did move the weights

    lineage = json.loads((out / "lineage.json").read_text())
    start = lineage["retrained_from"]
    assert start["mode"] == "continual" and start["previous_model_dir"] == str(first_model)
    assert start["previous_model_content_hash"] == model_content_hash(first_model)
    assert start["previous_lineage_path"] == str(first_model / "lineage.json")
    assert start["rehearsal"]["seed"] == 0 and start["rehearsal"]["fraction"] == 0.5
    assert lineage["base_model"] == {"path": str(tiny_model_dir), "content_hash": model_content_hash(tiny_model_dir)}
    assert lineage["training"]["initial_weights"] == str(first_model)

    rows = pl.read_parquet(out / "train_rows.parquet")
    rehearsal = rows.filter(pl.col("split") == REHEARSAL_SPLIT)
    new_train = rows.filter(pl.col("split") == "train").height  # 20
    assert rehearsal.height == start["rehearsal"]["rows"] == 10  # round(0.5 * 20); 12 left after the exclusion
    assert start["rehearsal"]["excluded_in_new_data"] == 8
    assert not set(ids(rehearsal)) & set(content_conversation_ids(SECOND_CHATS))
    assert set(ids(rehearsal)) <= set(content_conversation_ids(FIRST_CHATS[:20]))  # round 1's training rows
    assert lineage["training"]["examples"]["train"] == new_train + rehearsal.height
    assert "Continual fine-tune: started from the previous model" in (out / "README.md").read_text()
