"""Peak RSS of filtering and tagging at one table size, on the scale benchmark's synthetic table (benchmarks/
scale_data.py, 10k-row shards) written straight in as `decontaminated_conversations`: no dedup or decontamination run
first (at 1M rows those take hours on a 2-core box), model manifests that name only their special tokens (all
filtering reads of them; tagging runs without the judge). Each stage is the scale benchmark's worker (one Dagster run
of the project's job, `benchmarks/scale.py --worker`), cold (its asset folder removed first); its peak is the
kernel's maximum RSS of that process (``wait4``), the figure `/usr/bin/time -f %M` prints.

    python benchmarks/stage_memory.py --rows 100000                     # filtering, then tagging
    python benchmarks/stage_memory.py --rows 1000000 --stage filtering

The shards are generated once into ``<root>/shards`` (the eval leaks get placeholder texts: no eval set is read).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale import STAGES  # noqa: E402
from benchmarks.scale_data import SHARD_ROWS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]


def shards(base: Path, count: int) -> list[Path]:
    from assets.common.data.storage import write_parquet_atomic
    from benchmarks.scale_data import Generator

    paths = [base / "shards" / f"shard-{k:05d}.parquet" for k in range(count)]
    generator = None
    for k, path in enumerate(paths):
        if not path.exists():
            generator = generator or Generator([" ".join(f"eval{i}w{j}" for j in range(30)) for i in range(50)])
            path.parent.mkdir(parents=True, exist_ok=True)
            write_parquet_atomic(generator.shard(k)[0], path)
    return paths


def prepare(base: Path, rows: int) -> Path:
    """``<base>/rows-<rows>``: the manifests and the table as `decontaminated_conversations` (written once)."""
    import polars as pl

    from assets.common.orchestration.resources import DataStorage

    root = base / f"rows-{rows}"
    storage = DataStorage(root=str(root))
    if not storage.has("decontaminated_conversations", "data"):
        for asset in ("teacher_model", "base_model"):
            storage.write_json(asset, "manifest", {"path": "-", "name": asset, "special_tokens": SPECIAL_TOKENS})
        table = pl.concat([pl.read_parquet(p) for p in shards(base, rows // SHARD_ROWS)])
        storage.write_table("decontaminated_conversations", table)
    return root


def run(root: Path, stage: str) -> dict:
    shutil.rmtree(root / STAGES[stage], ignore_errors=True)
    out, load = root / f".memory-{stage}.json", os.getloadavg()
    with open(root / f".memory-{stage}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--worker", stage, "--data",
                                 str(root), "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
    result = json.loads(out.read_text()) if status == 0 else {"success": False, "seconds": None}
    return {"stage": stage, "rows_root": str(root), "success": result["success"], "seconds": result["seconds"],
            "cpu_s": result.get("cpu_s"), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2), "load_before": load,
            "load_after": os.getloadavg(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="table size (a multiple of 10,000)")
    parser.add_argument("--stage", nargs="+", choices=["filtering", "tagging"], default=["filtering", "tagging"])
    parser.add_argument("--root", default=str(REPO / "data" / "stage-memory"))
    args = parser.parse_args()
    if args.rows % SHARD_ROWS:
        raise SystemExit(f"--rows must be a multiple of {SHARD_ROWS}, got {args.rows}")
    root = prepare(Path(args.root).resolve(), args.rows)
    for stage in args.stage:  # tagging reads what filtering wrote: run filtering first once
        print(json.dumps({"rows": args.rows, **run(root, stage)}), flush=True)


if __name__ == "__main__":
    main()
