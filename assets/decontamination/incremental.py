"""Incremental decontamination of a table made of shards (dedup's output: every row has ``shard``; no Dagster here).

A row's matches depend on the row, the eval index and one table-wide fact: which keys of the n-gram detector are
found in ``max_train_rows`` or more conversations of the table (the training-side cut-off). So the state keeps, per
processed shard, its matches under the cut-off as it stood when they were computed, and the (key, conversation,
row) triples of its n-gram hits on a key, from which the table-wide counts are summed. A run checks only the new
shards, adds their triples to the counts, and re-checks only the earlier rows holding a key that the new
conversations pushed over the cut-off; the other rows' matches cannot change (counts only grow while shards only
arrive). The output, :func:`~.removal.removal_outputs` of the assembled matches, equals a full check of the table
byte for byte.

State in ``state_dir``: ``matches-<shard>-<generation>.parquet`` and ``keys-<shard>-<generation>.parquet`` per
shard, and ``manifest.json`` (state format, config, eval-set hash, eval-index hash, row hashing, and per shard its
content hash, row count and files), written last and atomically: the commit point; files it does not name are
deleted after it. A changed config, eval set, eval index (hashing code), state format or row hashing, or a processed
shard that changed or disappeared, starts over from an empty state (a full check), and the reason is returned.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.common.storage import read_parquet, write_json_atomic, write_parquet_atomic
from assets.common.text import utf8_buffer
from assets.decontamination.index import EvalIndex
from assets.decontamination.matching import MATCHES_SCHEMA, gather_evidence, matches_from, sort_matches
from assets.decontamination.removal import removal_outputs
from assets.decontamination.train_frequency import frequent_keys, frequent_owners

STATE_VERSION = 1  # bump when what a shard's files hold, or how matches are computed, changes
MANIFEST = "manifest.json"
ROW_HASHING = f"polars {pl.__version__} hash of conversation_id, roles, contents"  # shards' content hashes


@dataclass
class IncrementalDecontamination:
    """The outputs of :func:`~.removal.decontaminate` for the whole table, and what the run did: the shards checked
    (``new_shards``) and reused, the keys that crossed the training-side cut-off and the earlier rows re-checked
    because of them, whether the state was rebuilt and why, and seconds per phase."""

    kept: pl.DataFrame
    rejected: pl.DataFrame
    report: dict[str, Any]
    new_shards: list[str]
    reused_shards: list[str]
    crossed_keys: int
    rechecked_rows: int
    rebuilt: bool
    rebuild_reason: str | None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _State:
    manifest: dict[str, Any]
    matches: dict[str, pl.DataFrame]  # shard -> its matches (``row`` local to the shard)
    keys: dict[str, pl.DataFrame]  # shard -> distinct (key, conversation_id, row) of its hits on a key
    changed: set[str]  # shards whose files must be written
    rebuilt: bool


def decontaminate_shards(
    df: pl.DataFrame, index: EvalIndex, state_dir: str | Path, *, max_detail: int = 3,
    log: Callable[[str], None] | None = None,
) -> IncrementalDecontamination:
    """Decontaminate ``df`` (a table with a ``shard`` column) against ``index``, reusing the state in ``state_dir``."""
    clock = _Clock()
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    positions = _shard_positions(df)
    hashes = _shard_hashes(df, positions)
    fingerprint = _fingerprint(index)
    clock.lap("hash")
    state, reason = _load_state(state_dir, fingerprint, hashes)
    if reason and log:
        log(f"decontamination state rebuilt: {reason}")
    new = [key for key in positions if key not in state.matches]
    frequent, crossed, rechecked = _add_shards(df, index, positions, state, new, log)
    clock.lap("check")
    if state.changed or state.rebuilt:
        _save_state(state_dir, state, fingerprint, hashes, positions)
    clock.lap("save")
    matches = _table_matches(state, positions)
    kept, rejected, report = removal_outputs(df, index, matches, frequent_owners(index, frequent),
                                             max_detail=max_detail)
    clock.lap("outputs")
    return IncrementalDecontamination(
        kept, rejected, report, new, [key for key in positions if key not in new], crossed, rechecked, state.rebuilt,
        reason if state.rebuilt else None, clock.laps,
    )


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


# --------------------------------------------------------------------------------------------------------
# shards and their identity


def _shard_positions(df: pl.DataFrame) -> dict[str, np.ndarray]:
    """Shard key (the ``shard`` value as text) -> positions of its rows in ``df``, in table order; by shard value."""
    if "shard" not in df.columns or df["shard"].null_count():
        raise ValueError("incremental decontamination needs a `shard` column without nulls (deduplicated_conversations"
                         f" has one); columns are {df.columns}")
    shard = df["shard"].to_numpy()
    order = np.argsort(shard, kind="stable")
    values, starts = np.unique(shard[order], return_index=True)
    return {str(v): part for v, part in zip(values.tolist(), np.split(order, starts[1:]), strict=True)}


def _shard_hashes(df: pl.DataFrame, positions: dict[str, np.ndarray]) -> dict[str, str]:
    """Per shard, a content hash of its rows in table order: conversation ids, message count, roles and contents."""
    messages = df["messages"]
    lengths = messages.list.len().fill_null(0).to_numpy().astype(np.int64)
    exploded = messages.explode()
    role = exploded.struct.field("role").hash(seed=0).to_numpy()
    content = exploded.struct.field("content").hash(seed=1).to_numpy()
    conversation = df["conversation_id"].hash(seed=2).to_numpy()
    first = np.concatenate([[0], np.cumsum(np.maximum(lengths, 1))])  # explode keeps one (null) row per empty list
    out = {}
    for key, rows in positions.items():
        take = np.repeat(first[rows], np.maximum(lengths[rows], 1)) + _ranks(np.maximum(lengths[rows], 1))
        digest = hashlib.sha256()
        for part in (conversation[rows], lengths[rows], role[take], content[take]):
            digest.update(np.ascontiguousarray(part).tobytes())
        out[key] = digest.hexdigest()
    return out


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, .., counts[0] - 1, 0, 1, .., counts[1] - 1, ..."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _fingerprint(index: EvalIndex) -> dict[str, Any]:
    """What a state is valid for: its format, the config, the eval set and the eval index built from it."""
    items = hashlib.sha256()
    for column in ("benchmark", "item_id", "field", "text"):
        data, offsets = utf8_buffer(index.items[column])
        for part in (data, offsets, index.items[column].is_null().to_numpy()):
            items.update(part.tobytes())
    built = hashlib.sha256()
    for part in (index.table, index.table_items, index.table_pos, index.lengths, index.minhash_rows,
                 index.minhash_signatures):
        built.update(np.ascontiguousarray(part).tobytes())
    return {"version": STATE_VERSION, "config": index.config.to_json(), "eval_sets": items.hexdigest(),
            "eval_index": built.hexdigest(), "row_hashing": ROW_HASHING}


# --------------------------------------------------------------------------------------------------------
# the state


_REASONS = {"version": "the state format changed", "config": "the decontamination settings changed",
            "eval_sets": "the eval sets changed", "eval_index": "the eval index is built differently (code changed)",
            "row_hashing": "the row hashing changed (polars version)"}


def _load_state(state_dir: Path, fingerprint: dict[str, Any], hashes: dict[str, str]) -> tuple[_State, str | None]:
    """The persisted per-shard results, or an empty state and why (a full check follows)."""
    path = state_dir / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else None
    reason = "no previous state" if manifest is None else None
    for name, why in _REASONS.items():
        if reason is None and manifest.get(name) != fingerprint[name]:
            reason = why
    if reason is None:
        changed = sorted(k for k, s in manifest["shards"].items() if hashes.get(k) != s["content_hash"])
        if changed:
            reason = f"processed shard(s) changed or were removed: {changed}"
    if reason is not None:
        for stale in [*state_dir.glob("matches-*.parquet"), *state_dir.glob("keys-*.parquet")]:
            stale.unlink()
        return _State({"generation": manifest.get("generation", 0) if manifest else 0, "shards": {}}, {}, {}, set(),
                      rebuilt=True), reason
    shards = manifest["shards"]
    return _State(manifest, {k: read_parquet(state_dir / s["matches"]) for k, s in shards.items()},
                  {k: read_parquet(state_dir / s["keys"]) for k, s in shards.items()}, set(), rebuilt=False), None


def _save_state(state_dir: Path, state: _State, fingerprint: dict[str, Any], hashes: dict[str, str],
                positions: dict[str, np.ndarray]) -> None:
    """Write the changed shards' files under a new generation, then the manifest, then delete unnamed files."""
    generation = state.manifest["generation"] + 1
    shards = dict(state.manifest["shards"])
    for key in sorted(state.changed):
        files = {"matches": f"matches-{key}-{generation:06d}.parquet", "keys": f"keys-{key}-{generation:06d}.parquet"}
        write_parquet_atomic(state.matches[key], state_dir / files["matches"])
        write_parquet_atomic(state.keys[key], state_dir / files["keys"])
        shards[key] = {"content_hash": hashes[key], "rows": int(positions[key].size), **files}
    write_json_atomic({**fingerprint, "generation": generation, "shards": shards}, state_dir / MANIFEST)
    named = {name for s in shards.values() for name in (s["matches"], s["keys"])}
    for stale in [*state_dir.glob("matches-*.parquet"), *state_dir.glob("keys-*.parquet")]:
        if stale.name not in named:
            stale.unlink()


