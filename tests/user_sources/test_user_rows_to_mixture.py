"""A user JSONL source through every data stage, as the Definitions wire them: user_sft_sources and a generation
shard → dedup → decontamination (+ its blocking check) → filtering → tagging (fallback tagger) → sft_mixture at 25%
of the student's tokens. User rows are filtered and tagged like generated ones and the mix lands on its share."""

import json

import dagster as dg
import polars as pl
import pytest

from assets.common.models.chat_template import special_token_strings
from assets.common.orchestration.resources import (
    BASE_MODEL,
    MAGPIE_CONVERSATIONS,
    MODEL_MANIFEST,
    TEACHER_MODEL,
    DataStorage,
    ExternalInputs,
    VLLMEngine,
)
from pipelines.definitions import ASSET_CHECKS, ASSETS
from tests.asset_runs import conversation, failure_text, frame

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
STAGES = ["user_sft_sources", "deduplicated_conversations", "eval_sets", "decontaminated_conversations",
          "filtered_conversations", "tagged_conversations", "sft_mixture"]
TOPICS = ["rivers", "bridges", "gardens", "clocks", "lanterns", "harbours", "forests", "markets", "orchards", "mills"]


def test_user_rows_go_through_every_data_stage_and_are_mixed_by_tokens(tmp_path, tiny_model_dir):
    storage = DataStorage(root=str(tmp_path / "data"))
    from transformers import AutoTokenizer

    special = special_token_strings(AutoTokenizer.from_pretrained(tiny_model_dir))
    for key in (TEACHER_MODEL, BASE_MODEL):  # the tiny model is both, as in the end-to-end test
        storage.write_json(key, MODEL_MANIFEST, {"path": str(tiny_model_dir), "name": "tiny", "content_hash": "h",
                                                 "special_tokens": special})
    generated = [conversation(i, f"Explain how {t} changed life in village {i}, in two sentences.",
                              f"The {t} of village {i} brought trade and calm evenings. People met there daily.")
                 for i, t in enumerate(TOPICS * 4)]
    storage.write_table(MAGPIE_CONVERSATIONS, frame(generated), name="shard-00000")
    records = [{"messages": [{"role": "user", "content": f"Write a short verse about the {t} of town {i}."},
                             {"role": "assistant", "content": f"Soft light falls on the {t} of town {i}; the evening "
                                                              f"keeps its promise, and every one of the {t} remembers "
                                                              "the rain that shaped its stones over quiet years."}]}
               for i, t in enumerate(TOPICS * 2)]
    records.append({"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]})
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"user_sft_sources": {"sources": [{"name": "mine", "path": str(path)}]},
              "eval_sets": {"benchmarks": ["humaneval"]},
              "decontaminated_conversations": {"semantic": {"enabled": False}},  # its own tests cover it
              "tagged_conversations": {"use_judge": False, "calibrate": False},
              "sft_mixture": {"unit": "tokens", "source_shares": {"mine": 0.25}, "validation_fraction": 0.1}}
    defs = dg.Definitions(assets=ASSETS, asset_checks=ASSET_CHECKS,
                          resources={"storage": storage, "engine": VLLMEngine(), "inputs": ExternalInputs()})
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[dg.AssetKey(s) for s in STAGES], instance=instance, raise_on_error=False,
            run_config={"ops": {name: {"config": value} for name, value in config.items()}})
    assert result.success, failure_text(result)
    rejected = storage.read_table("filtered_conversations", "rejected")
    assert "user-mine-21" in rejected["conversation_id"].to_list()  # "Hi." is too short for the filter, as any row
    tagged = storage.read_table("tagged_conversations").filter(pl.col("source") == "mine")
    assert tagged.height == 20 and tagged["task"].null_count() == 0 and tagged["refusal"].null_count() == 0
    train = storage.read_table("sft_mixture").filter(pl.col("split") == "train")
    tokens = dict(train.group_by(pl.col("source").fill_null("generated")).agg(pl.col("mix_tokens").sum()).iter_rows())
    share = tokens["mine"] / sum(tokens.values())
    assert abs(share - 0.25) <= max(0.01, train["mix_tokens"].max() / sum(tokens.values()))
    manifest = storage.read_json("sft_mixture", "manifest")
    assert manifest["sources"]["mine"]["tokens_share"] == pytest.approx(share)
    assert manifest["sources"]["mine"]["available_rows"] > manifest["sources"]["mine"]["rows"]  # the share binds
