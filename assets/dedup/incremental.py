"""Incremental near-duplicate removal over generation shards (no Dagster here).

State lives in ``state_dir``: the LSH index of every kept row, the kept/removed rows of each processed shard, and
``manifest.json`` naming the processed shards (with the content hash of each input file) and the index file. The
manifest is written last and atomically, so it is the commit point: a crash leaves the previous state intact.

A run compares only the shards not yet processed against the index (and among themselves), so its cost grows with
the new shards, not with the corpus. Rows kept earlier are never removed by later shards. If a processed shard's
file changed or disappeared, or the MinHash settings changed, the state is rebuilt from scratch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from assets.common.minhash.config import MinHashConfig
from assets.common.storage import read_parquet, sha256_file, write_json_atomic, write_parquet_atomic
from assets.dedup.index import LSHIndex
from assets.dedup.near_duplicates import deduplicate

MANIFEST = "manifest.json"


@dataclass
class IncrementalDedup:
    kept: pl.DataFrame
    removed: pl.DataFrame
    new_shards: list[str]
    reused_shards: list[str]
    rebuilt: bool
    rebuild_reason: str | None
    signatures_computed: int
    index_rows: int
    stats_by_shard: dict[str, dict] = field(default_factory=dict)


def _load_manifest(state_dir: Path, cfg: MinHashConfig) -> tuple[dict | None, str | None]:
    path = state_dir / MANIFEST
    if not path.exists():
        return None, "no previous state"
    manifest = json.loads(path.read_text())
    if manifest.get("config") != cfg.to_json():
        return None, "MinHash settings changed"
    return manifest, None


def deduplicate_shards(shards: dict[str, Path], state_dir: str | Path, cfg: MinHashConfig, log=None,
                       read: Callable[[str], pl.DataFrame] | None = None) -> IncrementalDedup:
    """Deduplicate the shard files ``shards`` (key -> Parquet path), reusing the state in ``state_dir``.

    ``read(key)`` reads a new shard (default: its Parquet file as is); the asset passes one that checks the
    conversation schema. Only new shards are read."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    hashes = {key: sha256_file(path) for key, path in sorted(shards.items())}
    manifest, reason = _load_manifest(state_dir, cfg)
    if manifest is not None:
        changed = sorted(k for k, h in manifest["shards"].items() if hashes.get(k) != h)
        if changed:
            manifest, reason = None, f"processed shard(s) changed or were removed: {changed}"
    rebuilt = manifest is None
    if rebuilt:
        for stale in [*state_dir.glob("kept-*.parquet"), *state_dir.glob("removed-*.parquet")]:
            stale.unlink()
        index, processed, generation, per_shard = LSHIndex.empty(cfg), {}, 0, {}
    else:
        index = LSHIndex.load(state_dir / manifest["index"])
        processed, generation = dict(manifest["shards"]), manifest["generation"]
        per_shard = dict(manifest.get("stats_by_shard", {}))

    new = [key for key in hashes if key not in processed]
    signatures = 0
    for key in new:
        df = read(key) if read else read_parquet(shards[key])
        result = deduplicate(df, cfg, index=index)
        index = result.index
        signatures += result.stats.get("signatures_computed", df.height)
        write_parquet_atomic(result.kept, state_dir / f"kept-{key}.parquet")
        write_parquet_atomic(result.removed, state_dir / f"removed-{key}.parquet")
        processed[key] = hashes[key]
        per_shard[key] = {"rows_in": df.height, "rows_removed": result.removed.height}
        if log:
            log(f"shard {key}: {result.removed.height} of {df.height} rows are near-duplicates")

    if new or rebuilt:
        generation += 1
        index_name = f"lsh_index-{generation:06d}.npz"
        index.save(state_dir / index_name)
        write_json_atomic({"config": cfg.to_json(), "shards": processed, "index": index_name,
                           "generation": generation, "stats_by_shard": per_shard}, state_dir / MANIFEST)
        for old in state_dir.glob("lsh_index-*.npz"):
            if old.name != index_name:
                old.unlink()
    keys = sorted(processed)
    kept = pl.concat([read_parquet(state_dir / f"kept-{k}.parquet") for k in keys]) if keys else None
    removed = pl.concat([read_parquet(state_dir / f"removed-{k}.parquet") for k in keys]) if keys else None
    if kept is None:
        raise ValueError("no generation shards to deduplicate: materialize magpie_conversations first")
    return IncrementalDedup(
        kept=kept,
        removed=removed,
        new_shards=new,
        reused_shards=[k for k in keys if k not in new],
        rebuilt=rebuilt,
        rebuild_reason=reason if rebuilt else None,
        signatures_computed=signatures,
        index_rows=len(index),
        stats_by_shard=per_shard,
    )