# --------------------------------------------------------------------------------------------------------
# checking new shards, re-checking earlier rows, assembling the table


def _rows_of(df: pl.DataFrame, positions: np.ndarray) -> pl.DataFrame:
    """The columns the detectors read, for the rows ``positions`` of ``df``."""
    return df.select("conversation_id", "messages")[pl.Series(positions, dtype=pl.Int64)]


def _add_shards(df: pl.DataFrame, index: EvalIndex, positions: dict[str, np.ndarray], state: _State,
                new: list[str], log: Callable[[str], None] | None) -> tuple[pl.DataFrame, int, int]:
    """Check the ``new`` shards alone, add their keys to the counts, then re-check the earlier rows holding a key
    that crossed the cut-off. Returns (the table's frequent keys, keys crossed, rows re-checked)."""
    limit = index.config.max_train_rows
    before = frequent_keys(_all_keys(state), limit)
    evidence = {key: gather_evidence(_rows_of(df, positions[key]), index) for key in new}
    for key in new:
        state.keys[key] = evidence[key].key_conversations()
    frequent = frequent_keys(_all_keys(state), limit)
    for key in new:
        state.matches[key] = matches_from(evidence[key], index, frequent)
        state.changed.add(key)
        if log:
            log(f"shard {key}: {positions[key].size} rows checked, "
                f"{state.matches[key]['row'].n_unique()} contaminated")
    crossed = frequent.join(before, on="key", how="anti")["key"]
    rechecked = 0
    for key in [k for k in positions if k not in new]:
        rows = state.keys[key].filter(pl.col("key").is_in(crossed.implode()))["row"].unique().sort().to_numpy()
        if rows.size:
            _recheck(df, index, positions[key], state, key, rows, frequent)
            rechecked += rows.size
    if log and crossed.len():
        log(f"{crossed.len()} key(s) crossed max_train_rows={limit}; re-checked {rechecked} earlier rows")
    return frequent, crossed.len(), rechecked


