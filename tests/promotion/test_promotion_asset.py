"""`promoted_model` through a real Dagster instance: it promotes only a model whose checks ran on it and passed.

The model and its evaluation are stand-in assets keyed `sft_model` and `assistant_evaluation` (training and the
evaluation are exercised elsewhere); their checks are real asset checks whose result the test controls, evaluated and
recorded by Dagster."""


import json

import dagster as dg
import pytest

from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import (
    CURRENT_MODEL,
    JUDGED_MODEL,
    PROMOTED_MODEL,
    SFT_MODEL,
    DataStorage,
    latest_materialization,
)
from assets.promotion.assets import promoted_model


class Verdict(dg.Config):
    passed: bool = True


def stand_in_model(model_dir):
    @dg.asset(name="sft_model")
    def sft_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"model_dir": dg.MetadataValue.path(str(model_dir)),
                                              "content_hash": model_content_hash(model_dir)})

    @dg.asset_check(asset=sft_model, blocking=True)
    def general_text_forgetting() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.asset_check(asset=sft_model, blocking=True)
    def served_format_matches_training() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.asset(name="assistant_evaluation", deps=[sft_model], check_specs=[
        dg.AssetCheckSpec("answers_stop_on_eos", asset="assistant_evaluation", blocking=True),
        dg.AssetCheckSpec("not_worse_than_base", asset="assistant_evaluation", blocking=True)])
    def assistant_evaluation(context: dg.AssetExecutionContext, config: Verdict) -> dg.MaterializeResult:
        judged = latest_materialization(context.instance, SFT_MODEL).storage_id
        return dg.MaterializeResult(metadata={JUDGED_MODEL: judged}, check_results=[
            dg.AssetCheckResult(check_name="answers_stop_on_eos", passed=config.passed),
            dg.AssetCheckResult(check_name="not_worse_than_base", passed=True)])

    return sft_model, general_text_forgetting, served_format_matches_training, assistant_evaluation


@pytest.fixture
def setup(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "lineage.json").write_text(json.dumps({"base_model": {"path": "/base", "content_hash": "b"}}))
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))  # a file the content hash covers
    storage = DataStorage(root=str(tmp_path / "data"))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield storage, instance, [*stand_in_model(model_dir), promoted_model], model_dir


def run(instance, storage, assets, passed=True, selection=None):
    return dg.materialize(assets, instance=instance, resources={"storage": storage}, selection=selection,
                          run_config={"ops": {"assistant_evaluation": {"config": {"passed": passed}}}}
                          if selection is None else None, raise_on_error=False)


def test_a_model_whose_checks_passed_becomes_current(setup):
    storage, instance, assets, model_dir = setup
    result = run(instance, storage, assets, passed=True)
    assert result.success
    current = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)
    assert current["model_dir"] == str(model_dir) and current["content_hash"] == model_content_hash(model_dir)
    assert [(c["asset"], c["check"], c["status"]) for c in current["checks"]] == [
        ("assistant_evaluation", "answers_stop_on_eos", "passed"),
        ("assistant_evaluation", "not_worse_than_base", "passed"),
        ("sft_model", "general_text_forgetting", "passed"),
        ("sft_model", "served_format_matches_training", "passed")]


def test_a_failing_check_blocks_promotion_in_the_run_and_alone(setup):
    storage, instance, assets, _ = setup
    result = run(instance, storage, assets, passed=False)
    started = {e.step_key for e in result.all_events if e.is_step_start}
    assert not result.success and {"sft_model", "assistant_evaluation"} <= started
    assert "promoted_model" not in started  # the blocking check stopped it in the run
    alone = run(instance, storage, assets, selection=[promoted_model.key])  # and asked for on its own
    assert not alone.success
    error = str(next(e for e in alone.all_events if e.is_step_failure).event_specific_data.error)
    assert "not promoted: refused: assistant_evaluation:answers_stop_on_eos (failed)" in error
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


def test_an_evaluation_of_an_earlier_model_does_not_promote_a_new_one(setup):
    storage, instance, assets, _ = setup
    assert run(instance, storage, assets, passed=True).success
    first = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)
    model_and_checks = dg.AssetSelection.assets("sft_model")  # a new model, its own checks run, not evaluated
    assert run(instance, storage, assets, selection=model_and_checks).success
    alone = run(instance, storage, assets, selection=[promoted_model.key])
    assert not alone.success
    error = str(next(e for e in alone.all_events if e.is_step_failure).event_specific_data.error)
    assert "assistant_evaluation:not_worse_than_base (ran on another materialization)" in error
    assert storage.read_json(PROMOTED_MODEL, CURRENT_MODEL) == first


def test_a_model_whose_directory_changed_after_its_checks_is_refused(setup):
    storage, instance, assets, model_dir = setup
    assert run(instance, storage, assets, passed=True).success
    first = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llamb"}))  # one byte changed
    alone = run(instance, storage, assets, selection=[promoted_model.key])  # its checks passed: only the bytes differ
    assert not alone.success
    error = str(next(e for e in alone.all_events if e.is_step_failure).event_specific_data.error)
    assert (f"{model_dir}: content hash {model_content_hash(model_dir)}, but the sft_model materialization of run "
            f"{first['dagster_run_id']} (metadata content_hash) records {first['content_hash']}") in error
    assert storage.read_json(PROMOTED_MODEL, CURRENT_MODEL) == first


def test_promoted_alone_counts_every_check_of_its_upstream_assets(setup):
    """Launched alone as the automation sensor does (a selection of the code location's job), promotion still sees
    the checks on its upstream assets besides `PROMOTION_CHECKS`: here a failing one."""
    storage, instance, assets, _ = setup

    @dg.asset_check(asset="assistant_evaluation", blocking=True)
    def answers_are_polite() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False)

    defs = dg.Definitions(assets=assets, asset_checks=[answers_are_polite], resources={"storage": storage})
    job = defs.resolve_implicit_global_asset_job_def()
    upstream = job.execute_in_process(instance=instance, asset_selection=[SFT_MODEL, dg.AssetKey(
        "assistant_evaluation")], raise_on_error=False)
    assert not upstream.success  # the extra check failed
    alone = job.execute_in_process(instance=instance, asset_selection=[PROMOTED_MODEL], raise_on_error=False)
    assert not alone.success
    error = str(next(e for e in alone.all_events if e.is_step_failure).event_specific_data.error)
    assert "refused: assistant_evaluation:answers_are_polite (failed)" in error
    assert not storage.has(PROMOTED_MODEL, CURRENT_MODEL)
