"""The code location loads, the graph has the designed shape, and the shipped profiles are valid run config."""

import dagster as dg
import pytest

from assets.common.orchestration.resources import GPU_POOL
from pipelines.definitions import defs
from pipelines.profiles import PROFILES_DIR, load_profile

# The designed sequence (DEVELOPERS.md): each stage depends on the one before. Other assets may sit in between or
# beside (tests that list assets derive them from the Definitions).
PIPELINE = ["teacher_model", "magpie_conversations", "deduplicated_conversations", "decontaminated_conversations",
            "filtered_conversations", "sft_mixture", "sft_model", "assistant_evaluation", "promoted_model"]
# The student joins where its template matters: the leak filter (its markers) and training.
STUDENT_CONSUMERS = ["filtered_conversations", "sft_model"]


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {*PIPELINE, "base_model", "eval_sets"} <= keys


def test_assets_run_in_designed_sequence():
    graph = defs.resolve_asset_graph()
    for upstream, downstream in zip(PIPELINE, PIPELINE[1:], strict=False):
        ancestors = {k.to_user_string() for k in graph.upstream_key_iterator(dg.AssetKey(downstream))}
        assert upstream in ancestors, f"{downstream} should depend on {upstream}, has {ancestors}"
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("decontaminated_conversations")).parent_keys}
    assert "eval_sets" in parents


def test_the_teacher_writes_the_data_and_the_student_is_trained():
    graph = defs.resolve_asset_graph()

    def parents(key):
        return {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}

    assert parents("magpie_conversations") == {"teacher_model"}  # generation never reads the student
    for consumer in STUDENT_CONSUMERS:
        assert "base_model" in parents(consumer), consumer
    assert "teacher_model" in parents("filtered_conversations")  # the teacher's special tokens too


def test_training_is_gated_by_a_blocking_contamination_check():
    graph = defs.resolve_asset_graph()
    check_keys = graph.asset_check_keys
    names = {(k.asset_key.to_user_string(), k.name) for k in check_keys}
    assert ("decontaminated_conversations", "no_eval_overlap") in names
    check_def = next(c for c in defs.asset_checks if c.check_key.name == "no_eval_overlap")
    assert check_def.check_specs_by_output_name and all(s.blocking for s in check_def.check_specs)


TRAINS = {"sft_model"}  # the steps that train a model (the others that need a GPU start vLLM: the `engine` resource)
FORWARD_PASSES = {"instruction_difficulty"}  # the steps that run the student's forward passes (torch, no vLLM)


def test_exactly_the_steps_that_start_vllm_or_train_sit_in_the_gpu_pool():
    """Every step that starts a vLLM engine (it needs the `engine` resource), trains or runs the student's forward
    passes is in the `gpu` pool, whose limit is the deployment's GPUs; no other step is, so CPU stages never wait
    for a GPU slot."""
    nodes = {a.node_def.name: a for a in defs.resolve_asset_graph().assets_defs}  # assets and asset checks
    needs_gpu = {name for name, a in nodes.items() if "engine" in a.required_resource_keys
                 or name in TRAINS | FORWARD_PASSES}
    assert needs_gpu == {"magpie_conversations", "decontaminated_conversations", "tagged_conversations",
                         "instruction_difficulty", "sft_model",
                         "assistant_evaluation"}
    in_pool = {name for name, a in nodes.items() if a.node_def.pool is not None}
    assert in_pool == needs_gpu
    assert {nodes[name].node_def.pool for name in in_pool} == {GPU_POOL}


def test_promotion_waits_for_the_evaluation_checks():
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("promoted_model")).parent_keys}
    assert {"sft_model", "assistant_evaluation"} <= parents
    specs = defs.resolve_assets_def("assistant_evaluation").check_specs
    assert {s.name for s in specs} == {"answers_stop_on_eos", "not_worse_than_base"}
    assert all(s.blocking for s in specs)


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_profiles_are_valid_run_config(profile):
    job = defs.resolve_job_def("sft_pipeline")
    result = dg.validate_run_config(job, load_profile(profile))
    assert result  # raises DagsterInvalidConfigError with the offending field when invalid


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="demo"):
        load_profile("no-such-profile")


