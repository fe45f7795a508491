"""The user's profile (SFT_PROFILE) is the config of every kind of run: the assets' config defaults (what a run with
no run config uses, e.g. one the automation sensor launches, and what the UI's launchpad shows) and the resources;
explicit run config still wins for one run. Mistakes name the profile and the field."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from assets.common.orchestration.resources import EVAL_SETS, DataStorage
from pipelines.definitions import build_definitions
from pipelines.profiles import PROFILE_ENV, PROFILES_DIR, active_profile, load_profile
from tests.automation_runs import write_profile


def test_the_environment_variable_names_a_profile_or_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    assert active_profile() == (None, {})  # unset: the code's defaults
    monkeypatch.setenv(PROFILE_ENV, "demo")
    assert active_profile() == (str(PROFILES_DIR / "demo.yaml"), load_profile("demo"))
    path = write_profile(tmp_path / "mine.yaml", {"ops": {"sft_model": {"config": {"model_name": "mine"}}}})
    monkeypatch.setenv(PROFILE_ENV, str(path))
    assert active_profile() == (str(path), {"ops": {"sft_model": {"config": {"model_name": "mine"}}}})


def config_default(defs: dg.Definitions, asset: str) -> dict:
    return defs.resolve_assets_def(asset).op.config_schema.as_field().default_value


def test_profile_values_are_the_config_defaults_and_resources():
    demo = load_profile("demo")
    defs = build_definitions(demo, "demo")
    magpie = config_default(defs, "magpie_conversations")
    assert magpie["num_conversations"] == 96 and magpie["batch_size"] == 32
    assert magpie["response"] == {"temperature": 0.7, "min_p": 0.05, "max_tokens": 256, "repetition_penalty": 1.05,
                                  "top_p": 1.0, "top_k": 0}  # top_p, top_k: not in the profile, the code's defaults
    assert magpie["system_prompts"] == []  # fields the profile leaves out keep the code's defaults
    assert config_default(defs, "base_model")["chat_template"] == "gemma"
    assert defs.resources["engine"].max_model_len == 2048 and defs.resources["engine"].cpu_kv_cache_gb == 2
    code = build_definitions({}, "none")
    assert config_default(code, "magpie_conversations")["num_conversations"] == 1000  # unset: the code's defaults


def test_a_run_without_run_config_uses_the_profile_and_run_config_overrides_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SFT_DATA_ROOT", raising=False)
    profile = {"ops": {"eval_sets": {"config": {"benchmarks": ["humaneval"]}}},
               "resources": {"storage": {"config": {"root": str(tmp_path / "data")}}}}
    defs = build_definitions(profile, "test profile")
    job = defs.resolve_implicit_global_asset_job_def()
    storage = DataStorage(root=str(tmp_path / "data"))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert job.execute_in_process(asset_selection=[EVAL_SETS], instance=instance).success
        assert storage.read_table(EVAL_SETS)["benchmark"].unique().to_list() == ["humaneval"]
        override = {"ops": {"eval_sets": {"config": {"benchmarks": ["mt_bench"]}}}}
        assert job.execute_in_process(asset_selection=[EVAL_SETS], instance=instance, run_config=override).success
        assert storage.read_table(EVAL_SETS)["benchmark"].unique().to_list() == ["mt_bench"]
    assert isinstance(storage.read_table(EVAL_SETS), pl.DataFrame)


@pytest.mark.parametrize(("profile", "message"), [
    ({"ops": {"magpie": {"config": {}}}}, r"ops \['magpie'\] name no asset"),
    ({"ops": {"magpie_conversations": {"config": {"num_conversation": 5}}}},
     r"ops.magpie_conversations.config: unknown field\(s\) \['num_conversation'\]"),
    ({"ops": {"magpie_conversations": {"config": {"response": {"top_n": 5}}}}},
     r"ops.magpie_conversations.config.response: unknown field\(s\) \['top_n'\]"),
    ({"ops": {"promoted_model": {"config": {"x": 1}}}}, "asset 'promoted_model' takes no config"),
    ({"resources": {"gpu": {"config": {}}}}, r"resources \['gpu'\] are not resources"),
])
def test_profile_mistakes_name_the_field(profile, message):
    with pytest.raises(ValueError, match=message):
        build_definitions(profile, "my.yaml")


def test_external_inputs_are_the_profiles_paths():
    inputs = build_definitions(load_profile("gpu-example"), "gpu-example").resources["inputs"]
    assert inputs.teacher_model_path == "/models/Llama-3.1-8B-Instruct"
    assert inputs.base_model_path == "/models/Llama-3.1-8B" and inputs.user_eval_files == []
