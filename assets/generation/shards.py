"""Resumable generation of one shard, in checkpointed chunks of rows (no Dagster here).

A shard's rows are generated in batches of ``batch_size`` rows. Each finished batch is a chunk of consecutive rows
``[start, stop)``, written atomically to ``<work_dir>/rows-<start>-<stop>.parquet`` and then committed by the
``.json`` beside it (its row range, stats and the Parquet file's hash). A re-run of the same shard with the same
fingerprint (config, model, engine) loads the committed chunks and generates only the rows no chunk covers, in
batches of the current ``batch_size``. Chunks are keyed by row index, not by batch number, and every row's
sampling depends only on (seed, shard, row), so a resumed shard equals an uninterrupted one row for row, whatever
batch sizes the interrupted and the resuming run used: nothing lost, nothing duplicated. The engine is started at
most once, and only if rows are missing.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.data.storage import sha256_file, sha256_text, write_json_atomic, write_parquet_atomic
from assets.common.models.engine import TextGenerator
from assets.generation.magpie import MagpieConfig, MagpieStats, generate_conversations

CHECKPOINT_LAYOUT = 2  # 2: chunks named by row range (1 named them by batch number, which ties them to batch_size)
MANIFEST = "manifest.json"


@dataclass
class ShardResult:
    table: pl.DataFrame
    stats: MagpieStats
    batches: int  # chunks the shard was assembled from
    resumed_batches: int  # of which loaded from checkpoints
    engine_name: str | None
    engine_version: str | None


@dataclass
class Chunk:
    start: int
    stop: int
    table: pl.DataFrame
    stats: dict


def fingerprint(config: MagpieConfig, model_hash: str, engine: str) -> str:
    """What must match for checkpointed chunks to be reused (the batch size need not: chunks are row ranges)."""
    return sha256_text(json.dumps({"config": repr(config), "model": model_hash, "engine": engine,
                                   "layout": CHECKPOINT_LAYOUT}, sort_keys=True))


def _chunk_path(work_dir: Path, start: int, stop: int, suffix: str) -> Path:
    return work_dir / f"rows-{start:07d}-{stop:07d}{suffix}"


def _open_work_dir(work_dir: Path, expected: str, batch_size: int, shard: int, log: Callable | None) -> int | None:
    """Empty ``work_dir`` if its checkpoints were made with another fingerprint; return the batch size they were
    made with (None if there are none) and record the current one."""
    work_dir.mkdir(parents=True, exist_ok=True)
    manifest = work_dir / MANIFEST
    previous = json.loads(manifest.read_text()) if manifest.exists() else None
    if previous is not None and previous.get("fingerprint") != expected:
        if log:
            log(f"{work_dir}: checkpoints were made with another config/model/engine (or checkpoint layout); "
                "starting the shard afresh")
        shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        previous = None
    write_json_atomic({"fingerprint": expected, "batch_size": batch_size, "shard": shard}, manifest)
    return previous.get("batch_size") if previous else None


def _committed_chunks(work_dir: Path, num_rows: int, log: Callable | None = None) -> list[Chunk]:
    """Every committed chunk whose Parquet file matches its hash, in row order; a chunk whose file is missing or no
    longer matches the hash its marker recorded is left out (its rows are generated again, and ``log`` says so); a
    chunk overlapping an earlier one (which a run never writes) is ignored, so no row is taken twice."""
    chunks: list[Chunk] = []
    for marker in sorted(work_dir.glob("rows-*.json")):
        meta = json.loads(marker.read_text())
        start, stop = meta.get("rows", (None, None))
        parquet = marker.with_suffix(".parquet")
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= num_rows):
            continue
        if not parquet.exists() or meta.get("parquet_sha256") != sha256_file(parquet):
            if log:
                problem = f"does not match the hash recorded in {marker.name}" if parquet.exists() else "missing"
                log(f"{parquet}: {problem}; rows {start}..{stop - 1} are generated again")
            continue
        if chunks and start < chunks[-1].stop:
            continue
        chunks.append(Chunk(start, stop, pl.read_parquet(parquet), meta["stats"]))
    return chunks


def missing_batches(chunks: list[Chunk], num_rows: int, batch_size: int) -> list[range]:
    """The rows no chunk covers, as batches of at most ``batch_size`` consecutive rows."""
    batches, cursor = [], 0
    for start, stop in [*((c.start, c.stop) for c in chunks), (num_rows, num_rows)]:
        while cursor < start:
            batches.append(range(cursor, min(cursor + batch_size, start)))
            cursor = batches[-1].stop
        cursor = max(cursor, stop)
    return batches


def _total(chunks: list[Chunk]) -> MagpieStats:
    total = MagpieStats(dropped=Counter())
    for chunk in chunks:
        stats = chunk.stats
        total.attempted += stats["attempted"]
        total.kept += stats["kept"]
        total.instruction_tokens += stats["instruction_tokens"]
        total.response_tokens += stats["response_tokens"]
        total.seconds += stats["seconds"]
        total.dropped.update(stats["dropped"])
    return total


def run_shard(
    start_generator: Callable[[], TextGenerator],
    tokenizer: Any,
    config: MagpieConfig,
    model_name: str,
    model_hash: str,
    work_dir: str | Path,
    batch_size: int,
    engine_key: str,
    log: Callable[[str], None] | None = None,
) -> ShardResult:
    """Generate (or resume) all ``config.num_conversations`` rows of ``config.shard`` in checkpointed batches.

    ``start_generator`` starts the engine; it is called at most once, and only if rows are missing. The engine
    is closed when the shard is done (if it has a ``close`` method).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    work_dir = Path(work_dir)
    previous_size = _open_work_dir(work_dir, fingerprint(config, model_hash, engine_key), batch_size, config.shard,
                                   log)
    resumed = _committed_chunks(work_dir, config.num_conversations, log)
    todo = missing_batches(resumed, config.num_conversations, batch_size)
    if log and resumed:
        covered = sum(c.stop - c.start for c in resumed)
        log(f"resuming {covered} rows from {len(resumed)} committed chunk(s) made in batches of "
            f"{previous_size or '?'}; {config.num_conversations - covered} rows left, in {len(todo)} batches of "
            f"{batch_size}")
    generator: TextGenerator | None = None
    chunks = list(resumed)
    with ExitStack() as stack:
        for number, rows in enumerate(todo, start=1):
            if generator is None:
                generator = start_generator()
                if hasattr(generator, "close"):
                    stack.callback(generator.close)
            chunks.append(_generate_chunk(generator, tokenizer, config, model_name, model_hash, work_dir, rows, log))
            if log:
                log(f"batch {number}/{len(todo)} generated (rows {rows.start}..{rows.stop - 1}): "
                    f"{chunks[-1].stats['kept']}/{chunks[-1].stats['attempted']} rows kept")
    chunks.sort(key=lambda c: c.start)
    table = pl.concat([c.table for c in chunks]) if chunks else pl.DataFrame(schema=CONVERSATION_SCHEMA)
    return ShardResult(table=table, stats=_total(chunks), batches=len(chunks), resumed_batches=len(resumed),
                       engine_name=getattr(generator, "engine_name", None),
                       engine_version=getattr(generator, "engine_version", None))


def _generate_chunk(generator: TextGenerator, tokenizer: Any, config: MagpieConfig, model_name: str,
                    model_hash: str, work_dir: Path, rows: range, log: Callable | None) -> Chunk:
    """Generate the rows ``rows`` and commit them: the Parquet file first, then the marker naming its hash."""
    table, stats = generate_conversations(generator, tokenizer, config, model_name, model_hash, log=log, rows=rows)
    digest = write_parquet_atomic(table, _chunk_path(work_dir, rows.start, rows.stop, ".parquet"))
    write_json_atomic({"rows": [rows.start, rows.stop], "stats": stats.to_dict(), "parquet_sha256": digest},
                      _chunk_path(work_dir, rows.start, rows.stop, ".json"))
    return Chunk(rows.start, rows.stop, table, stats.to_dict())
