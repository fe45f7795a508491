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

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.instance = instance
        self.cursor = None
        self.ticks = 0
        self.use(defs)

    def use(self, defs: dg.Definitions) -> None:
        """Evaluate ``defs`` from now on (a new code location version), keeping the cursor."""
        self.defs = defs
        self.keys = list(defs.resolve_asset_graph().toposorted_asset_keys)
        self.job = defs.resolve_implicit_global_asset_job_def()

    @classmethod
    def from_profile(cls, profile: dict, instance: dg.DagsterInstance) -> Automation:
        return cls(build_definitions(profile, "test profile"), instance)

    def tick(self, evaluation_time: datetime.datetime | None = None) -> list[dg.AssetKey]:
        """One evaluation of every automation condition; the asset keys it requests (in topological order)."""
        time = evaluation_time or START + datetime.timedelta(seconds=self.ticks)
        self.ticks += 1
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor,
                                                   evaluation_time=time)
        self.cursor = result.cursor
        return [key for key in self.keys if result.get_num_requested(key)]

    def launch(self, keys: list[dg.AssetKey], **kwargs) -> dg.ExecuteInProcessResult:
        """A run of ``keys`` and their checks, with no run config (what the sensor launches)."""
        return self.job.execute_in_process(asset_selection=keys, instance=self.instance, raise_on_error=False,
                                           **kwargs)

    def settle(self, max_ticks: int = 20) -> Counter:
        """Tick and launch what is requested until a tick requests nothing; how often each asset was requested."""
        requested: Counter = Counter()
        for _ in range(max_ticks):
            keys = self.tick()
            if not keys:
                return requested
            requested.update(key.to_user_string() for key in keys)
            launched = [key for key in keys if not self.stop_at(key)]
            if launched:
                result = self.launch(launched)
                assert result.success, failures(result)
        raise AssertionError(f"automation did not settle in {max_ticks} ticks: {requested}")

    stop_requested: frozenset = frozenset()  # keys counted when requested but not run (e.g. training)

    def stop_at(self, key: dg.AssetKey) -> bool:
        return key in self.stop_requested