ENGINE_STEPS = ["magpie_conversations", "tagged_conversations", "instruction_difficulty", "sft_model",
                "assistant_evaluation"]


def test_every_asset_has_owners_tags_and_a_code_version():
    for assets_def in defs.assets:
        for spec in assets_def.specs:
            name = spec.key.to_user_string()
            assert spec.owners and all(o.startswith("team:") for o in spec.owners), name
            assert spec.tags.get("stage") and spec.tags.get("layer"), name
            assert spec.code_version and len(spec.code_version) == 16, name


def test_code_version_follows_the_code_not_comments_or_layout(tmp_path):
    from assets.common.models.code_version import source_version

    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "core.py").write_text("def f(x):\n    return max(x, 1)\n")
    before = source_version([stage])
    (stage / "core.py").write_text("# a comment\ndef f(x):  # why\n\n    return max(x,\n               1)\n")
    assert source_version([stage]) == before
    (stage / "core.py").write_text("def f(x):\n    return max(x, 2)\n")
    assert source_version([stage]) != before
    (stage / "core.py").write_text("def f(x):\n    return max(x, 1)\n")
    (stage / "prompt.yaml").write_text("v: 1\n")
    assert source_version([stage]) != before


def test_engine_steps_retry_with_backoff_and_others_do_not():
    for assets_def in defs.assets:
        if not assets_def.is_executable or not assets_def.is_materializable:
            continue
        policy = assets_def.op.retry_policy
        if assets_def.key.to_user_string() in ENGINE_STEPS:
            assert policy.max_retries >= 1 and policy.delay and policy.backoff == dg.Backoff.EXPONENTIAL
        else:
            assert policy is None, assets_def.key


def test_automation_sensor_runs_by_default_over_every_automated_asset():
    sensor = defs.resolve_sensor_def("rebuild_on_upstream_change")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    automated = {key for key in graph.toposorted_asset_keys if graph.get(key).automation_condition is not None}
    assert {dg.AssetKey(k) for k in ["sft_model", "sft_mixture", "deduplicated_conversations"]} <= automated
    assert dg.AssetKey("magpie_conversations") not in automated  # the schedule (or a person) generates shards
    assert sensor.asset_selection.resolve(graph) >= automated
    repository = defs.get_repository_def()  # no other (stopped) default sensor for assets this one misses
    assert [s.name for s in repository.sensor_defs] == ["rebuild_on_upstream_change"]


def test_external_inputs_are_observable_and_feed_the_models_and_eval_sets():
    graph = defs.resolve_asset_graph()
    for source, consumer in [("teacher_model_files", "teacher_model"), ("base_model_files", "base_model"),
                             ("user_eval_files", "eval_sets"), ("user_sft_files", "user_sft_sources")]:
        assert graph.get(dg.AssetKey(source)).is_observable, source
        assert dg.AssetKey(source) in graph.get(dg.AssetKey(consumer)).parent_keys, consumer


def test_a_code_change_in_one_stage_changes_only_its_assets_code_versions(tmp_path, monkeypatch):
    """Code versions follow the asset's folder: a copy of the stages' code with one line changed in
    assets/filtering/core.py changes the code version of filtering's assets and of no other asset."""
    import shutil

    from pipelines import metadata

    def versions() -> dict[str, str]:
        metadata.stage_code_version.cache_clear()
        return {spec.key.to_user_string(): metadata.stage_code_version(spec.tags["stage"])
                for assets_def in defs.assets for spec in assets_def.specs}

    assert all(spec.code_version == metadata.stage_code_version(spec.tags["stage"])
               for assets_def in defs.assets for spec in assets_def.specs)  # what the UI shows is the folder's
    for folder in ("assets", "training"):
        shutil.copytree(metadata.ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(metadata, "ROOT", tmp_path)
    before = versions()
    core = tmp_path / "assets" / "filtering" / "core.py"
    core.write_text(core.read_text() + "\nMAX_SOMETHING = 1\n")
    after = versions()
    metadata.stage_code_version.cache_clear()
    changed = sorted(name for name in before if before[name] != after[name])
    filtering = sorted(spec.key.to_user_string() for assets_def in defs.assets for spec in assets_def.specs
                       if spec.tags["stage"] == "filtering")
    assert changed == filtering == ["filtered_conversations"]
