"""Retrain from base exactly once per real change, through a real Dagster instance: the project's automation
conditions evaluated as the automation sensor evaluates them, the runs they request launched with no run config
(the profile's defaults apply), on the real dataset assets over small inputs. Generation runs the real asset with
the deterministic fake engine in place of vLLM; `sft_model` really trains (TRL, on the tiny model), so a request
that did not happen, or one that happened twice, shows in the counts. The evaluation and promotion are not evaluated
here (vLLM): tests/test_automation_faults.py runs them.

One story, in order: first inputs observed -> the models and eval sets are prepared; a first shard -> every dataset
asset once and one retrain; a byte-identical rebuild (dedup re-run, the shard regenerated) -> nothing; a changed
code version -> that asset alone; a new shard -> every dataset asset once and exactly one retrain; a failing
blocking check -> nothing downstream, no retrain; decontamination restored to the table filtering was built from ->
nothing; a changed user eval file -> the eval sets, everything after them once, exactly one retrain; a changed user
SFT file -> the user rows and every dataset asset once, exactly one retrain. After each retrain, the model's recorded
inputs are the current ones and it trained on exactly the current mixture's rows."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import dagster as dg
import polars as pl
import pytest

from assets.common.orchestration.resources import (
    ASSISTANT_EVALUATION,
    BASE_MODEL_FILES,
    DECONTAMINATED_CONVERSATIONS,
    DEDUPLICATED_CONVERSATIONS,
    FILTERED_CONVERSATIONS,
    GENERATION_SHARDS,
    MODEL_MANIFEST,
    PROMOTED_MODEL,
    TEACHER_MODEL,
    TEACHER_MODEL_FILES,
    USER_EVAL_FILES,
    USER_SFT_FILES,
    DataStorage,
)
from assets.generation import assets as generation_assets
from tests.automation_runs import Automation, failures, trained_on_latest
from tests.fake_generator import WORDS, FakeGenerator

# A 15-word eval text; planted rows hold its first 14 words: the default decontamination (13-grams) removes them,
# a weakened one (20-grams, whole texts only, MinHash off) misses them, and the blocking check (13-grams) does not.
EVAL_TEXT = " ".join(WORDS[:15])
PLANTED = " ".join(WORDS[:14])
DATASET = ["deduplicated_conversations", "decontaminated_conversations", "filtered_conversations",
           "tagged_conversations", "instruction_difficulty", "sft_mixture"]
# What a changed mixture rebuilds: its export and the model
MIXTURE_CONSUMERS = {"sft_dataset": 1, "sft_model": 1}
TINY_TRAINING = {"model_name": "tiny-sft", "num_train_epochs": 1, "max_steps": 2, "per_device_train_batch_size": 8,
                 "max_length": 128, "early_stopping_patience": 0}
NOT_AUTOMATED_HERE = frozenset({ASSISTANT_EVALUATION, PROMOTED_MODEL})  # vLLM: run in tests/test_automation_faults.py
WEAK_DECONTAMINATION = {"ngram": 20, "similarity_threshold": 0.0, "max_train_rows": 0}


class PlantingGenerator(FakeGenerator):
    """The fake engine, with PLANTED appended to every fourth non-empty completion."""

    def generate(self, prompts, sampling, stop_token_ids, seeds):
        out = super().generate(prompts, sampling, stop_token_ids, seeds)
        return [dataclasses.replace(c, text=f"{c.text} {PLANTED}") if c.text and seed % 4 == 1 else c
                for c, seed in zip(out, seeds, strict=True)]


def user_rows(*texts: str) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"Say something about {t}."},
                                            {"role": "assistant", "content": f"Here is something about {t}."}]}) + "\n"
                   for t in texts)


def profile(tiny_model_dir, data, eval_file, sft_file) -> dict:
    return {
        "ops": {
            "teacher_model": {"config": {"path": str(tiny_model_dir)}},
            "base_model": {"config": {"path": str(tiny_model_dir), "chat_template": "tokenizer"}},
            "eval_sets": {"config": {"benchmarks": ["humaneval"],
                                     "user_files": [{"path": str(eval_file), "benchmark": "user"}]}},
            "magpie_conversations": {"config": {"num_conversations": 40, "batch_size": 20}},
            # the semantic detector has its own tests (tests/decontamination/test_decontam_semantic.py)
            "decontaminated_conversations": {"config": {"semantic": {"enabled": False}}},
            "filtered_conversations": {"config": {"min_instruction_chars": 1, "min_response_chars": 1}},
            "tagged_conversations": {"config": {"use_judge": False, "calibrate": False}},
            "user_sft_sources": {"config": {"sources": [{"name": "mine", "path": str(sft_file)}]}},
            "sft_mixture": {"config": {"validation_fraction": 0.2}},
            "sft_model": {"config": TINY_TRAINING},
        },
        "resources": {"storage": {"config": {"root": str(data)}}},
    }


def generate_shard(auto: Automation, key: str, generator=FakeGenerator) -> dg.ExecuteInProcessResult:
    """What the schedule requests: one shard of the `shard_generation` job, with no run config."""
    auto.instance.add_dynamic_partitions(GENERATION_SHARDS.name, [key])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generation_assets, "VLLMGenerator", lambda *args, **kwargs: generator())
        result = auto.defs.resolve_job_def("shard_generation").execute_in_process(
            instance=auto.instance, partition_key=key, raise_on_error=False)
    assert result.success, failures(result)
    return result


def latest(instance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def test_retrain_exactly_once_per_real_change(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SFT_DATA_ROOT", raising=False)
    data, eval_file, sft_file = tmp_path / "data", tmp_path / "user_eval.jsonl", tmp_path / "user_sft.jsonl"
    eval_file.write_text(json.dumps({"text": EVAL_TEXT}) + "\n")
    sft_file.write_text(user_rows("tides", "glaciers"))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        auto = Automation.from_profile(profile(tiny_model_dir, data, eval_file, sft_file), instance,
                                       skip=NOT_AUTOMATED_HERE)
        storage = DataStorage(root=str(data))
        assert auto.tick() == []  # a fresh instance: nothing changed, nothing requested

        # The external inputs are observed (the sensor does it every 10 minutes): their first data versions
        # prepare the models and the eval sets, with the profile's paths (the runs carry no run config); the user's
        # SFT rows alone already make a dataset (no shard generated yet), and one retrain request.
        observed = auto.launch([TEACHER_MODEL_FILES, BASE_MODEL_FILES, USER_EVAL_FILES, USER_SFT_FILES])
        assert observed.success, failures(observed)
        assert auto.settle() == Counter({"teacher_model": 1, "base_model": 1, "eval_sets": 1, "user_sft_sources": 1,
                                         **dict.fromkeys(DATASET, 1), **MIXTURE_CONSUMERS})
        assert latest(instance, "sft_mixture")["dagster/row_count"] == 2
        trained_on_latest(instance, data)
        assert storage.read_json(TEACHER_MODEL, MODEL_MANIFEST)["path"] == str(tiny_model_dir.resolve())
        assert auto.settle() == Counter()  # observing unchanged inputs again changes nothing
        assert auto.launch([TEACHER_MODEL_FILES, USER_EVAL_FILES]).success and auto.settle() == Counter()

        # A first shard: every dataset asset once, then one retrain request.
        generate_shard(auto, "00000")
        assert auto.settle() == Counter({**dict.fromkeys(DATASET, 1), **MIXTURE_CONSUMERS})
        assert latest(instance, "tagged_conversations")["tagger"] == "fallback"  # the profile's use_judge: false
        for key in ["eval_sets", *DATASET]:  # every table shows its columns in the UI, as written
            metadata = latest(instance, key)
            columns = [(c.name, c.type) for c in metadata["dagster/column_schema"].columns]
            written = pl.read_parquet_schema(metadata["path"])
            assert columns == [(name, str(dtype)) for name, dtype in written.items()], key

        # Byte-identical rebuilds: deduplication re-run by hand, the shard regenerated (same seeds): no request.
        assert auto.launch([DEDUPLICATED_CONVERSATIONS]).success
        generate_shard(auto, "00000")
        assert auto.settle() == Counter()

        # A changed code version rebuilds that asset; its output is the same, so nothing follows.
        changed = [a.map_asset_specs(lambda s: s.replace_attributes(code_version="changed")
                                     if s.key == DEDUPLICATED_CONVERSATIONS else s) for a in auto.defs.assets]
        auto.use(dg.Definitions(assets=changed, asset_checks=auto.defs.asset_checks, jobs=auto.defs.jobs,
                                resources=auto.defs.resources))
        assert auto.settle() == Counter({"deduplicated_conversations": 1})

        # A new shard (some rows leak an eval text): every dataset asset once, exactly one retrain request;
        # decontamination removed the leaking rows and its blocking check passed.
        generate_shard(auto, "00001", PlantingGenerator)
        assert auto.settle() == Counter({**dict.fromkeys(DATASET, 1), **MIXTURE_CONSUMERS})
        assert latest(instance, "decontaminated_conversations")["rows_removed"] > 0
        trained_on_latest(instance, data)

        # A failing blocking check: decontamination re-run by hand with weakened settings keeps the leaking rows
        # (a new data version), `no_eval_overlap` fails: nothing downstream is requested, no retrain.
        weak = auto.launch([DECONTAMINATED_CONVERSATIONS],
                           run_config={"ops": {"decontaminated_conversations": {"config": WEAK_DECONTAMINATION}}})
        (check,) = weak.get_asset_check_evaluations()
        assert check.check_name == "no_eval_overlap" and not check.passed
        assert latest(instance, "decontaminated_conversations")["rows_removed"] == 0
        assert auto.settle() == Counter()

        # Decontamination re-run with the profile's settings: the check passes, and the table is the very one
        # filtering was built from (same data version): nothing is rebuilt.
        assert auto.launch([DECONTAMINATED_CONVERSATIONS]).success
        assert auto.settle() == Counter()

        # A changed user eval file (observed by the sensor): a new text that one kept conversation contains. The eval
        # sets, everything downstream of them once, and exactly one retrain request.
        kept = storage.read_table(FILTERED_CONVERSATIONS)
        leaked = next(m["content"] for row in kept["messages"].to_list() for m in row
                      if m["role"] == "assistant" and len(m["content"].split()) >= 8)
        eval_file.write_text(json.dumps({"text": EVAL_TEXT}) + "\n" + json.dumps({"text": leaked}) + "\n")
        assert auto.launch([USER_EVAL_FILES]).success
        assert auto.settle() == Counter({"eval_sets": 1, **dict.fromkeys(DATASET[1:], 1), **MIXTURE_CONSUMERS})
        assert leaked not in str(storage.read_table(FILTERED_CONVERSATIONS)["messages"].to_list())

        # A changed user SFT file (observed): the user rows, every dataset asset once, exactly one retrain request.
        sft_file.write_text(user_rows("tides", "glaciers", "volcanoes"))
        assert auto.launch([USER_SFT_FILES]).success
        assert auto.settle() == Counter({"user_sft_sources": 1, **dict.fromkeys(DATASET, 1), **MIXTURE_CONSUMERS})
        assert latest(instance, "user_sft_sources")["dagster/row_count"] == 3
        trained_on_latest(instance, data)
