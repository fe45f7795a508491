"""Incremental near-duplicate removal over generation shards (no Dagster here).

State lives in ``state_dir``: the LSH index of every kept row, the kept/removed rows of each processed shard, and
``manifest.json`` naming the processed shards (with the content hash of each input file) and the index file. The
manifest is written last and atomically, so it is the commit point: a crash leaves the previous state intact.

A run compares only the shards not yet processed against the index (and among themselves), so its cost grows with
the new shards, not with the corpus. Rows kept earlier are never removed by later shards. If a processed shard's
file changed or disappeared, or the MinHash or semantic settings (or the embedding model's hash) changed, the state is
rebuilt from scratch (embeddings come back from their cache).

With a :class:`SemanticStage`, each shard's MinHash survivors go through :func:`~assets.dedup.semantic.
semantic_deduplicate` against the persisted semantic index (``semantic_index-<sha256[:16]>.npz``, named by its
content, written before the manifest names it; the previous one is deleted only after). Each shard starts from an
index read back from bytes, in a full rebuild as in an incremental run, so both build the same index.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from assets.common.data.storage import read_parquet, sha256_file, write_json_atomic, write_parquet_atomic
from assets.common.text.embeddings import Embedder
from assets.common.text.minhash.config import MinHashConfig
from assets.dedup.index import LSHIndex
from assets.dedup.near_duplicates import deduplicate
from assets.dedup.semantic import SemanticDedupConfig, index_identity, semantic_deduplicate
from assets.dedup.semantic_index import SemanticIndex, save_content_addressed

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
    texts_embedded: int = 0  # instructions this run embedded (or read from the embedding cache): new shards only
    semantic_index_rows: int = 0


@dataclass(frozen=True)
class SemanticStage:
    """The semantic pass after MinHash: its settings and the embedder (which owns the embedding cache)."""

    config: SemanticDedupConfig
    embedder: Embedder

    def identity(self) -> dict:
        return index_identity(self.config, self.embedder)


def _load_manifest(state_dir: Path, cfg: MinHashConfig, semantic: dict | None) -> tuple[dict | None, str | None]:
    path = state_dir / MANIFEST
    if not path.exists():
        return None, "no previous state"
    manifest = json.loads(path.read_text())
    if manifest.get("config") != cfg.to_json():
        return None, "MinHash settings changed"
    if manifest.get("semantic") != semantic:
        return None, "semantic settings or embedding model changed"
    return manifest, None


def deduplicate_shards(shards: dict[str, Path], state_dir: str | Path, cfg: MinHashConfig, log=None,
                       read: Callable[[str], pl.DataFrame] | None = None,
                       semantic: SemanticStage | None = None) -> IncrementalDedup:
    """Deduplicate the shard files ``shards`` (key -> Parquet path), reusing the state in ``state_dir``.

    ``read(key)`` reads a new shard (default: its Parquet file as is); the asset passes one that checks the
    conversation schema. Only new shards are read. ``semantic``: the semantic pass after MinHash (None: off)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    hashes = {key: sha256_file(path) for key, path in sorted(shards.items())}
    state, reason = _load_state(state_dir, cfg, hashes, semantic)
    new = [key for key in hashes if key not in state.processed]
    signatures = embedded = 0
    for key in new:
        df = read(key) if read else read_parquet(shards[key])
        computed, texts = _add_shard(state, state_dir, cfg, key, hashes[key], df, log, semantic)
        signatures, embedded = signatures + computed, embedded + texts
    if new or state.rebuilt:
        _save_index(state, state_dir, cfg)
    keys = sorted(state.processed)
    if not keys:
        raise ValueError("no generation shards to deduplicate: materialize magpie_conversations first")
    return IncrementalDedup(
        # diagonal: user rows carry columns generated ones lack (source, source_id), null elsewhere
        kept=pl.concat([read_parquet(state_dir / f"kept-{k}.parquet") for k in keys], how="diagonal_relaxed"),
        removed=pl.concat([read_parquet(state_dir / f"removed-{k}.parquet") for k in keys], how="diagonal_relaxed"),
        new_shards=new,
        reused_shards=[k for k in keys if k not in new],
        rebuilt=state.rebuilt,
        rebuild_reason=reason if state.rebuilt else None,
        signatures_computed=signatures,
        index_rows=len(state.index),
        stats_by_shard=state.per_shard,
        texts_embedded=embedded,
        semantic_index_rows=len(state.semantic) if state.semantic is not None else 0,
    )


