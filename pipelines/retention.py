"""`python -m pipelines.retention --keep-runs N [--caches] [--dry-run] [--root DIR]`: remove what the data root no
longer needs.

Removed: table and report versions, model directories and working files (checkpoints, temporary files) that nothing
kept references; kept: every current version (``CURRENT``), the promoted model, every model directory the last N
runs' ``sft_model`` materializations name (with every path in their metadata), and everything a kept JSON version or
a kept model's ``lineage.json`` names, transitively (the rules: ``assets/common/data/retention.py``). A run counts
when it
materialized an asset (observation-only runs do not). With ``--caches``, also the cache entries no build of the
current inputs would read: filtering's and tagging's shard results and the mixture's token counts that their
stage's last build did not name in the folder's ``IN_USE.json``, and the embedding cache of every model whose hash no
kept version, run or model names (the rules, and why no output changes: ``assets/common/data/caches.py``). Prints the
bytes freed, per cache too (with ``--dry-run``: what would be freed, nothing removed). Refuses while a run is queued
or in progress: a version written but not yet made current would look unreferenced, and a cache entry a build is
reading could go. The instance is ``DAGSTER_HOME``'s; the data root the Definitions' (``SFT_DATA_ROOT`` or the
profile's ``storage.root``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from assets.common.data.retention import RetentionPlan, apply_retention, path_strings, plan_retention

ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
          dg.DagsterRunStatus.CANCELING]
PAGE = 100


@dataclass(frozen=True)
class KeptRun:
    run_id: str
    started: float  # seconds since the epoch (the run's creation when it never started)
    texts: list[str]  # every string of its materializations' metadata


def recent_runs(instance: dg.DagsterInstance, keep_runs: int) -> list[KeptRun]:
    """The last ``keep_runs`` runs that materialized an asset, newest first, with their metadata's strings."""
    kept: list[KeptRun] = []
    cursor = None
    while len(kept) < keep_runs:
        records = instance.get_run_records(limit=PAGE, cursor=cursor)
        for record in records:
            events = instance.get_records_for_run(record.dagster_run.run_id,
                                                  of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
            if events and len(kept) < keep_runs:
                started = record.start_time or record.create_timestamp.timestamp()
                kept.append(KeptRun(record.dagster_run.run_id, started, _metadata_strings(events)))
        if len(records) < PAGE:
            break
        cursor = records[-1].dagster_run.run_id
    return kept


def _metadata_strings(events) -> list[str]:
    texts: list[str] = []
    for event in events:
        materialization = event.event_log_entry.dagster_event.event_specific_data.materialization
        for entry in materialization.metadata.values():
            value = getattr(entry, "value", None)
            if isinstance(value, str | dict | list):
                texts += path_strings(value)
    return texts


def active_runs(instance: dg.DagsterInstance) -> list[str]:
    return [r.run_id for r in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE))]


def retain(instance: dg.DagsterInstance, root: str | Path, keep_runs: int, dry_run: bool = False,
           caches: bool = False) -> RetentionPlan:
    """Plan retention for ``root`` against the instance's last ``keep_runs`` runs (``caches``: and its caches) and,
    unless ``dry_run``, apply it: only while no run is queued or in progress (checked before planning and again
    before removing), and never to a file changed after the first check."""
    if keep_runs < 0:
        raise ValueError(f"--keep-runs {keep_runs}: must be 0 or more (the runs whose outputs are kept)")
    checked = time.time()
    _refuse_if_active(instance)
    runs = recent_runs(instance, keep_runs)
    referenced = [(text, f"run {run.run_id}") for run in runs for text in run.texts]
    plan = plan_retention(root, referenced, keep_work_since=min((r.started for r in runs), default=None),
                          caches=caches)
    if not dry_run:
        _refuse_if_active(instance)
        apply_retention(plan, unchanged_since=checked)
    return plan


def _refuse_if_active(instance: dg.DagsterInstance) -> None:
    active = active_runs(instance)
    if active:
        raise RuntimeError(f"runs {active} are queued or in progress: a version they write is unreferenced until "
                           "it is made current, so retention would remove it. Run retention when they are done")


def _default_root() -> Path:
    from pipelines.definitions import PROFILE, resources

    return resources(PROFILE)["storage"].root_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.retention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-runs", type=int, required=True, help="keep what the last N materializing runs wrote")
    parser.add_argument("--caches", action="store_true",
                        help="also remove cache entries (shard results, token counts, embeddings) no build of the "
                             "current inputs would read")
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed; remove nothing")
    parser.add_argument("--root", help="the data root (default: the Definitions' storage root)")
    parser.add_argument("--list", action="store_true", help="print every path removed (or that would be)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve() if args.root else _default_root()
    with dg.DagsterInstance.get() as instance:
        try:
            plan = retain(instance, root, args.keep_runs, args.dry_run, args.caches)
        except (RuntimeError, ValueError, FileNotFoundError) as error:
            print(f"retention: {error}", file=sys.stderr)
            return 1
    summary = plan.summary()
    paths = summary.pop("removed_paths")
    print(json.dumps(summary, indent=2))
    if args.list:
        print("\n".join(paths))
    verb = "would free" if args.dry_run else "freed"
    for cache, counts in summary.get("caches", {}).items():
        print(f"{cache}: {verb} {counts['bytes_freed']:,} bytes ({counts['entries_removed']} entries removed, "
              f"{counts['entries_kept']} kept)")
    print(f"{verb} {plan.bytes_freed:,} bytes ({plan.bytes_freed / 1024**3:.2f} GB) in {len(paths)} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
