"""Resumable generation of one shard, in checkpointed batches (no Dagster here).

A shard's rows are generated in batches of ``batch_size`` rows. Each finished batch is written atomically to
``<work_dir>/batch-NNNNN.parquet`` and then committed by ``batch-NNNNN.json`` (its stats and the Parquet file's
hash). A re-run of the same shard with the same fingerprint (config, model, engine) loads the committed batches and
generates only the missing ones; since every row's sampling depends only on (seed, shard, row), a resumed shard
equals an uninterrupted one, row for row: nothing lost, nothing duplicated. The engine is started at most once,
and only if a batch is missing.
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

from assets.common.engine import TextGenerator
from assets.common.schema import CONVERSATION_SCHEMA
from assets.common.storage import sha256_file, sha256_text, write_json_atomic, write_parquet_atomic
from assets.generation.magpie import MagpieConfig, MagpieStats, generate_conversations


@dataclass
class ShardResult:
    table: pl.DataFrame
    stats: MagpieStats
    batches: int
    resumed_batches: int
    engine_name: str | None
    engine_version: str | None


def fingerprint(config: MagpieConfig, model_hash: str, engine: str) -> str:
    """What must match for checkpointed batches to be reused."""
    return sha256_text(json.dumps({"config": repr(config), "model": model_hash, "engine": engine}, sort_keys=True))


def _committed(work_dir: Path, batch: int) -> tuple[pl.DataFrame, dict] | None:
    parquet, marker = work_dir / f"batch-{batch:05d}.parquet", work_dir / f"batch-{batch:05d}.json"
    if not (parquet.exists() and marker.exists()):
        return None
    meta = json.loads(marker.read_text())
    if meta.get("parquet_sha256") != sha256_file(parquet):
        return None
    return pl.read_parquet(parquet), meta


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

    ``start_generator`` starts the engine; it is called at most once, and only if a batch is missing. The engine
    is closed when the shard is done (if it has a ``close`` method).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    manifest = work_dir / "manifest.json"
    expected = fingerprint(config, model_hash, engine_key)
    if manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") != expected:
        if log:
            log(f"{work_dir}: checkpoints were made with another config/model/engine; starting the shard afresh")
        shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
    write_json_atomic({"fingerprint": expected, "batch_size": batch_size, "shard": config.shard}, manifest)

    total = MagpieStats()
    dropped: Counter = Counter()
    tables: list[pl.DataFrame] = []
    batches = (config.num_conversations + batch_size - 1) // batch_size
    resumed = 0
    generator: TextGenerator | None = None
    with ExitStack() as stack:
        for batch in range(batches):
            rows = range(batch * batch_size, min((batch + 1) * batch_size, config.num_conversations))
            done = _committed(work_dir, batch)
            if done is not None:
                table, meta = done
                stats = meta["stats"]
                resumed += 1
            else:
                if generator is None:
                    generator = start_generator()
                    if hasattr(generator, "close"):
                        stack.callback(generator.close)
                table, batch_stats = generate_conversations(generator, tokenizer, config, model_name, model_hash,
                                                            log=log, rows=rows)
                stats = batch_stats.to_dict()
                parquet = work_dir / f"batch-{batch:05d}.parquet"
                digest = write_parquet_atomic(table, parquet)
                write_json_atomic({"rows": [rows.start, rows.stop], "stats": stats, "parquet_sha256": digest},
                                  work_dir / f"batch-{batch:05d}.json")
            tables.append(table)
            total.attempted += stats["attempted"]
            total.kept += stats["kept"]
            total.instruction_tokens += stats["instruction_tokens"]
            total.response_tokens += stats["response_tokens"]
            total.seconds += stats["seconds"]
            dropped.update(stats["dropped"])
            if log:
                state = "resumed" if done is not None else "generated"
                log(f"batch {batch + 1}/{batches} {state}: {stats['kept']}/{stats['attempted']} rows kept")
    total.dropped = dropped
    table = pl.concat(tables) if tables else pl.DataFrame(schema=CONVERSATION_SCHEMA)
    return ShardResult(
        table=table,
        stats=total,
        batches=batches,
        resumed_batches=resumed,
        engine_name=getattr(generator, "engine_name", None),
        engine_version=getattr(generator, "engine_version", None),
    )