def _recheck(df: pl.DataFrame, index: EvalIndex, shard_positions: np.ndarray, state: _State, key: str,
             rows: np.ndarray, frequent: pl.DataFrame) -> None:
    """Recompute the matches of rows ``rows`` (local to shard ``key``) under the ``frequent`` keys."""
    fresh = matches_from(gather_evidence(_rows_of(df, shard_positions[rows]), index), index, frequent)
    fresh = fresh.with_columns(pl.Series("row", rows).gather(fresh["row"]))
    kept = state.matches[key].filter(~pl.col("row").is_in(pl.Series(rows).implode()))
    state.matches[key] = sort_matches(pl.concat([kept, fresh]))
    state.changed.add(key)


def _all_keys(state: _State) -> pl.DataFrame:
    frames = [frame.select("key", "conversation_id") for frame in state.keys.values()]
    return pl.concat(frames) if frames else pl.DataFrame(schema={"key": pl.Int64, "conversation_id": pl.Utf8})


def _table_matches(state: _State, positions: dict[str, np.ndarray]) -> pl.DataFrame:
    """Every shard's matches with ``row`` turned into the position in the table, in :func:`sort_matches` order."""
    frames = [state.matches[key].with_columns(pl.Series("row", rows).gather(state.matches[key]["row"]))
              for key, rows in positions.items()]
    return sort_matches(pl.concat(frames)) if frames else pl.DataFrame(schema=MATCHES_SCHEMA)
