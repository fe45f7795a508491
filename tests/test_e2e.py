"""The whole graph through Dagster on the tiny model: real vLLM engine, real TRL training, real Parquet."""

from __future__ import annotations

import json
import re

import dagster as dg
import polars as pl
import pytest

from assets.common.data.storage import sha256_file
from assets.common.models.chat_template import read_chat_template
from assets.common.orchestration.resources import (
    CURRENT_MODEL,
    GENERATION_SHARDS,
    PROMOTED_MODEL,
    DataStorage,
    ExternalInputs,
    VLLMEngine,
)
from pipelines.definitions import ASSET_CHECKS, defs
from pipelines.definitions import ASSETS as ALL_ASSETS

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]
SHARD = "00000"

GRAPH = defs.resolve_asset_graph()
# the whole graph's materializable assets (the external inputs are observed, not materialized)
ASSETS = [key.to_user_string() for key in GRAPH.toposorted_asset_keys if GRAPH.get(key).is_materializable]


def tiny_run_config(model_dir) -> dict:
    return {
        "ops": {
            # the tiny model is both the teacher and the student (it is ChatML: it keeps its own template)
            "teacher_model": {"config": {"path": str(model_dir)}},
            "base_model": {"config": {"path": str(model_dir), "chat_template": "tokenizer"}},
            "magpie_conversations": {"config": {
                "num_conversations": 48, "num_turns": 1, "seed": 1,
                "instruction": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 48},
                # min-p off: below its end-of-turn token (8%) the tiny model's tokens are uniform (0.1% each), so
                # min-p would keep only the end of turn and every answer would be empty
                "response": {"temperature": 0.7, "top_p": 0.9, "min_p": 0.0, "max_tokens": 64},
            }},
            # the semantic detector on the demo's model (the default, multilingual-e5-small, would embed the 2,720
            # bundled eval prompts at a few texts/s on this CPU)
            "decontaminated_conversations": {"config": {"semantic": {"model": "wordllama-l2-supercat-256"}}},
            "filtered_conversations": {"config": {"min_instruction_chars": 1, "min_response_chars": 1}},
            # the judge's prompt is ~1.1k tokens with the tiny tokenizer: the engine runs with max_model_len 2048
            "tagged_conversations": {"config": {"judge": {"max_tokens": 320}}},
            "sft_mixture": {"config": {"validation_fraction": 0.2, "seed": 0}},
            "sft_model": {"config": {"model_name": "tiny-sft", "num_train_epochs": 1,
                                     "per_device_train_batch_size": 8, "max_length": 256}},
            "assistant_evaluation": {"config": {"num_prompts": 4, "short_answers_only": True, "max_tokens": 32,
                                                "stop_check_max_tokens": 64, "bootstrap_resamples": 200,
                                                "end_of_turn_conversations": 4}},
        }
    }


@pytest.fixture(scope="module")
def pipeline_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    storage = DataStorage(root=str(root / "data"))
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        instance.add_dynamic_partitions(GENERATION_SHARDS.name, [SHARD])
        result = dg.materialize(
            [*(a for a in ALL_ASSETS if a.is_materializable), *ASSET_CHECKS],
            resources={"storage": storage, "engine": VLLMEngine(max_model_len=2048, cpu_kv_cache_gb=1)},
            run_config=tiny_run_config(tiny_model_dir),
            instance=instance,
            partition_key=SHARD,
        )
        assert result.success
        materializations = {
            key: instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization
            for key in ASSETS
        }
        checks = result.get_asset_check_evaluations()
    return storage, materializations, checks, tiny_model_dir


