"""Every CPU stage at scale, as Dagster materializations: a synthetic conversation table (benchmarks/scale_data.py) of
``--rows`` rows in generation shards of 10,000 rows, materialized through dedup -> decontamination -> filtering ->
tagging (judge off; language ID and the refusal rule on) -> mixture (unit: tokens) -> the training tokenization and
masking (`training.dataset.tokenize_rows`, as `sft_model` calls it before training; not a Dagster asset, timed alone).

Each stage runs in its own process (``--worker``) on a real, ephemeral Dagster instance with the project's
Definitions (`pipelines.definitions.build_definitions`: every asset, its asset checks, the resources), one run of the
project's job selecting that stage's asset, its checks included (blocking ones too); every other knob is the
stage's own default (the `dg.Config` defaults), so a detector added to a stage's settings is measured once it is on
by default. Overrides: ``STAGE_CONFIG``. The parent samples the peak RSS of the worker and its children, the bytes
written under the data root and the load average.

    python benchmarks/scale.py --rows 100000             # every stage, cold (each stage's outputs removed first)
    python benchmarks/scale.py --rows 100000 --stage decontamination   # one stage, on the cached upstream outputs
    python benchmarks/scale.py --rows 100000 --incremental   # one new 10k shard into the table vs that shard alone
    python benchmarks/scale.py --report                  # the table, the chart and the key=value line

Data roots under ``--root`` (default data/scale): ``models`` (teacher, student, eval sets, materialized once by their
own assets), ``shards`` (the generated shards, cached), ``rows-<N>`` (one table size), ``rows-<N>-plus`` (a
hard-link copy of rows-<N> plus its next shard: every stored file is written by rename, never in place) and
``shard-<k>`` (that shard alone). Results append to ``<root>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale_data import SHARD_ROWS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# stage -> the asset it materializes (None: the training tokenization, no asset)
STAGES = {"dedup": "deduplicated_conversations", "decontamination": "decontaminated_conversations",
          "filtering": "filtered_conversations", "tagging": "tagged_conversations", "mixture": "sft_mixture",
          "tokenization": None}
# What the benchmark sets besides each stage's defaults (everything else: the stage's own dg.Config defaults).
STAGE_CONFIG = {"tagged_conversations": {"use_judge": False}, "sft_mixture": {"unit": "tokens"}}
MODEL_ASSETS = ("teacher_model", "base_model", "eval_sets")


# ---- inside the worker process -------------------------------------------------------------------------------
def _definitions(root: Path):
    os.environ.pop("SFT_DATA_ROOT", None)  # the profile's storage root below is the one used
    os.environ.pop("SFT_PROFILE", None)
    from pipelines.definitions import build_definitions

    return build_definitions({"resources": {"storage": {"config": {"root": str(root)}}}}, "scale benchmark")


def materialize(root: Path, assets: list[str]) -> dict:
    """One run of the project's global asset job selecting ``assets`` (and their checks) on an ephemeral instance."""
    import dagster as dg

    defs = _definitions(root)
    job = defs.resolve_implicit_global_asset_job_def()
    run_config = {"ops": {a: {"config": STAGE_CONFIG[a]} for a in assets if a in STAGE_CONFIG}}
    start, cpu = time.perf_counter(), time.process_time()
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(asset_selection=[dg.AssetKey(a) for a in assets], instance=instance,
                                        run_config=run_config, raise_on_error=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    metadata, checks = {}, {}
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        metadata[event.asset_key.to_user_string()] = {
            k: getattr(meta[k], "value", meta[k]) for k in ("dagster/row_count", "rows_in", "parameters")
            if k in meta}
    for event in result.get_asset_check_evaluations():
        checks[event.check_name] = event.passed
    errors = [str(e.event_specific_data.error.message)[:2000] for e in result.all_events if e.is_step_failure]
    return {"seconds": seconds, "cpu_s": cpu, "success": result.success, "metadata": metadata, "checks": checks,
            "errors": errors}


def tokenize(root: Path) -> dict:
    """The training tokenization and masking of the mixture, as `training.trainer.train` runs it before training."""
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import read_chat_template
    from assets.common.orchestration.resources import DataStorage
    from training.config import TrainConfig
    from training.dataset import tokenize_rows, train_rows_table

    storage = DataStorage(root=str(root))
    start, cpu = time.perf_counter(), time.process_time()
    base = storage.read_json("base_model", "manifest")["path"]
    rows = train_rows_table(storage.read_conversations("sft_mixture"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = tokenize_rows(tokenizer, rows, read_chat_template(base), TrainConfig().max_length)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "success": True, "rows_in": rows.height,
            "metadata": {"train": len(data.train), "validation": len(data.validation), "dropped": data.dropped()},
            "checks": {}, "errors": []}


def worker(root: Path, stage: str) -> dict:
    import resource

    result = tokenize(root) if STAGES[stage] is None else materialize(root, [STAGES[stage]])
    usage = {who: resource.getrusage(w).ru_maxrss / 1024**2
             for who, w in (("self", resource.RUSAGE_SELF), ("children", resource.RUSAGE_CHILDREN))}
    return {**result, "maxrss_gb": usage}


# ---- the parent: data roots, one process per stage, measurements ------------------------------------------------
def _files(root: Path) -> dict[str, tuple]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            out[str(path)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def bytes_written(before: dict, after: dict) -> int:
    return sum(entry[1] for path, entry in after.items() if before.get(path) != entry)


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1024**3


def run_stage(root: Path, stage: str, rows: int, mode: str, results: Path, cold: bool) -> dict:
    """``stage`` in its own worker process on ``root``; its measurements, appended to ``results``."""
    asset = STAGES[stage]
    if cold and asset is not None:
        shutil.rmtree(root / asset, ignore_errors=True)  # its tables and incremental state: a full, cold build
    before, load_before = _files(root), os.getloadavg()
    out_file = root / f".worker-{stage}.json"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", stage, "--data", str(root), "--out", str(out_file)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(root / f".worker-{stage}.log", "w"))
    sampler = PeakRSS(proc.pid)
    code = proc.wait()
    peak = sampler.stop()
    wall = time.perf_counter() - start
    result = json.loads(out_file.read_text()) if out_file.exists() and code == 0 else {
        "success": False, "seconds": None, "errors": [f"worker exited {code}; see {root}/.worker-{stage}.log"]}
    out_file.unlink(missing_ok=True)
    peak = max(peak, (result.get("maxrss_gb") or {}).get("self", 0))
    record = {"rows": rows, "stage": stage, "mode": mode, "root": str(root), **result, "process_s": wall,
              "peak_rss_gb": peak, "bytes_written": bytes_written(before, _files(root)),
              "load_before": load_before, "load_after": os.getloadavg(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime())}
    with results.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(f"{rows:>9} {mode:<11} {stage:<15} {'ok ' if record['success'] else 'FAILED'} "
          f"{record['seconds'] or 0:8.1f} s  peak {peak:5.2f} GB  wrote {record['bytes_written'] / 1e6:8.1f} MB  "
          f"load {'/'.join(f'{x:.1f}' for x in load_before)}", flush=True)
    if not record["success"]:
        print("   " + "\n   ".join(record.get("errors") or []), flush=True)
    return record


def prepare_models(base: Path) -> Path:
    """The teacher and student manifests and the eval sets, materialized once by their own assets."""
    models = base / "models"
    if not all((models / a).is_dir() for a in MODEL_ASSETS):
        result = materialize(models, list(MODEL_ASSETS))
        if not result["success"]:
            raise SystemExit(f"preparing the models failed: {result['errors']}")
    return models


def shard_file(base: Path, generator_box: list, shard: int) -> Path:
    """The cached generated shard ``shard`` (generated once)."""
    path = base / "shards" / f"shard-{shard:05d}.parquet"
    if not path.exists():
        from assets.common.data.storage import write_parquet_atomic

        if not generator_box:
            from assets.common.data.storage import read_parquet
            from benchmarks.scale_data import Generator

            evals = read_parquet(next((base / "models" / "eval_sets" / "data").glob("*.parquet")))
            generator_box.append(Generator(evals["text"].to_list()))
        path.parent.mkdir(parents=True, exist_ok=True)
        table, shape = generator_box[0].shard(shard)
        write_parquet_atomic(table, path)
        (path.with_suffix(".json")).write_text(json.dumps(shape.to_dict(), sort_keys=True))
    return path


def prepare_root(base: Path, root: Path, shards: list[int]) -> None:
    """``root`` with the model manifests, the eval sets and generation shards ``shards`` (as `magpie_conversations`
    writes them: one table and one report per shard)."""
    from assets.common.data.storage import read_parquet
    from assets.common.orchestration.resources import DataStorage

    models, storage = DataStorage(root=str(prepare_models(base))), DataStorage(root=str(root))
    if not storage.has("eval_sets", "data"):
        for asset in ("teacher_model", "base_model"):
            storage.write_json(asset, "manifest", models.read_json(asset, "manifest"))
        storage.write_table("eval_sets", models.read_table("eval_sets"))
    box: list = []
    for shard in shards:
        key = f"{shard:05d}"
        if storage.has("magpie_conversations", f"shard-{key}"):
            continue
        table = read_parquet(shard_file(base, box, shard))
        storage.write_table("magpie_conversations", table, name=f"shard-{key}")
        storage.write_json("magpie_conversations", f"report-{key}",
                           {"shard": shard, "stats": {"attempted": table.height, "dropped": {}}, "synthetic": True})


def run_size(base: Path, rows: int, stages: list[str], results: Path) -> None:
    if rows % SHARD_ROWS:
        raise SystemExit(f"--rows must be a multiple of the shard size {SHARD_ROWS}, got {rows}")
    root = base / f"rows-{rows}"
    prepare_root(base, root, list(range(rows // SHARD_ROWS)))
    for stage in stages:
        if not run_stage(root, stage, rows, "full", results, cold=True)["success"]:
            break


def run_incremental(base: Path, rows: int, results: Path) -> None:
    """Shard k = rows / 10k (the table's next shard): each stage on the table plus shard k (warm: the table's
    outputs and incremental state kept), then on shard k alone (cold), stage by stage in turn."""
    root, new = base / f"rows-{rows}", rows // SHARD_ROWS
    if not (root / "sft_mixture").is_dir():
        raise SystemExit(f"{root}: run the full size first (python benchmarks/scale.py --rows {rows})")
    plus, alone = base / f"rows-{rows}-plus", base / f"shard-{new}"
    for path in (plus, alone):
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["cp", "-al", str(root), str(plus)], check=True)  # hard links: every file is written by rename
    prepare_root(base, plus, [new])
    prepare_root(base, alone, [new])
    for stage in STAGES:
        added = run_stage(plus, stage, rows, "incremental", results, cold=False)
        single = run_stage(alone, stage, rows, "shard_alone", results, cold=True)
        if not (added["success"] and single["success"]):
            break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="table size (a multiple of 10,000)")
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--incremental", action="store_true", help="a new shard into the table vs that shard alone")
    parser.add_argument("--report", action="store_true", help="the table, chart and key=value line from the results")
    parser.add_argument("--root", default=str(REPO / "data" / "scale"))
    parser.add_argument("--chart", default=str(REPO / "docs" / "scale.png"))
    parser.add_argument("--worker", choices=list(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(Path(args.data), args.worker), default=str))
        return
    base = Path(args.root).resolve()
    base.mkdir(parents=True, exist_ok=True)
    results = base / "results.jsonl"
    if args.rows:
        if args.incremental:
            run_incremental(base, args.rows, results)
        else:
            run_size(base, args.rows, list(STAGES) if args.stage == "all" else [args.stage], results)
    if args.report or not args.rows:
        from benchmarks.scale_report import report

        report(results, Path(args.chart))


if __name__ == "__main__":
    main()
