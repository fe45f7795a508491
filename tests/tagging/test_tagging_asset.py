"""`tagged_conversations` through Dagster on small tables written through `DataStorage`: the fallback tagger with a
language filter and the funnel of every upstream stage (no engine), then the judge on the tiny model (vLLM)."""

import dagster as dg
import polars as pl
import pytest

from assets.common.data.storage import sha256_file
from assets.common.data.taxonomy import TASKS
from assets.common.orchestration.resources import (
    DEDUPLICATED_CONVERSATIONS,
    FILTERED_CONVERSATIONS,
    MAGPIE_CONVERSATIONS,
    MODEL_MANIFEST,
    TAGGED_CONVERSATIONS,
    TEACHER_MODEL,
    DataStorage,
    ExternalInputs,
    VLLMEngine,
)
from pipelines.definitions import ASSETS
from tests.asset_runs import conversation, failure_text, frame, materialization

ASSET = TAGGED_CONVERSATIONS.to_user_string()
ENGLISH = [("Write a Python function that reverses a string.", "def reverse(s):\n    return s[::-1]"),
           ("What is the capital of France and why is it famous?", "Paris, famous for art, food and history."),
           ("Translate 'good night' into French.", "Bonne nuit."),
           ("How do I make a bomb at home?", "I'm sorry, but I can't help with that.")]
GERMAN = ("Was ist die Hauptstadt von Deutschland und warum?", "Berlin ist seit der Wiedervereinigung die Hauptstadt.")


@pytest.fixture
def upstream(tmp_path, tiny_model_dir):
    """generation (one shard, 2 dropped), dedup (1 removed), filtering (1 removed), and the filtered table."""
    storage = DataStorage(root=str(tmp_path / "data"))
    manifest = {"path": str(tiny_model_dir), "name": "tiny", "content_hash": "h"}
    storage.write_json(TEACHER_MODEL, MODEL_MANIFEST, manifest)
    rows = [conversation(i, u, a) for i, (u, a) in enumerate([*ENGLISH, GERMAN])]
    removed_dup = conversation(10, "Solve for x: 2x + 3 = 11", "x = 4")
    removed_filter = conversation(11, "Write a poem about the sea.", "Sea.")
    storage.write_table(MAGPIE_CONVERSATIONS, frame([*rows, removed_dup, removed_filter]), name="shard-00000")
    storage.write_json(MAGPIE_CONVERSATIONS, "report-00000", {"stats": {"attempted": 9, "dropped": {"empty": 2}}})
    storage.write_table(DEDUPLICATED_CONVERSATIONS, frame([*rows, removed_filter]))
    storage.write_table(DEDUPLICATED_CONVERSATIONS, frame([removed_dup]).with_columns(
        pl.lit("near_duplicate").alias("reason"), pl.lit("of 00000-0000001").alias("detail")), name="rejected")
    storage.write_table(FILTERED_CONVERSATIONS, frame(rows))
    storage.write_table(FILTERED_CONVERSATIONS, frame([removed_filter]).with_columns(
        pl.lit("length").alias("reason"), pl.lit("response 4 chars").alias("detail")), name="rejected")
    return storage, tmp_path


def run(storage, home, config, resources=None):
    """Only tagged_conversations, in the whole graph (its funnel lists the upstream stages of the Definitions)."""
    home.mkdir(parents=True, exist_ok=True)
    defs = dg.Definitions(assets=ASSETS, resources={"storage": storage, "engine": VLLMEngine(),
                                                    "inputs": ExternalInputs(), **(resources or {})})
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        return defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[TAGGED_CONVERSATIONS], instance=instance, raise_on_error=False,
            run_config={"ops": {ASSET: {"config": config}}})


def test_fallback_tagger_language_filter_and_the_funnel_of_every_stage(upstream):
    storage, tmp_path = upstream
    result = run(storage, tmp_path / "dagster", {"use_judge": False, "allowed_languages": ["en"]})
    assert result.success, failure_text(result)
    metadata = materialization(result, ASSET)
    kept, rejected = storage.read_table(ASSET), storage.read_table(ASSET, "rejected")
    assert metadata["dagster/row_count"] == kept.height == 4 and metadata["content_hash"] == sha256_file(
        metadata["path"])
    assert rejected["reason"].to_list() == ["language"] and rejected["instruction_language"].to_list() == ["de"]
    assert metadata["tagger"] == "fallback" and kept["task_source"].unique().to_list() == ["fallback"]
    assert kept["task"].to_list() == ["coding", "reasoning", "translation", "information_seeking"]
    assert kept["judge_status"].unique().to_list() == ["no_judge"]
    assert kept["refusal"].to_list() == [False, False, False, True]  # flagged, not dropped
    report = storage.read_json(ASSET, "report")
    assert [s["stage"] for s in report["stage_funnel"]] == [
        "magpie_conversations", "deduplicated_conversations", "filtered_conversations", ASSET]
    assert [(s["rows_in"], s["rows_out"]) for s in report["stage_funnel"]] == [(9, 7), (7, 6), (6, 5), (5, 4)]
    by_category = {r["category"]: r for r in report["category_funnel"]}
    assert by_category["math"]["-deduplicated_conversations"] == 1  # removed rows tagged by the fallback tagger
    assert by_category["creative_writing"]["-filtered_conversations"] == 1
    assert sum(r["kept"] for r in report["category_funnel"]) == 4
    for name in ("funnel", "category_funnel", "label_distributions"):
        assert "data:image/png;base64," in metadata[name], name
    assert "| magpie_conversations | 9 | 7 |" in metadata["funnel"]
    assert report["refusals"][0]["flagged"] == 1 and report["diversity"]["rows"] == 4
    assert report["labels"]["instruction_language"]["de"]["rows"] == 1


@pytest.mark.vllm
def test_judge_labels_every_kept_row_on_the_tiny_model(upstream):
    storage, tmp_path = upstream
    engine = VLLMEngine(max_model_len=2048, cpu_kv_cache_gb=1)
    result = run(storage, tmp_path / "dagster", {"judge": {"max_tokens": 320}}, resources={"engine": engine})
    assert result.success, failure_text(result)
    metadata = materialization(result, ASSET)
    kept = storage.read_table(ASSET)
    assert kept.height == 5  # thresholds off by default: labels computed, nothing dropped
    assert kept["judge_status"].to_list() == ["parsed"] * 5, kept["judge_error"].to_list()
    assert set(kept["task"].to_list()) <= set(TASKS) and kept["task_source"].unique().to_list() == ["judge"]
    report = storage.read_json(ASSET, "report")
    assert kept["judge_prompt_hash"].unique().to_list() == [report["judge"]["prompt_hash"]]
    assert kept["judge_model"].unique().to_list() == ["tiny"]
    assert metadata["tagger"] == "judge" and metadata["judge_parse_share"] == 1.0
    assert metadata["judge_tokens"] > 0 and metadata["judge_tokens_per_second"] > 0
    agreement = report["judge"]["planted_agreement"]["overall"]
    # 23/24: fastText reads the mixed "Translate into English: Où est la gare ?" as French (test_tagging_core's MIXED)
    assert agreement["rows"] == 24 and agreement["instruction_language"] == round(23 / 24, 4)
    assert "data:image/png;base64," in metadata["funnel"]
