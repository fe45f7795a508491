"""The blocking check ``no_eval_overlap`` (assets/decontamination/verify.py) against an earlier version of it, in one
run (by hand, not in CI).

    python benchmarks/decontamination_check.py                          # 10k and 100k rows; old: main's verify.py
    python benchmarks/decontamination_check.py --rows 10000 --old-ref HEAD~1
    python benchmarks/decontamination_check.py --rows 100000 --skip-old

The table is the scale benchmark's synthetic one (benchmarks/scale_data.py: shards 0..k-1 of 10,000 rows, 0.2% of
rows an eval text) against every bundled eval set, sorted as the ``eval_sets`` asset writes it. As in the pipeline,
the check gets the rows the removal kept, the rows it rejected and its report (the removal's default settings,
``DecontamConfig``): here the rejected rows are those the current check flags on the whole table (the planted
leaks), so the check passes and reads every row, as it does on a clean table. Per size and version:
``verify_decontaminated``'s wall and CPU seconds (the eval index, built once per call, included; its own time is
printed once per version) and rows/s; the two verdicts must be equal. At the smallest size, ``find_leaks`` over
the whole table with no limit (every leak, the check's parameters) must also give equal lists in both versions.

The old version is ``git show <old-ref>:assets/decontamination/verify.py`` loaded as a module (it imports the
current ``verify_semantic``). The last line is ``key=value`` pairs: rows/s per size and version, the ratio
new/old of rows/s per size, and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from assets.decontamination import verify as new  # noqa: E402
from assets.decontamination.config import DecontamConfig  # noqa: E402
from assets.eval_sets.core import load_bundled_eval_sets  # noqa: E402
from benchmarks.common import load_average  # noqa: E402
from benchmarks.scale_data import SHARD_ROWS, Generator  # noqa: E402


def old_module(ref: str):
    """``assets/decontamination/verify.py`` at git ``ref``, imported as the module ``verify_old``."""
    source = subprocess.run(["git", "show", f"{ref}:assets/decontamination/verify.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "verify_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("verify_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["verify_old"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000],
                        help=f"table sizes, multiples of {SHARD_ROWS}")
    parser.add_argument("--old-ref", default="main", help="git revision of the version compared with")
    parser.add_argument("--skip-old", action="store_true", help="time the current version only")
    args = parser.parse_args()
    sizes = sorted(args.rows)
    if any(rows <= 0 or rows % SHARD_ROWS for rows in sizes):
        raise SystemExit(f"--rows must be positive multiples of {SHARD_ROWS}, got {sizes}")

    eval_sets = load_bundled_eval_sets().sort("benchmark", "item_id", "field")
    generator = Generator(eval_sets["text"].to_list())
    start = time.perf_counter()
    table = pl.concat([generator.shard(shard)[0] for shard in range(sizes[-1] // SHARD_ROWS)])
    print(f"table: {table.height} rows generated in {time.perf_counter() - start:.1f} s; "
          f"eval sets: {eval_sets.height} texts; load {load_average()}", flush=True)
    report = {"config": DecontamConfig().to_json()}
    parameters, _, _ = new.check_parameters(report["config"])
    versions = {"new": new} if args.skip_old else {"new": new, "old": old_module(args.old_ref)}
    for name, module in versions.items():
        _, wall, cpu = timed(module.eval_keys, eval_sets, parameters["n"], parameters["min_words"],
                             parameters["max_ngram_items"])
        print(f"{name}: eval_keys {wall:.1f} s ({cpu:.1f} CPU s)", flush=True)

    results: dict[str, float] = {}
    for rows in sizes:
        rows_table = table.head(rows)
        flagged, wall, _ = timed(new.find_leaks, rows_table, eval_sets, **parameters, limit=None)
        print(f"{rows} rows: {len(flagged)} flagged by the current check on the whole table ({wall:.1f} s)",
              flush=True)
        if rows == sizes[0] and "old" in versions:
            old_flagged, old_wall, _ = timed(versions["old"].find_leaks, rows_table, eval_sets, **parameters,
                                             limit=None)
            if old_flagged != flagged:
                raise SystemExit(f"find_leaks differs at {rows} rows:\nnew {flagged}\nold {old_flagged}")
            print(f"{rows} rows: find_leaks (no limit) equal in both versions ({old_wall:.1f} s old)", flush=True)
        ids = [leak.conversation_id for leak in flagged]
        kept = rows_table.filter(~pl.col("conversation_id").is_in(ids))
        rejected = rows_table.filter(pl.col("conversation_id").is_in(ids))
        verdicts = {}
        for name, module in versions.items():
            load = load_average()
            verdict, wall, cpu = timed(module.verify_decontaminated, kept, rejected, eval_sets,
                                       {**report, "rows_in": rows})
            verdicts[name] = dataclasses.asdict(verdict)
            results[f"{name}_{rows}_rows_per_s"] = rows / wall
            print(f"{rows} rows, {name}: verify_decontaminated {wall:.1f} s ({cpu:.1f} CPU s), "
                  f"{rows / wall:,.0f} rows/s ({wall / rows * 1e3:.3f} ms a row), passed={verdict.passed}; "
                  f"load {load} -> {load_average()}", flush=True)
        if "old" in verdicts:
            if verdicts["old"] != verdicts["new"]:
                raise SystemExit(f"verdicts differ at {rows} rows:\nnew {verdicts['new']}\nold {verdicts['old']}")
            results[f"ratio_{rows}"] = results[f"new_{rows}_rows_per_s"] / results[f"old_{rows}_rows_per_s"]
    print(" ".join(f"{key}={value:.2f}" for key, value in results.items()) + f" load={load_average()}")


if __name__ == "__main__":
    main()