@dataclass
class _State:
    index: LSHIndex
    processed: dict[str, str]  # shard key -> content hash of the table it was computed from
    generation: int
    per_shard: dict[str, dict]
    rebuilt: bool
    semantic: SemanticIndex | None = None
    semantic_bytes: bytes | None = None  # the semantic index as last read back (what is saved)


def _load_state(state_dir: Path, cfg: MinHashConfig, hashes: dict[str, str], semantic: SemanticStage | None
                ) -> tuple[_State, str | None]:
    """The persisted indexes and per-shard results, or a fresh state (and why) when settings or shards changed."""
    identity = semantic.identity() if semantic is not None else None
    manifest, reason = _load_manifest(state_dir, cfg, identity)
    if manifest is not None:
        changed = sorted(k for k, h in manifest["shards"].items() if hashes.get(k) != h)
        if changed:
            manifest, reason = None, f"processed shard(s) changed or were removed: {changed}"
    if manifest is None:
        for stale in [*state_dir.glob("kept-*.parquet"), *state_dir.glob("removed-*.parquet")]:
            stale.unlink()
        fresh = SemanticIndex.empty(semantic.embedder.backend.dim, identity) if semantic is not None else None
        return _State(LSHIndex.empty(cfg), {}, 0, {}, rebuilt=True, semantic=fresh), reason
    loaded = SemanticIndex.load(state_dir / manifest["semantic_index"]) if semantic is not None else None
    return _State(LSHIndex.load(state_dir / manifest["index"]), dict(manifest["shards"]), manifest["generation"],
                  dict(manifest.get("stats_by_shard", {})), rebuilt=False, semantic=loaded), reason


def _add_shard(state: _State, state_dir: Path, cfg: MinHashConfig, key: str, content_hash: str, df: pl.DataFrame,
               log, semantic: SemanticStage | None) -> tuple[int, int]:
    """Deduplicate one new shard against the indexes (updating them); returns (signatures computed, texts
    embedded)."""
    result = deduplicate(df, cfg, index=state.index)
    state.index = result.index
    kept, removed, stats = result.kept, result.removed, {"rows_removed_minhash": result.removed.height}
    if semantic is not None:
        found = semantic_deduplicate(result.kept, state.semantic, semantic.embedder, semantic.config)
        state.semantic, state.semantic_bytes = found.index.round_trip()
        kept, removed = found.kept, pl.concat([removed, found.removed], how="diagonal_relaxed")
        stats |= {"rows_removed_semantic": found.removed.height, "texts_embedded": found.stats["texts_embedded"]}
    write_parquet_atomic(kept, state_dir / f"kept-{key}.parquet")
    write_parquet_atomic(removed, state_dir / f"removed-{key}.parquet")
    state.processed[key] = content_hash
    state.per_shard[key] = {"rows_in": df.height, "rows_removed": removed.height, **stats}
    if log:
        log(f"shard {key}: {removed.height} of {df.height} rows removed ({stats})")
    return result.stats.get("signatures_computed", df.height), stats.get("texts_embedded", 0)


def _save_index(state: _State, state_dir: Path, cfg: MinHashConfig) -> None:
    state.generation += 1
    index_name = f"lsh_index-{state.generation:06d}.npz"
    state.index.save(state_dir / index_name)
    manifest = {"config": cfg.to_json(), "shards": state.processed, "index": index_name,
                "generation": state.generation, "stats_by_shard": state.per_shard, "semantic": None}
    if state.semantic is not None:
        data = state.semantic_bytes if state.semantic_bytes is not None else state.semantic.to_bytes()
        manifest |= {"semantic": state.semantic.identity, "semantic_index": save_content_addressed(data, state_dir)}
    write_json_atomic(manifest, state_dir / MANIFEST)  # the commit point
    keep = {index_name, manifest.get("semantic_index")}
    for old in [*state_dir.glob("lsh_index-*.npz"), *state_dir.glob("semantic_index-*.npz")]:
        if old.name not in keep:
            old.unlink()
