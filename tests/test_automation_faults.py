"""The retrain loop under real timing and faults, on a real Dagster instance: the project's automation conditions
evaluated as the sensor evaluates them (tests/automation_runs.py), the runs they request really executed on the tiny
model (the fake generator for generation, real TRL training, vLLM for the evaluation). Overlaps are real: a run is
launched in a thread and held inside its asset at a barrier (the stage's core function waits for an event) while
the change lands and the automation ticks; then it is let go. Each scenario starts from a settled instance (a tick
requests nothing), counts the requests, and checks that the final model trained on the latest inputs
(`trained_on_latest`: the input data versions Dagster recorded on `sft_model` are the current ones, and its
`train_rows.parquet` holds exactly the current mixture's conversations). The scenarios share one instance, in order.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.common.orchestration.resources import (
    ASSISTANT_EVALUATION,
    BASE_MODEL_FILES,
    DECONTAMINATED_CONVERSATIONS,
    ENGINE_RETRY,
    JUDGED_MODEL,
    PROMOTED_MODEL,
    SFT_MIXTURE,
    SFT_MODEL,
    TEACHER_MODEL_FILES,
    USER_EVAL_FILES,
    USER_SFT_FILES,
    DataStorage,
)
from assets.decontamination import assets as decontamination_assets
from assets.mixture import assets as mixture_assets
from assets.sft import assets as sft_assets
from tests.automation_runs import Automation, trained_on_latest
from tests.test_automation import (
    DATASET,
    EVAL_TEXT,
    MIXTURE_CONSUMERS,
    NOT_AUTOMATED_HERE,
    generate_shard,
    profile,
    user_rows,
)

pytestmark = pytest.mark.vllm  # the base-model scenario runs the evaluation
SMALL_EVALUATION = {"num_prompts": 2, "short_answers_only": True, "max_tokens": 16, "stop_check_max_tokens": 16,
                    "bootstrap_resamples": 50, "end_of_turn_conversations": 2, "side_by_side": 1,
                    "include_teacher": False}


class World:
    def __init__(self, auto: Automation, data: Path, eval_file: Path, sft_file: Path, base_dir: Path):
        self.auto, self.data, self.eval_file, self.sft_file, self.base_dir = auto, data, eval_file, sft_file, base_dir
        self.storage = DataStorage(root=str(data))
        self.sft_texts = ["tides", "glaciers"]

    def add_user_row(self, text: str) -> None:
        """A changed user SFT file, observed (what the sensor does every 10 minutes)."""
        self.sft_texts.append(text)
        self.sft_file.write_text(user_rows(*self.sft_texts))
        assert self.auto.launch([USER_SFT_FILES]).success


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data, eval_file, sft_file, base_dir = root / "data", root / "eval.jsonl", root / "sft.jsonl", root / "base"
    eval_file.write_text(json.dumps({"text": EVAL_TEXT}) + "\n")
    sft_file.write_text(user_rows("tides", "glaciers"))
    shutil.copytree(tiny_model_dir, base_dir)  # the student's own copy: the base-model scenario changes it
    config = profile(tiny_model_dir, data, eval_file, sft_file)
    config["ops"]["base_model"]["config"]["path"] = str(base_dir)
    config["ops"]["assistant_evaluation"] = {"config": SMALL_EVALUATION}
    config["resources"]["engine"] = {"config": {"max_model_len": 1024, "cpu_kv_cache_gb": 1}}
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        auto = Automation.from_profile(config, instance, skip=NOT_AUTOMATED_HERE)
        assert auto.tick() == []  # the sensor's first tick, before the inputs are first observed
        assert auto.launch([TEACHER_MODEL_FILES, BASE_MODEL_FILES, USER_EVAL_FILES, USER_SFT_FILES]).success
        assert auto.settle()["sft_model"] == 1  # the models, the eval sets, the user rows alone: a first model
        generate_shard(auto, "00000")
        assert auto.settle()["sft_model"] == 1
        yield World(auto, data, eval_file, sft_file, base_dir)


@contextmanager
def held(monkeypatch, module, name: str, auto: Automation, keys: list[dg.AssetKey]):
    """A run of ``keys`` launched in a thread and held inside ``module.name`` (the stage's core call) until the
    block ends; yields once the run is inside. The run's result is appended to the yielded list on exit."""
    entered, release, results = threading.Event(), threading.Event(), []
    original = getattr(module, name)

    def barrier(*args, **kwargs):
        entered.set()
        assert release.wait(600), "the held run was never released"
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, barrier)
    thread = threading.Thread(target=lambda: results.append(auto.launch(keys)))
    thread.start()
    try:
        assert entered.wait(600), "the held run never reached its barrier"
        yield results
    finally:
        release.set()
        thread.join(600)
        monkeypatch.setattr(module, name, original)


def trained_rows_text(instance) -> str:
    metadata = instance.get_latest_materialization_event(SFT_MODEL).asset_materialization.metadata
    return str(pl.read_parquet(Path(metadata["model_dir"].value) / "train_rows.parquet")["messages"].to_list())


