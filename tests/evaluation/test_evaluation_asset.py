"""`assistant_evaluation` through Dagster on the tiny model: the real vLLM engine (one start per model), the real
IFEval verifiers, and its blocking checks really failing, after which `promoted_model` refuses the candidate.

The candidate is a stand-in asset keyed `sft_model` whose `model_dir` is a copy of the tiny model (training is
exercised elsewhere). Greedy, the tiny model ends every answer at once (its end-of-turn token is by far the likeliest
first token), so the base's answers are empty and all stop; the "never stops" copy has that token's logit pushed down
until it is never chosen, so every answer runs to max_tokens."""

import json
import math
import shutil

import dagster as dg
import polars as pl
import pytest

from assets.common.models.integrity import model_content_hash
from assets.common.orchestration.resources import (
    BASE_MODEL,
    CURRENT_MODEL,
    MODEL_MANIFEST,
    PROMOTED_MODEL,
    SFT_MIXTURE,
    DataStorage,
    VLLMEngine,
)
from assets.evaluation.answering import answers_of
from assets.evaluation.assets import assistant_evaluation
from assets.evaluation.prompts import load_ifeval_items
from assets.evaluation.report import evaluation_report
from assets.evaluation.stopping import FIXED_PROMPTS
from assets.promotion.assets import promoted_model
from pipelines.report import latest_evaluation
from tests.stand_ins import stand_in_model

pytestmark = pytest.mark.vllm

SMALL = {"num_prompts": 4, "short_answers_only": True, "max_tokens": 16, "stop_check_max_tokens": 16,
         "bootstrap_resamples": 200, "end_of_turn_conversations": 3, "side_by_side": 2}
CONVERSATIONS = [
    [{"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": "An ordered sequence."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
     {"role": "assistant", "content": "Hi."}],
    [{"role": "user", "content": "Training row."}, {"role": "assistant", "content": "Not used for P(end-of-turn)."}],
]


@dg.asset_check(asset=stand_in_model, blocking=True)
def general_text_forgetting() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


def candidate_copy(tiny_model_dir, out_dir, never_stops: bool = False):
    """A copy of the tiny model with a lineage.json; ``never_stops``: its end-of-turn token is never generated."""
    shutil.copytree(tiny_model_dir, out_dir)
    (out_dir / "lineage.json").write_text(json.dumps({"base_model": {
        "path": str(tiny_model_dir), "content_hash": model_content_hash(tiny_model_dir)}}))
    if never_stops:
        from safetensors.torch import load_file, save_file
        from transformers import AutoTokenizer

        eos = AutoTokenizer.from_pretrained(out_dir).eos_token_id
        weights = load_file(out_dir / "model.safetensors")
        weights["lm_head.weight"][eos, 0] = -2.0  # as the other special tokens (tests/tiny_model.py)
        save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    storage = DataStorage(root=str(tmp_path / "data"))
    storage.write_json(BASE_MODEL, MODEL_MANIFEST, {"path": str(tiny_model_dir),
                                                    "content_hash": model_content_hash(tiny_model_dir)})
    storage.write_table(SFT_MIXTURE, pl.DataFrame({"split": ["validation"] * 3 + ["train"],
                                                   "messages": CONVERSATIONS}))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield storage, instance


def materialize(instance, storage, model_dir, evaluation: dict, selection=None):
    return dg.materialize(
        [stand_in_model, general_text_forgetting, assistant_evaluation, promoted_model], instance=instance,
        resources={"storage": storage, "engine": VLLMEngine(max_model_len=1024, cpu_kv_cache_gb=1)},
        run_config=None if selection else {"ops": {"sft_model": {"config": {"model_dir": str(model_dir)}},
                                                   "assistant_evaluation": {"config": evaluation}}},
        selection=selection, raise_on_error=False)


def refusal(instance, storage) -> str:
    alone = materialize(instance, storage, None, {}, selection=[promoted_model.key])
    assert not alone.success
    assert not storage.has(PROMOTED_MODEL, CURRENT_MODEL)
    return str(next(e for e in alone.all_events if e.is_step_failure).event_specific_data.error)


def recomputed(storage, report: dict) -> dict:
    """The report the core computes from the stored answers (the real verifiers run again)."""
    answers = pl.read_parquet(report["answers"]["path"])
    keys = set(report["ifeval"]["prompts"])
    items = [item for item in load_ifeval_items() if item.key in keys]
    config = report["config"]
    return evaluation_report(items, {m: answers_of(answers, m, "ifeval") for m in report["models"]}, base="base",
                             tuned="tuned", n_resamples=config["bootstrap_resamples"], seed=config["seed"]).data


def checks_of(result) -> dict:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def test_not_worse_than_base_really_fails_and_promotion_refuses(setup, tiny_model_dir, tmp_path):
    storage, instance = setup
    tuned = candidate_copy(tiny_model_dir, tmp_path / "tuned")
    result = materialize(instance, storage, tuned, {**SMALL, "tolerance_points": -100.0})  # demands +100 points
    assert not result.success
    checks = checks_of(result)
    assert checks["answers_stop_on_eos"].passed  # the tiny model ends its turns
    worse = checks["not_worse_than_base"]
    assert not worse.passed and worse.metadata["tolerance_points"].value == -100.0
    assert "required >= +100.0" in worse.description and "95% interval" in worse.description

    metadata = instance.get_latest_materialization_event(assistant_evaluation.key).asset_materialization.metadata
    report = storage.read_json(assistant_evaluation.key, "report")  # the failed model's report stays
    assert metadata["report"].value == str(storage.table_path(assistant_evaluation.key, "report"))
    assert sorted(report["models"]) == ["base", "tuned"] and metadata["prompts"].value == 4
    assert "no teacher_model manifest in storage" in report["skipped_models"]["teacher"]
    expected = recomputed(storage, report)
    for model in ("base", "tuned"):
        for name in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose", "turn_completion",
                     "per_instruction", "prompts", "instructions"):
            assert report["ifeval"]["models"][model][name] == expected["models"][model][name], (model, name)
    assert report["ifeval"]["comparison"] == expected["comparison"]
    assert report["ifeval"]["models"]["tuned"]["turn_completion"]["rate"] == 1.0  # each on its end-of-turn token
    assert report["models"]["base"]["current_base_model"] == "same"
    assert metadata["prompt_strict_difference"].value == expected["comparison"]["prompt_strict"]["difference"]
    assert "| base |" in metadata["summary"].value and "| tuned |" in metadata["summary"].value

    eot = report["end_of_turn_probability"]
    assert eot["conversations"] == 3  # validation rows only
    assert 0 < eot["models"]["base"]["mean"] < 1
    assert eot["models"]["tuned"]["mean"] == pytest.approx(eot["models"]["base"]["mean"])  # same weights
    after_init = eot["models"]["after_marker_initialisation"]  # the tiny base has no never-trained markers
    assert after_init["mean"] is None and after_init["reason"].startswith("not measured: training initialised no")

    started = {e.step_key for e in result.all_events if e.is_step_start}
    assert "promoted_model" not in started  # the blocking check stopped it in the run
    assert "refused: assistant_evaluation:not_worse_than_base (failed)" in refusal(instance, storage)

    printed = "\n".join(latest_evaluation(instance))  # what `python -m pipelines.report` prints after the model
    assert "4 IFEval prompts, seed 0" in printed and metadata["summary"].value in printed
    assert "checks: answers_stop_on_eos passed, not_worse_than_base FAILED" in printed


