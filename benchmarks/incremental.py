"""A new shard into a large table, per stage: the incremental build against the same stage on that shard alone
(run by hand, not in CI).

    python benchmarks/incremental.py                          # 100k rows + a 10k-row shard
    python benchmarks/incremental.py --rows 20000 --shard-rows 2000 --stages filtering,tagging   # quick

The table is ``benchmarks/dedup.py``'s synthetic corpus (~1.1k characters per conversation, 10% planted
near-duplicates, 1% planted eval leaks) cut into shards of ``--shard-rows`` rows and read back from Parquet as an
asset reads it (in chunks). Per stage and round, the state holding every shard but the last is copied, then:

* ``decontamination``: ``decontaminate_shards`` on the whole table (both detectors, outputs included) against
  ``decontaminate`` of the last shard;
* ``filtering``: ``filter_shards`` on the whole table against ``apply_filters`` of the last shard;
* ``tagging`` (no judge; fastText language ID, refusal rule): ``tag_shards`` on the whole table, then the table-wide
  parts (label rules, label distributions, refusal rates, diversity of the kept rows) against the same on the last
  shard alone (``tag_and_filter`` and the same reports);
* ``tokens`` (the mixture's ``unit: tokens``): ``CachedTokenCounts.table`` of the whole table with every other
  shard's counts kept, against counting the last shard with an empty cache (``--model``: a model directory with a
  tokenizer and chat template; default the test suite's tiny model, built once into ``--work``).

The timed calls return the output frame; its Parquet bytes (what the asset then writes, for every row of the table)
are timed apart, once: that write, and the asset's read of its input table, grow with the table whatever the stage
keeps per shard. Outputs are checked equal to a full build byte for byte (``--skip-full-check``: not). The last
line is ``key=value``: ``<stage>_ratio`` (median
over ``--repeat`` rounds of incremental seconds over the shard-alone seconds), ``worst_ratio`` and the load average.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.decontamination.config import DecontamConfig  # noqa: E402
from assets.decontamination.incremental import decontaminate_shards  # noqa: E402
from assets.decontamination.index import EvalIndex  # noqa: E402
from assets.decontamination.removal import decontaminate  # noqa: E402
from assets.filtering.core import FilterConfig, apply_filters  # noqa: E402
from assets.filtering.incremental import filter_shards  # noqa: E402
from assets.tagging.config import TaggingConfig  # noqa: E402
from assets.tagging.core import JudgeProvenance, label_distributions, refusal_rates, tag_and_filter  # noqa: E402
from assets.tagging.diversity import diversity_report  # noqa: E402
from assets.tagging.incremental import tag_shards  # noqa: E402
from assets.tagging.judge import no_judge_labels  # noqa: E402
from assets.tagging.labels import filter_on_labels  # noqa: E402
from benchmarks.common import load_average  # noqa: E402
from benchmarks.dedup import make_corpus, make_eval, plant_contamination  # noqa: E402

STAGES = ("decontamination", "filtering", "tagging", "tokens")


def _bytes(df: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return buffer.getvalue()


def _table(rows: int, shard_rows: int, work: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The sharded table (read back from Parquet) and the eval set, cached in ``work``."""
    path, eval_path = work / f"table-{rows}-{shard_rows}.parquet", work / f"eval-{rows}.parquet"
    if not path.exists():
        df, vocab, _ = make_corpus(rows, 0.1, 0)
        eval_df = make_eval(vocab, 5000, 1)
        contaminated, _ = plant_contamination(df, eval_df, 0.01, 2)
        contaminated.with_columns((pl.col("row_index") // shard_rows).alias("shard"),
                                  pl.lit(["stop", "stop"]).alias("finish_reasons")).write_parquet(path)
        eval_df.write_parquet(eval_path)
    return pl.read_parquet(path), pl.read_parquet(eval_path)


def _tagging_reports(tagged: pl.DataFrame, kept: pl.DataFrame) -> None:
    label_distributions(tagged)
    refusal_rates(tagged)
    diversity_report(kept)


def _stage(name: str, eval_df: pl.DataFrame, model: Path | None, work: Path):
    """(incremental call(table, state) -> its output frame, shard-alone call(shard), full build(table) -> output
    frame) of one stage; the output is what the asset writes as its table (the tagging's kept rows, the counts)."""
    if name == "decontamination":
        index = EvalIndex.build(eval_df, DecontamConfig())
        return (lambda df, state: decontaminate_shards(df, index, state).kept,
                lambda shard: decontaminate(shard, index),
                lambda df: decontaminate(df, index)[0])
    if name == "filtering":
        cfg = FilterConfig()
        return (lambda df, state: filter_shards(df, cfg, state).result.kept,
                lambda shard: apply_filters(shard, cfg),
                lambda df: apply_filters(df, cfg).kept)
    if name == "tagging":
        cfg = TaggingConfig()

        def incremental(df: pl.DataFrame, state: Path) -> pl.DataFrame:
            tagged = tag_shards(df, cfg, state).tagged
            split = filter_on_labels(tagged, cfg)
            _tagging_reports(tagged, split.kept)
            return split.kept

        def alone(df: pl.DataFrame) -> pl.DataFrame:
            tagged, split = tag_and_filter(df, no_judge_labels(df.height), JudgeProvenance(), cfg)
            _tagging_reports(tagged, split.kept)
            return split.kept

        return incremental, alone, alone
    from assets.mixture.tokens import CachedTokenCounts

    return (lambda df, state: CachedTokenCounts(model, state).table(df["messages"]),
            lambda shard: CachedTokenCounts(model, work / f"empty-{time.perf_counter_ns()}").table(shard["messages"]),
            lambda df: CachedTokenCounts(model, work / "full").table(df["messages"]))


def _rounds(name: str, table: pl.DataFrame, eval_df: pl.DataFrame, model: Path | None, work: Path,
            repeat: int, check: bool) -> float:
    """Median ratio of the incremental call over the shard-alone call; the whole output's Parquet bytes (what the
    asset then writes, and reads back for its blocking checks) are timed apart, once."""
    incremental, alone, full = _stage(name, eval_df, model, work)
    last_key = table["shard"].max()
    last = table.filter(pl.col("shard") == last_key)
    built = work / f"{name}-built"
    shutil.rmtree(built, ignore_errors=True)
    incremental(table.filter(pl.col("shard") < last_key), built)
    alone(last.head(200))  # warm-up (numba, fastText, the tokenizer)
    ratios = []
    for round_ in range(repeat):
        state = work / f"{name}-state"
        shutil.rmtree(state, ignore_errors=True)
        shutil.copytree(built, state)
        start = time.perf_counter()
        output = incremental(table, state)
        incremental_s = time.perf_counter() - start
        start = time.perf_counter()
        alone(last)
        alone_s = time.perf_counter() - start
        ratios.append(incremental_s / alone_s)
        print(f"{name} round {round_ + 1}: new shard of {last.height} rows into {table.height}: incremental "
              f"{incremental_s:.2f} s, the shard alone {alone_s:.2f} s: {ratios[-1]:.2f}x; load {load_average()}",
              flush=True)
    start = time.perf_counter()
    written = _bytes(output)
    print(f"{name}: the output's Parquet bytes ({output.height} rows, {len(written) / 1e6:.0f} MB) in "
          f"{time.perf_counter() - start:.2f} s", flush=True)
    if check:
        print(f"{name}: incremental output equals a full build byte for byte: {written == _bytes(full(table))}",
              flush=True)
    return statistics.median(ratios)


def _tiny_model(work: Path) -> Path:
    from tests.tiny_model import build_tiny_model

    path = work / "tiny-model"
    if not path.exists():
        build_tiny_model(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the table, the new shard included")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default=None, help="model directory for the token counts (default: tiny model)")
    parser.add_argument("--skip-full-check", action="store_true", help="do not build the whole table from scratch to "
                        "compare (tagging's takes minutes at 100k rows; the tests compare on small tables)")
    parser.add_argument("--work", default=None, help="folder for the corpus and states (default: a temp folder)")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; choose from {list(STAGES)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        table, eval_df = _table(args.rows, args.shard_rows, work)
        model = Path(args.model) if args.model else (_tiny_model(work) if "tokens" in stages else None)
        print(f"table: {table.height} rows in {table['shard'].n_unique()} shards, {table.n_chunks()} chunks; "
              f"load {load_average()}", flush=True)
        ratios: dict[str, float] = {}
        for name in stages:
            ratios[name] = _rounds(name, table, eval_df, model, work, args.repeat, not args.skip_full_check)
    pairs = {f"{k}_ratio": f"{v:.2f}" for k, v in ratios.items()}
    pairs |= {"worst_ratio": f"{max(ratios.values()):.2f}", "rows": str(args.rows), "shard_rows": str(args.shard_rows),
              "load": load_average()}
    print(" ".join(f"{k}={v}" for k, v in pairs.items()))


if __name__ == "__main__":
    main()