def test_eval_file_edited_while_decontamination_runs(world, monkeypatch):
    """(b) A new eval text that a kept conversation contains lands while decontamination runs on the old eval sets:
    decontamination runs once more after that run, and the leak never reaches a trained model."""
    auto, instance = world.auto, world.auto.instance
    assert auto.settle() == Counter()
    leaked = next(m["content"] for row in world.storage.read_table(SFT_MIXTURE)["messages"].to_list() for m in row
                  if m["role"] == "assistant" and len(m["content"].split()) >= 8)
    with held(monkeypatch, decontamination_assets, "decontaminate_shards", auto, [DECONTAMINATED_CONVERSATIONS]):
        assert auto.tick() == []  # decontamination in progress: nothing after it moves
        world.eval_file.write_text(json.dumps({"text": EVAL_TEXT}) + "\n" + json.dumps({"text": leaked}) + "\n")
        assert auto.launch([USER_EVAL_FILES]).success
        assert auto.settle() == Counter({"eval_sets": 1})  # the eval sets are rebuilt; the rest waits
    assert auto.settle() == Counter({**dict.fromkeys(DATASET[1:], 1), **MIXTURE_CONSUMERS})
    trained_on_latest(instance, world.data)
    assert leaked not in trained_rows_text(instance)


def test_training_fails_on_every_attempt(world, monkeypatch):
    """(c) `sft_model` fails on every attempt: its step retries (ENGINE_RETRY) are spent, the automation does not
    request it again tick after tick, and the next change, once the fault is gone, retrains it once."""
    auto, instance = world.auto, world.auto.instance
    assert auto.settle() == Counter()
    attempts = []

    def broken(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("injected: the device went away")

    monkeypatch.setattr(sft_assets, "run_training", broken)
    op = auto.defs.get_assets_def(SFT_MODEL).op  # the same bounded retries, without the 30 s back-off
    monkeypatch.setattr(op, "_retry_policy", dg.RetryPolicy(max_retries=ENGINE_RETRY.max_retries, delay=0.1,
                                                            backoff=dg.Backoff.EXPONENTIAL))
    world.add_user_row("volcanoes")
    assert auto.settle(may_fail=frozenset({SFT_MODEL})) == Counter(
        {"user_sft_sources": 1, **dict.fromkeys(DATASET, 1), **MIXTURE_CONSUMERS})
    assert len(attempts) == 1 + ENGINE_RETRY.max_retries
    monkeypatch.undo()  # the fault is gone
    assert auto.settle() == Counter()  # nothing changed since: not retried every tick
    world.add_user_row("deserts")
    assert auto.settle() == Counter({"user_sft_sources": 1, **dict.fromkeys(DATASET, 1), **MIXTURE_CONSUMERS})
    trained_on_latest(instance, world.data)


def test_shard_added_while_the_mixture_is_built(world, monkeypatch):
    """(a) A new shard lands while the mixture is being built from the old rows: the dataset assets before the
    mixture are rebuilt meanwhile, the mixture once more after its run, and one retrain, on the new rows."""
    auto, instance = world.auto, world.auto.instance
    assert auto.settle() == Counter()
    with held(monkeypatch, mixture_assets, "build_mixture", auto, [SFT_MIXTURE]) as results:
        generate_shard(auto, "00001")
        assert auto.settle() == Counter(dict.fromkeys(DATASET[:-1], 1))  # the mixture is running: training waits
    assert results[0].success
    assert auto.settle() == Counter({"sft_mixture": 1, **MIXTURE_CONSUMERS})
    trained_on_latest(instance, world.data)


def test_two_shards_in_quick_succession(world):
    """(e) Two shards generated one after the other before the automation ticks: one rebuild each, one retrain."""
    auto, instance = world.auto, world.auto.instance
    assert auto.settle() == Counter()
    generate_shard(auto, "00002")
    generate_shard(auto, "00003")
    assert auto.settle() == Counter({**dict.fromkeys(DATASET, 1), **MIXTURE_CONSUMERS})
    trained_on_latest(instance, world.data)


def test_unchanged_rebuild_requests_nothing(world):
    """(g) A shard regenerated byte for byte and the mixture rebuilt by hand: no data version changes, nothing."""
    auto = world.auto
    assert auto.settle() == Counter()
    generate_shard(auto, "00000")
    assert auto.launch([SFT_MIXTURE]).success
    assert auto.settle() == Counter()


def test_base_model_change_retrains_once_and_evaluates_the_final_model(world):
    """(d) The base model changes (new weights in its directory): filtering and the mixture are rebuilt first,
    then one retrain, then one evaluation and one promotion decision, both of that final model; nothing is trained,
    evaluated or promoted on the half-updated dataset. The evaluation and promotion are automated here (vLLM)."""
    from tests.tiny_model import build_tiny_model

    auto, instance = world.auto, world.auto.instance
    assert auto.settle() == Counter()
    auto.skip = frozenset()
    build_tiny_model(world.base_dir, seed=1)  # same tokenizer and template, other weights
    assert auto.launch([BASE_MODEL_FILES]).success
    def versions() -> dict[str, str]:
        return {name: instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.tags[
            "dagster/data_version"] for name in ("filtered_conversations", "sft_mixture")}

    before = versions()
    requested = auto.settle(may_fail=frozenset({PROMOTED_MODEL}))
    after = versions()
    expected = {"base_model": 1, "filtered_conversations": 1, "instruction_difficulty": 1, "sft_mixture": 1,
                "sft_model": 1, "assistant_evaluation": 1, "promoted_model": 1}  # the student scores the rows again
    if after["filtered_conversations"] != before["filtered_conversations"]:
        expected["tagged_conversations"] = 1
    if after["sft_mixture"] != before["sft_mixture"]:
        expected["sft_dataset"] = 1  # the export follows the mixture's data, not the base model
    assert requested == Counter(expected)
    trained_on_latest(instance, world.data)
    (model,) = instance.fetch_materializations(SFT_MODEL, limit=1).records
    evaluation = instance.get_latest_materialization_event(ASSISTANT_EVALUATION).asset_materialization.metadata
    assert evaluation[JUDGED_MODEL].value == model.storage_id  # the evaluation judged the final model
    assert auto.settle() == Counter()
