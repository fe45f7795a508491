"""`promoted_model` through a real Dagster instance: it promotes only a model whose checks ran on it and passed.

The model is a stand-in asset keyed `sft_model` (training is exercised elsewhere); its checks are real asset checks
whose result the test controls, evaluated and recorded by Dagster."""


import json

import dagster as dg
import pytest

from assets.common.resources import CURRENT_MODEL, PROMOTED_MODEL, DataStorage
from assets.promotion.assets import promoted_model


class Verdict(dg.Config):
    passed: bool = True


def stand_in_model(model_dir):
    @dg.asset(name="sft_model")
    def sft_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"model_dir": dg.MetadataValue.path(str(model_dir)),
                                              "content_hash": "c0ffee"})

    @dg.asset_check(asset=sft_model, blocking=True)
    def answers_stop_on_eos(config: Verdict) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=config.passed)

    @dg.asset_check(asset=sft_model, blocking=True)
    def general_text_forgetting() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.asset_check(asset=sft_model, blocking=True)
    def served_format_matches_training() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    return sft_model, answers_stop_on_eos, general_text_forgetting, served_format_matches_training


@pytest.fixture
def setup(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "lineage.json").write_text(json.dumps({"base_model": {"path": "/base", "content_hash": "b"}}))
    storage = DataStorage(root=str(tmp_path / "data"))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield storage, instance, [*stand_in_model(model_dir), promoted_model], model_dir


def run(instance, storage, assets, passed=True, selection=None):
    return dg.materialize(assets, instance=instance, resources={"storage": storage}, selection=selection,
                          run_config={"ops": {"sft_model_answers_stop_on_eos": {"config": {"passed": passed}}}}
                          if selection is None else None, raise_on_error=False)


def test_a_model_whose_checks_passed_becomes_current(setup):
    storage, instance, assets, model_dir = setup
    result = run(instance, storage, assets, passed=True)
    assert result.success
    current = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)
    assert current["model_dir"] == str(model_dir) and current["content_hash"] == "c0ffee"
    assert [(c["check"], c["status"]) for c in current["checks"]] == [
        ("answers_stop_on_eos", "passed"), ("general_text_forgetting", "passed"),
        ("served_format_matches_training", "passed")]


def test_a_failing_check_blocks_promotion_in_the_run_and_alone(setup):
    storage, instance, assets, _ = setup
    result = run(instance, storage, assets, passed=False)
    started = {e.step_key for e in result.all_events if e.is_step_start}
    assert not result.success and "sft_model" in started
    assert "promoted_model" not in started  # the blocking check stopped it in the run
    alone = run(instance, storage, assets, selection=[promoted_model.key])  # and asked for on its own
    assert not alone.success
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert "not promoted: refused: sft_model:answers_stop_on_eos (failed)" in str(failure.event_specific_data.error)
    assert not storage.has(PROMOTED_MODEL, CURRENT_MODEL)


def test_a_model_rematerialized_without_its_checks_is_refused(setup):
    storage, instance, assets, _ = setup
    assert run(instance, storage, assets, passed=True).success
    first = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)
    unchecked = dg.AssetSelection.assets("sft_model").without_checks()
    assert run(instance, storage, assets, selection=unchecked).success  # a new model, its checks not run
    alone = run(instance, storage, assets, selection=[promoted_model.key])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert "ran on another materialization" in str(failure.event_specific_data.error)
    assert storage.read_json(PROMOTED_MODEL, CURRENT_MODEL) == first  # the previous current model stays current
