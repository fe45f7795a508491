"""Driving the project's automation in a real Dagster instance, as the automation sensor would: evaluate every
automation condition (`dg.evaluate_automation_conditions`, the sensor's own evaluation, cursor carried from tick to
tick), launch what it requests as the sensor does (one run of the requested assets and their checks, no run config:
the profile's defaults apply), and repeat until a tick requests nothing."""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path

import dagster as dg
import yaml

from pipelines.definitions import build_definitions

# Ticks one second apart from here: no 10-minute cron boundary is crossed, so external inputs are observed only when
# a test observes them (`observe`).
START = datetime.datetime(2026, 1, 5, 3, 0, 30, tzinfo=datetime.UTC)


def write_profile(path: Path, profile: dict) -> Path:
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    return [str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]


class Automation:
    """One Definitions (built from a profile) and one instance; ``settle`` ticks until nothing is requested."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, skip: frozenset = frozenset()):
        self.instance = instance
        self.cursor = None
        self.ticks = 0
        self.skip = skip  # assets whose conditions are not evaluated (not automated in this test)
        self.use(defs)

    def use(self, defs: dg.Definitions) -> None:
        """Evaluate ``defs`` from now on (a new code location version), keeping the cursor."""
        self.defs = defs
        self.keys = list(defs.resolve_asset_graph().toposorted_asset_keys)
        self.job = defs.resolve_implicit_global_asset_job_def()

    @classmethod
    def from_profile(cls, profile: dict, instance: dg.DagsterInstance, skip: frozenset = frozenset()) -> Automation:
        return cls(build_definitions(profile, "test profile"), instance, skip)

    def tick(self, evaluation_time: datetime.datetime | None = None) -> list[dg.AssetKey]:
        """One evaluation of every automation condition; the asset keys it requests (in topological order)."""
        time = evaluation_time or START + datetime.timedelta(seconds=self.ticks)
        self.ticks += 1
        selection = dg.AssetSelection.all(include_sources=True) - dg.AssetSelection.assets(*self.skip)
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor,
                                                   evaluation_time=time, asset_selection=selection)
        self.cursor = result.cursor
        return [key for key in self.keys if result.get_num_requested(key)]

    def launch(self, keys: list[dg.AssetKey], **kwargs) -> dg.ExecuteInProcessResult:
        """A run of ``keys`` and their checks, with no run config (what the sensor launches)."""
        return self.job.execute_in_process(asset_selection=keys, instance=self.instance, raise_on_error=False,
                                           **kwargs)

    def settle(self, max_ticks: int = 20, may_fail: frozenset = frozenset()) -> Counter:
        """Tick and launch what is requested until a tick requests nothing; how often each asset was requested. A
        run that requested one of ``may_fail`` may fail."""
        requested: Counter = Counter()
        for _ in range(max_ticks):
            keys = self.tick()
            if not keys:
                return requested
            requested.update(key.to_user_string() for key in keys)
            result = self.launch(keys)
            assert result.success or may_fail & set(keys), failures(result)
        raise AssertionError(f"automation did not settle in {max_ticks} ticks: {requested}")


def latest_tags(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    """The tags Dagster recorded on the latest materialization of ``key`` (its data version, code version, and the
    data version of each input it was built from)."""
    return dict(instance.get_latest_materialization_event(key).asset_materialization.tags or {})


def trained_on_latest(instance: dg.DagsterInstance, storage_root: Path) -> dict:
    """Asserts the latest `sft_model` was trained on the current mixture and base model: the input data versions
    Dagster recorded on it are the inputs' current data versions (their content hashes), and its model directory's
    `train_rows.parquet` holds exactly the current mixture's conversations. Returns its lineage.json."""
    import json

    import polars as pl

    from assets.common.orchestration.resources import BASE_MODEL, SFT_MIXTURE, SFT_MODEL, DataStorage

    tags = latest_tags(instance, SFT_MODEL)
    for key in (SFT_MIXTURE, BASE_MODEL):
        current = latest_tags(instance, key)["dagster/data_version"]
        assert tags[f"dagster/input_data_version/{key.to_user_string()}"] == current, key
    storage = DataStorage(root=str(storage_root))
    mixture_hash = storage.describe_table(SFT_MIXTURE).content_hash
    assert latest_tags(instance, SFT_MIXTURE)["dagster/data_version"] == mixture_hash
    metadata = instance.get_latest_materialization_event(SFT_MODEL).asset_materialization.metadata
    model_dir = Path(metadata["model_dir"].value)
    trained = set(pl.read_parquet(model_dir / "train_rows.parquet")["conversation_id"].to_list())
    assert trained == set(storage.read_table(SFT_MIXTURE)["conversation_id"].to_list())
    lineage = json.loads((model_dir / "lineage.json").read_text())
    assert lineage["base_model"]["content_hash"] == storage.read_json(BASE_MODEL, "manifest")["content_hash"]
    return lineage