def test_every_asset_reports_path_row_count_and_hash(pipeline_run):
    storage, materializations, _, _ = pipeline_run
    for key in ASSETS:
        metadata = materializations[key].metadata
        assert "path" in metadata, key
        assert "content_hash" in metadata and len(metadata["content_hash"].value) == 64, key
    tables = [key for key in ASSETS if str(materializations[key].metadata["path"].value).endswith(".parquet")]
    assert len(tables) == 9, tables  # (the evaluation's: its answers; tagging's: its labels; the IFD scores)
    for key in tables:  # tables: the hash in metadata is the hash of the file on disk
        metadata = materializations[key].metadata
        assert sha256_file(metadata["path"].value) == metadata["content_hash"].value, key
        assert pl.read_parquet(metadata["path"].value).height == metadata["dagster/row_count"].value, key
        columns = metadata["dagster/column_schema"].value.columns  # the UI's columns: every one described
        assert [c.name for c in columns] == pl.read_parquet_schema(metadata["path"].value).names(), key
        assert not [c.name for c in columns if not c.description], key


def test_generation_rows_carry_provenance(pipeline_run, tiny_model_dir):
    storage, materializations, _, _ = pipeline_run
    df = storage.read_table("magpie_conversations", f"shard-{SHARD}")
    assert df.height > 24  # the tiny model ends most turns on its own
    assert df["engine"].unique().to_list() == ["vllm-cpu"]
    teacher_hash = materializations["teacher_model"].metadata["content_hash"].value
    assert df["generator_model_hash"].unique().to_list() == [teacher_hash]
    first = df.row(0, named=True)
    assert [m["role"] for m in first["messages"]][-2:] == ["user", "assistant"]
    assert all(m["content"] for m in first["messages"])