def test_a_model_that_never_stops_fails_the_stop_check(setup, tiny_model_dir, tmp_path):
    storage, instance = setup
    storage.write_json("teacher_model", MODEL_MANIFEST, {"path": str(tiny_model_dir), "content_hash": "teacher"})
    tuned = candidate_copy(tiny_model_dir, tmp_path / "tuned", never_stops=True)
    result = materialize(instance, storage, tuned, SMALL)
    assert not result.success
    checks = checks_of(result)
    stops = checks["answers_stop_on_eos"]
    assert not stops.passed
    assert stops.metadata["runaway_prompts"].value == list(FIXED_PROMPTS)  # the base stops on every one
    assert stops.metadata["stopped_on_eos"].value == f"0/{len(FIXED_PROMPTS)}"
    assert checks["not_worse_than_base"].passed  # random words vs empty answers: not worse

    report = storage.read_json(assistant_evaluation.key, "report")
    assert sorted(report["models"]) == ["base", "teacher", "tuned"] and report["skipped_models"] == {}
    answers = pl.read_parquet(report["answers"]["path"])
    tuned_answers = answers.filter(pl.col("model") == "tuned")
    assert tuned_answers["finish_reason"].unique().to_list() == ["length"]
    assert (tuned_answers["completion_tokens"] == 16).all() and (tuned_answers["response"].str.len_chars() > 0).all()
    assert (answers.filter(pl.col("model") != "tuned")["finish_reason"] == "stop").all()
    assert report["stop_check"]["ifeval_new_runaways"] == report["ifeval"]["prompts"]
    expected = recomputed(storage, report)  # scored by the real verifiers on non-empty answers
    for model in ("base", "tuned", "teacher"):
        for name in ("prompt_strict", "instruction_strict", "instruction_loose", "turn_completion", "per_instruction"):
            assert report["ifeval"]["models"][model][name] == expected["models"][model][name], (model, name)
    assert report["ifeval"]["models"]["tuned"]["turn_completion"]["rate"] == 0.0
    eot = report["end_of_turn_probability"]["models"]
    assert eot["tuned"]["mean"] < 1e-3 < eot["base"]["mean"]  # P(end-of-turn) shows the model cannot stop
    metadata = instance.get_latest_materialization_event(assistant_evaluation.key).asset_materialization.metadata
    engine = metadata["engine"].value
    assert engine.count("vllm") == 3 and "tok_per_s" in engine  # one engine run per model
    assert math.isfinite(metadata["engine_seconds"].value)
    assert "refused: assistant_evaluation:answers_stop_on_eos (failed)" in refusal(instance, storage)