def test_model_directory_has_weights_adapter_template_and_lineage(pipeline_run):
    storage, materializations, checks, model_dir_in = pipeline_run
    metadata = materializations["sft_model"].metadata
    model_dir = metadata["model_dir"].path
    from pathlib import Path

    model_dir = Path(model_dir)
    assert (model_dir / "model.safetensors").exists()
    assert (model_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (model_dir / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "## Data" in (model_dir / "README.md").read_text()  # the model card
    assert read_chat_template(model_dir) == read_chat_template(model_dir_in)  # byte-identical
    assert Path(metadata["lineage_path"].path) == model_dir / "lineage.json"
    lineage = json.loads((model_dir / "lineage.json").read_text())
    assert lineage["base_model"]["content_hash"] == materializations["base_model"].metadata["content_hash"].value
    summary = metadata["lineage"].value  # the lineage summary the UI shows: models and upstream tables' hashes
    for key in ("base_model", "teacher_model", "sft_mixture", "decontaminated_conversations"):
        assert materializations[key].metadata["content_hash"].value in summary, key
    ancestors = set(GRAPH.upstream_key_iterator(dg.AssetKey("sft_model")))  # not sft_dataset, a sibling
    upstream = [key for key in ASSETS if dg.AssetKey(key) in ancestors]
    assert sorted(lineage["assets"]) == sorted(upstream)  # every upstream asset of the graph, none forgotten
    models = {"teacher_model", "base_model"}
    for key in models:  # both models, with their content hashes
        manifest = lineage["assets"][key]["documents"]["manifest"]["content"]
        assert manifest["content_hash"] == materializations[key].metadata["content_hash"].value, key
    student = lineage["assets"]["base_model"]["documents"]["manifest"]["content"]
    assert student["original"]["path"] == str(Path(model_dir_in).resolve())
    assert student["template"]["name"] == "tokenizer"
    assert student["end_of_turn"] == {"token": "<|im_end|>", "id": 2} and student["added_token_ids"] == []
    for key in [k for k in upstream if k not in models]:
        tables = lineage["assets"][key]["tables"]
        if key == "user_sft_sources" and not tables:  # no user sources configured: its report is the record
            report = lineage["assets"][key]["documents"]["report"]
            tables = {"data": {**report, "row_count": report["content"]["rows"]}}
        entry = tables[f"shard-{SHARD}" if key == "magpie_conversations" else "data"]  # partitioned: one per shard
        assert entry["content_hash"] == materializations[key].metadata["content_hash"].value, key
        assert entry["row_count"] == materializations[key].metadata["dagster/row_count"].value, key
        assert entry["path"] == materializations[key].metadata["path"].value, key
        assert sha256_file(entry["path"]) == entry["content_hash"], key
    for key in ("deduplicated_conversations", "decontaminated_conversations", "filtered_conversations",
                "tagged_conversations"):
        assert "rejected" in lineage["assets"][key]["tables"], key  # removed rows are part of the lineage too
    generation = lineage["assets"]["magpie_conversations"]["documents"][f"report-{SHARD}"]["content"]
    (prefix,) = generation["pre_query_templates"]  # no system prompts configured: one prefix
    assert prefix.endswith("<|im_end|>\n<|im_start|>user\n") and "MagpieSentinel" not in prefix
    assert generation["engine"]["name"] == "vllm-cpu" and generation["seed"] == 1
    assert lineage["training"]["config"]["lora_r"] == 16
    assert lineage["metrics"]["train_loss"] > 0
    assert lineage["code_version"]["packages"]["trl"].startswith("1.16")
    (served,) = [c for c in checks if c.check_name == "served_format_matches_training"]
    assert served.passed and served.metadata["rows_retokenized"].value == metadata["dagster/row_count"].value + \
        metadata["validation_rows"].value - metadata["dropped_too_long"].value


def test_judge_labels_every_kept_row_and_the_funnel_is_charted(pipeline_run):
    storage, materializations, _, _ = pipeline_run
    tagged = storage.read_table("tagged_conversations")
    metadata = materializations["tagged_conversations"].metadata
    assert tagged.height == metadata["dagster/row_count"].value > 0
    assert tagged["judge_status"].to_list() == ["parsed"] * tagged.height, tagged["judge_error"].to_list()
    assert tagged["task_source"].unique().to_list() == ["judge"] and tagged["judge_category"].null_count() == 0
    for name in ("difficulty", "instruction_quality", "response_quality"):
        assert tagged[name].is_between(1, 5).all(), name
    report = storage.read_json("tagged_conversations", "report")
    assert tagged["judge_prompt_hash"].unique().to_list() == [report["judge"]["prompt_hash"]]
    assert metadata["tagger"].value == "judge" and metadata["judge_parse_share"].value == 1.0
    assert "data:image/png;base64," in metadata["funnel"].value
    assert [s["stage"] for s in report["stage_funnel"]] == [  # every conversation stage, in graph order
        "magpie_conversations", "deduplicated_conversations", "decontaminated_conversations",
        "filtered_conversations", "tagged_conversations"]
    mixture = storage.read_table("sft_mixture")  # the mixture samples by the judge's category
    assert set(mixture["task"]) <= set(tagged["task"])


def test_post_training_checks_ran_on_the_trained_model(pipeline_run):
    _, _, checks, _ = pipeline_run
    by_name = {c.check_name: c for c in checks}
    forgetting = by_name["general_text_forgetting"]
    assert forgetting.metadata["perplexity_base"].value > 1 and forgetting.metadata["perplexity_tuned"].value > 1
    assert forgetting.passed == (forgetting.metadata["relative_increase"].value <= 0.25)
    assert by_name["no_eval_overlap"].passed


def test_the_evaluation_judged_the_trained_model(pipeline_run):
    storage, materializations, checks, tiny_model_dir = pipeline_run
    by_name = {c.check_name: c for c in checks}
    stops = by_name["answers_stop_on_eos"]  # folded into the evaluation: one engine start per model
    assert stops.asset_key.to_user_string() == "assistant_evaluation"
    assert stops.passed, stops.metadata["runaway_prompts"].value  # the tiny model ends its turns on its own
    assert "What is the capital of France?" in stops.metadata["base_vs_tuned"].value
    assert by_name["not_worse_than_base"].passed, by_name["not_worse_than_base"].description
    report = storage.read_json("assistant_evaluation", "report")
    assert report["models"]["tuned"]["model_dir"] == materializations["sft_model"].metadata["model_dir"].path
    assert report["models"]["base"]["model_dir"] == materializations["base_model"].metadata["path"].value  # prepared
    assert len(report["ifeval"]["prompts"]) == 4
    eot = report["end_of_turn_probability"]
    assert eot["conversations"] > 0 and 0 < eot["models"]["tuned"]["mean"] < 1


def test_the_checked_model_is_promoted(pipeline_run):
    storage, materializations, checks, _ = pipeline_run
    current = storage.read_json(PROMOTED_MODEL, CURRENT_MODEL)
    assert current["model_dir"] == materializations["sft_model"].metadata["model_dir"].path
    assert current["content_hash"] == materializations["sft_model"].metadata["content_hash"].value
    passed = {(c.asset_key.to_user_string(), c.check_name) for c in checks if c.passed}
    promoted_on = {(c["asset"], c["check"]) for c in current["checks"]}
    assert promoted_on <= passed
    assert {("sft_model", "general_text_forgetting"), ("assistant_evaluation", "answers_stop_on_eos"),
            ("assistant_evaluation", "not_worse_than_base")} <= promoted_on


def test_train_rows_trace_back_to_generation(pipeline_run):
    storage, materializations, _, _ = pipeline_run
    from pathlib import Path

    model_dir = Path(materializations["sft_model"].metadata["model_dir"].path)
    rows = pl.read_parquet(model_dir / "train_rows.parquet")
    generated = storage.read_table("magpie_conversations", f"shard-{SHARD}")
    joined = rows.join(generated, on=["shard", "row_index"], how="left", suffix="_gen")
    assert joined["conversation_id_gen"].null_count() == 0
    assert (joined["conversation_id"] == joined["conversation_id_gen"]).all()
    assert rows.filter(pl.col("split") == "train").height == materializations["sft_model"].metadata[
        "dagster/row_count"].value


def test_the_mixture_is_exported_with_its_card(pipeline_run):
    """sft_dataset: a `datasets` folder that loads back as the mixture, per split, with a card written from the real
    stages' reports and carrying the mixture hash the model's lineage records."""
    from pathlib import Path

    import datasets

    _, materializations, _, _ = pipeline_run
    metadata, mixture_metadata = materializations["sft_dataset"].metadata, materializations["sft_mixture"].metadata
    mixture = pl.read_parquet(mixture_metadata["path"].value)
    loaded = datasets.load_from_disk(metadata["path"].value)
    assert sorted(loaded) == sorted(mixture["split"].unique().to_list())
    for split, dataset in loaded.items():
        expected = mixture.filter(pl.col("split") == split).drop("split")
        assert dataset.column_names == expected.columns
        assert dataset["messages"] == expected["messages"].to_list(), split
        assert metadata[f"{split}_rows"].value == expected.height
    card = metadata["card"].value
    assert card == (Path(metadata["path"].value) / "README.md").read_text()
    lineage = json.loads((Path(materializations["sft_model"].metadata["model_dir"].path) / "lineage.json").read_text())
    mixture_hash = lineage["assets"]["sft_mixture"]["tables"]["data"]["content_hash"]
    assert mixture_hash == mixture_metadata["content_hash"].value == metadata["mixture_content_hash"].value
    assert f"`{mixture_hash}`" in card
    for stage in ("magpie_conversations", "deduplicated_conversations", "decontaminated_conversations",
                  "filtered_conversations", "tagged_conversations", "sft_mixture"):
        assert re.search(rf"\| {stage} \| \d+ \| \d+ \| \d+ \|", card), stage  # its funnel row, from its report
    assert "rows were removed for overlapping an evaluation set" in card
    assert metadata["license"].value == "other"  # the tiny teacher's directory states no license


def test_trained_model_loads_and_generates(pipeline_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, materializations, _, _ = pipeline_run
    model_dir = materializations["sft_model"].metadata["model_dir"].path
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_continual_mode_starts_from_the_previous_model_with_rehearsal(pipeline_run, tmp_path):
    """sft_model twice more on copies of the pipeline's data: continual mode with no promoted model yet (trains from
    the base model and says why), then, on a smaller mixture, from the promoted model with rehearsal of its rows."""
    import shutil
    from pathlib import Path

    from assets.mixture.assets import sft_mixture
    from assets.sft.assets import sft_model
    from training.continual import rehearsal_size

    storage, materializations, _, tiny_model_dir = pipeline_run
    # the default run of the whole graph recorded that it was trained from the base model
    default_dir = Path(materializations["sft_model"].metadata["model_dir"].path)
    assert json.loads((default_dir / "lineage.json").read_text())["retrained_from"] == "base_model"
    assert materializations["sft_model"].metadata["init_from"].value == "base"

    # round 1: nothing promoted yet in this copy of the data, so continual mode trains from the base model
    copy = DataStorage(root=str(tmp_path / "data"))
    shutil.copytree(storage.root_path, copy.root_path, ignore=shutil.ignore_patterns("models", PROMOTED_MODEL.path[0]))
    model_config = tiny_run_config(tiny_model_dir)["ops"]["sft_model"]["config"] | {
        "init_from": "previous", "rehearsal_fraction": 0.5}
    mixture_rows = materializations["sft_mixture"].metadata["dagster/row_count"].value

    def materialize(assets, run_config, data=copy):
        (tmp_path / "dagster").mkdir(exist_ok=True)
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            result = dg.materialize(assets, resources={"storage": data}, run_config={"ops": run_config},
                                    instance=instance)
            assert result.success
            return instance.get_latest_materialization_event(dg.AssetKey("sft_model")).asset_materialization

    fallback = materialize([sft_model], {"sft_model": {"config": model_config}})
    fallback_lineage = json.loads((Path(fallback.metadata["model_dir"].path) / "lineage.json").read_text())
    assert fallback_lineage["retrained_from"]["mode"] == "base"
    assert "no previous sft_model yet: none promoted" in fallback_lineage["retrained_from"]["reason"]
    assert fallback.metadata["rehearsal_rows"].value == 0

    # round 2, on a full copy of the data: continual mode starts from the promoted model (the pipeline's own model,
    # promoted after its checks passed), on a smaller mixture, so part of its training rows can be rehearsed
    promoted = DataStorage(root=str(tmp_path / "promoted"))
    shutil.copytree(storage.root_path, promoted.root_path, ignore=shutil.ignore_patterns("models"))
    first_dir, first_lineage = default_dir, json.loads((default_dir / "lineage.json").read_text())
    first = materializations["sft_model"]
    assert promoted.read_json(PROMOTED_MODEL, CURRENT_MODEL)["model_dir"] == str(first_dir)
    second = materialize([sft_mixture, sft_model], {
        "sft_mixture": {"config": {"validation_fraction": 0.2, "seed": 0, "max_rows": mixture_rows // 2}},
        "sft_model": {"config": model_config},
    }, data=promoted)
    second_dir = Path(second.metadata["model_dir"].path)
    lineage = json.loads((second_dir / "lineage.json").read_text())
    start = lineage["retrained_from"]
    assert start["mode"] == "continual" and start["previous_model_dir"] == str(first_dir)
    assert start["previous_model_content_hash"] == first.metadata["content_hash"].value
    assert start["previous_dagster_run_id"] == first_lineage["dagster_run_id"] != lineage["dagster_run_id"]
    assert lineage["training"]["initial_weights"] == str(first_dir)
    student_dir = materializations["base_model"].metadata["path"].value
    assert lineage["base_model"]["path"] == student_dir  # the base model (the prepared student) stays the base model
    assert second.metadata["retrained_from"].value == start
    assert "Continual fine-tune" in (second_dir / "README.md").read_text()
    assert read_chat_template(second_dir) == read_chat_template(tiny_model_dir)

    rows = pl.read_parquet(second_dir / "train_rows.parquet")
    rehearsal = rows.filter(pl.col("split") == "rehearsal")
    new_train = rows.filter(pl.col("split") == "train")
    assert rehearsal.height == start["rehearsal"]["rows"] == second.metadata["rehearsal_rows"].value > 0
    assert rehearsal.height == min(rehearsal_size(0.5, new_train.height), start["rehearsal"]["available"])
    assert second.metadata["dagster/row_count"].value == new_train.height + rehearsal.height
    previous_rows = pl.read_parquet(first_dir / "train_rows.parquet").filter(pl.col("split") == "train")
    assert set(rehearsal["conversation_id"]) <= set(previous_rows["conversation_id"])
    assert not set(rehearsal["conversation_id"]) & set(promoted.read_table("sft_mixture")["conversation_id"])
    generated = promoted.read_table("magpie_conversations", f"shard-{SHARD}")  # traceable to shard and row
    joined = rehearsal.join(generated, on=["shard", "row_index"], how="left", suffix="_gen")
    assert (joined["conversation_id"] == joined["conversation_id_gen"]).all()
    assert (joined["messages"] == joined["messages_gen"]).all()


def _recorded_files(lineage: dict) -> dict[str, str]:
    """Every file a lineage names with its content hash: tables (rejected ones too) and reports of every asset."""
    files = {}
    for asset in lineage["assets"].values():
        for entry in [*asset["tables"].values(), *asset["documents"].values()]:
            files[entry["path"]] = entry["content_hash"]
    return files


def test_rebuild_keeps_old_lineage_readable_and_lists_a_new_stage(pipeline_run):
    """Rebuild the pipeline's own data with another generation seed and one more stage, wired in by assembly only
    (an asset of its own plus a dep added with map_asset_specs, as pipelines/ would): every path in the first
    model's lineage.json still has its bytes, and the new model's lineage lists the new stage with no edit to any
    other stage. Last in this module: it rebuilds the storage the other tests read."""
    from pathlib import Path

    storage, materializations, _, tiny_model_dir = pipeline_run
    first_dir = Path(materializations["sft_model"].metadata["model_dir"].path)
    recorded = _recorded_files(json.loads((first_dir / "lineage.json").read_text()))
    assert len(recorded) >= 12 and all(Path(p).is_relative_to(storage.root_path) for p in recorded)

    @dg.asset(group_name="labels", deps=[dg.AssetKey("filtered_conversations")])
    def conversation_labels(storage: DataStorage) -> dg.MaterializeResult:
        rows = storage.read_table("filtered_conversations").select("conversation_id")
        return dg.MaterializeResult(metadata=storage.write_table("conversation_labels", rows).metadata())

    assets = dg.map_asset_specs(
        lambda spec: spec.merge_attributes(deps=[conversation_labels]) if spec.key.path == ["sft_mixture"] else spec,
        ALL_ASSETS)
    run_config = tiny_run_config(tiny_model_dir)
    run_config["ops"]["magpie_conversations"]["config"]["seed"] = 2
    root = storage.root_path.parent / "dagster-rebuild"
    root.mkdir()
    with dg.instance_for_test(temp_dir=str(root)) as instance:
        instance.add_dynamic_partitions(GENERATION_SHARDS.name, [SHARD])
        result = dg.materialize([*assets, conversation_labels, *ASSET_CHECKS], partition_key=SHARD,
                                resources={"storage": storage, "inputs": ExternalInputs(),
                                           "engine": VLLMEngine(max_model_len=2048, cpu_kv_cache_gb=1)},
                                run_config=run_config, instance=instance)
        assert result.success
        second_dir = Path(instance.get_latest_materialization_event(dg.AssetKey("sft_model"))
                          .asset_materialization.metadata["model_dir"].path)
    assert second_dir != first_dir and (first_dir / "model.safetensors").exists()
    # another seed wrote another shard, under another path; the first one is still where the lineage says
    assert sha256_file(storage.table_path("magpie_conversations", f"shard-{SHARD}")) not in recorded.values()
    for path, content_hash in recorded.items():  # the old data is still there, byte for byte
        assert sha256_file(path) == content_hash, path
    second = json.loads((second_dir / "lineage.json").read_text())
    labels = second["assets"]["conversation_labels"]["tables"]["data"]
    assert labels["row_count"] == storage.read_table("filtered_conversations").height
    assert sha256_file(labels["path"]) == labels["content_hash"]
