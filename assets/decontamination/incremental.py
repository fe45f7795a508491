"""Incremental decontamination of a table made of shards (dedup's output: every row has ``shard``; no Dagster here).

A row's matches depend on the row, the eval index and one table-wide fact: which keys of the n-gram detector are
found in ``max_train_rows`` or more conversations of the table (the training-side cut-off). So the state keeps, per
processed shard, its matches under the cut-off as it stood when they were computed, and the (key, conversation,
row) triples of its n-gram hits on a key, from which the table-wide counts are summed. A run checks only the new
shards, adds their triples to the counts, and re-checks only the earlier rows holding a key that the new
conversations pushed over the cut-off; the other rows' matches cannot change (counts only grow while shards only
arrive). The semantic detector's matches depend on the row and the eval side alone (the embedding model, the
threshold, the judge): they are kept with the shard's other matches and never re-checked (a re-check looks at the
string detectors only); a new shard embeds and searches only its own messages, through the embedding cache. The output,
:func:`~.removal.removal_outputs` of the assembled matches, equals a full check of the table byte for byte.

State in ``state_dir``: ``matches-<generation>.parquet`` and ``keys-<generation>.parquet`` (every shard's rows, with
``shard``; small next to the table) and ``manifest.json`` (state format, config, eval-set hash, a hash of the code
matches depend on, library versions, the semantic detector's model hash, chunk length and judge, the two files and
their SHA-256, and per shard its content hash and row count), written last and atomically: the commit point; files it
does not name are deleted after it. The two files are not synced to disk (the manifest is): after a crash, a file that
is not the bytes the manifest names starts over. A changed config, eval set, code, library, embedding model, judge or
state format, or a processed shard that changed or disappeared, starts over from an empty state (a full check), and
the reason is returned.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import polars as pl

from assets.common.data.shards import shard_hashes, shard_positions, shard_rows
from assets.common.data.storage import write_json_atomic
from assets.decontamination.index import EvalIndex
from assets.decontamination.matching import MATCHES_SCHEMA, gather_evidence, matches_from, sort_matches
from assets.decontamination.removal import removal_outputs
from assets.decontamination.semantic import SEMANTIC, verdict_table
from assets.decontamination.train_frequency import frequent_keys, frequent_owners

STATE_VERSION = 3  # bump when what the state files hold changes
MANIFEST = "manifest.json"
# what matches depend on
_CODE_MODULES = ("assets/common/text/normalize.py", "assets/common/text/minhash", "assets/common/text/embeddings",
                 "assets/common/text/language.py", "assets/decontamination")
_KEYS_SCHEMA: dict[str, pl.DataType] = {"shard": pl.Utf8, "key": pl.Int64, "conversation_id": pl.Utf8, "row": pl.Int64}
_MATCHES_SCHEMA: dict[str, pl.DataType] = {"shard": pl.Utf8, **MATCHES_SCHEMA}


@dataclass
class IncrementalDecontamination:
    """The outputs of :func:`~.removal.decontaminate` for the whole table, and what the run did: the shards checked
    (``new_shards``) and reused, the keys that crossed the training-side cut-off and the earlier rows re-checked
    because of them, whether the state was rebuilt and why, and seconds per phase (``hash``: content hashes of every
    shard and the fingerprint; ``check``: state read, new shards checked, earlier rows re-checked; ``save``;
    ``outputs``: kept, rejected and report of the whole table). ``verdicts``: the judged semantic pairs of the table
    (:data:`~.semantic.VERDICT_SCHEMA`; empty when verification is off)."""

    kept: pl.DataFrame
    rejected: pl.DataFrame
    report: dict[str, Any]
    verdicts: pl.DataFrame
    new_shards: list[str]
    reused_shards: list[str]
    crossed_keys: int
    rechecked_rows: int
    rebuilt: bool
    rebuild_reason: str | None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _State:
    """The persisted results: every processed shard's matches (``row`` local to its shard) under the cut-off as it
    stood when they were computed, and the distinct (key, conversation_id, row) of its n-gram hits on a key."""

    generation: int
    shards: dict[str, dict[str, Any]]  # shard -> content hash, rows
    matches: pl.DataFrame  # _MATCHES_SCHEMA
    keys: pl.DataFrame  # _KEYS_SCHEMA
    rebuilt: bool
    changed: bool = False


def decontaminate_shards(
    df: pl.DataFrame, index: EvalIndex, state_dir: str | Path, *, max_detail: int = 3,
    log: Callable[[str], None] | None = None,
) -> IncrementalDecontamination:
    """Decontaminate ``df`` (a table with a ``shard`` column) against ``index``, reusing the state in ``state_dir``."""
    clock = _Clock()
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    positions = shard_positions(df)
    hashes = shard_hashes(df, positions)
    fingerprint = _fingerprint(index)
    clock.lap("hash")
    state, reason = _load_state(state_dir, fingerprint, hashes)
    if reason and log:
        log(f"decontamination state rebuilt: {reason}")
    new = [key for key in positions if key not in state.shards]
    frequent, crossed, rechecked = _add_shards(df, index, positions, state, new, log)
    clock.lap("check")
    if state.changed or state.rebuilt:
        state.shards = {key: {"content_hash": hashes[key], "rows": int(rows.size)} for key, rows in positions.items()}
        _save_state(state_dir, state, fingerprint)
    clock.lap("save")
    matches = _table_matches(state.matches, positions)
    kept, rejected, report = removal_outputs(df, index, matches, frequent_owners(index, frequent),
                                             max_detail=max_detail)
    judge = index.semantic.judge.provenance() if index.semantic is not None and index.semantic.judge else None
    verdicts = verdict_table(df, index.items, matches, judge)
    clock.lap("outputs")
    return IncrementalDecontamination(
        kept, rejected, report, verdicts, new, [key for key in positions if key not in new], crossed, rechecked,
        state.rebuilt, reason if state.rebuilt else None, clock.laps,
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
# shards and their identity, and what a state is valid for


def _fingerprint(index: EvalIndex) -> dict[str, Any]:
    """What a state is valid for: its format, the config, the eval set (the index's texts, in its order), the code
    that computes matches and the libraries it runs on (normalization, hashing)."""
    items = hashlib.sha256()
    for seed, column in enumerate(("benchmark", "item_id", "field", "text")):
        items.update(index.items[column].hash(seed=seed).to_numpy().tobytes())
    semantic = index.semantic.fingerprint() if index.semantic is not None else None
    return {"version": STATE_VERSION, "config": index.config.to_json(), "eval_sets": items.hexdigest(),
            "semantic": semantic,
            "code": _code_hash(), "libraries": f"polars {pl.__version__}, numba {numba.__version__}, numpy "
                                               f"{np.__version__}"}


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """SHA-256 of the source of the modules matches depend on (any edit starts the state over)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for name in _CODE_MODULES:
        path = root / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# the state


_REASONS = {"version": "the state format changed", "config": "the decontamination settings changed",
            "eval_sets": "the eval sets changed", "code": "the decontamination code changed",
            "libraries": "polars, numba or numpy changed version",
            "semantic": "the embedding model (its bytes or chunk length), the language-ID model or the judge changed"}


def _load_state(state_dir: Path, fingerprint: dict[str, Any], hashes: dict[str, str]) -> tuple[_State, str | None]:
    """The persisted per-shard results, or an empty state and why (a full check follows)."""
    manifest, reason = _read_manifest(state_dir)
    for name, why in _REASONS.items():
        if reason is None and manifest.get(name) != fingerprint[name]:
            reason = why
    if reason is None:
        changed = sorted(k for k, s in manifest["shards"].items() if hashes.get(k) != s["content_hash"])
        if changed:
            reason = f"processed shard(s) changed or were removed: {changed}"
    frames = None if reason else _read_frames(state_dir, manifest)
    if reason is None and frames is None:
        reason = "the state files do not match the manifest (interrupted write)"
    if reason is not None:
        _delete_files(state_dir, keep=set())
        generation = manifest.get("generation", 0) if manifest else 0
        return _State(generation, {}, pl.DataFrame(schema=_MATCHES_SCHEMA), pl.DataFrame(schema=_KEYS_SCHEMA),
                      rebuilt=True), reason
    return _State(manifest["generation"], manifest["shards"], *frames, rebuilt=False), None


def _read_manifest(state_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = state_dir / MANIFEST
    if not path.exists():
        return None, "no previous state"
    try:
        return json.loads(path.read_text()), None
    except ValueError:
        return None, "the manifest is unreadable"


def _read_frames(state_dir: Path, manifest: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The matches and keys files, or None if either is missing or not the bytes the manifest recorded."""
    frames = []
    for name in ("matches", "keys"):
        path = state_dir / manifest[name]["file"]
        data = path.read_bytes() if path.exists() else b""
        if hashlib.sha256(data).hexdigest() != manifest[name]["sha256"]:
            return None
        frames.append(pl.read_parquet(io.BytesIO(data)))
    return frames[0], frames[1]


def _save_state(state_dir: Path, state: _State, fingerprint: dict[str, Any]) -> None:
    """Write the matches and keys under a new generation, then the manifest (with their SHA-256: the files are not
    synced to disk, the manifest is), then delete the files it does not name."""
    state.generation += 1
    files = {}
    for name, frame in (("matches", state.matches), ("keys", state.keys)):
        file = f"{name}-{state.generation:06d}.parquet"
        files[name] = {"file": file, "sha256": _write_unsynced(frame, state_dir / file)}
    write_json_atomic({**fingerprint, "generation": state.generation, "shards": state.shards, **files},
                      state_dir / MANIFEST)
    _delete_files(state_dir, keep={f["file"] for f in files.values()})


def _write_unsynced(frame: pl.DataFrame, path: Path) -> str:
    """Write ``frame`` to a temp file renamed to ``path``; return the SHA-256 of its bytes."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    data = buffer.getvalue()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _delete_files(state_dir: Path, keep: set[str]) -> None:
    for stale in [*state_dir.glob("matches-*.parquet"), *state_dir.glob("keys-*.parquet")]:
        if stale.name not in keep:
            stale.unlink()


# --------------------------------------------------------------------------------------------------------
# checking new shards, re-checking earlier rows, assembling the table


def _rows_of(df: pl.DataFrame, positions: np.ndarray) -> pl.DataFrame:
    """The columns the detectors read, for the rows ``positions`` of ``df``."""
    return shard_rows(df.select("conversation_id", "messages"), positions)


def _add_shards(df: pl.DataFrame, index: EvalIndex, positions: dict[str, np.ndarray], state: _State,
                new: list[str], log: Callable[[str], None] | None) -> tuple[pl.DataFrame, int, int]:
    """Check the ``new`` shards alone, add their keys to the counts, then re-check the earlier rows holding a key
    that crossed the cut-off. Returns (the table's frequent keys, keys crossed, rows re-checked)."""
    limit = index.config.max_train_rows
    before = frequent_keys(state.keys, limit)
    evidence = {key: gather_evidence(_rows_of(df, positions[key]), index) for key in new}
    state.keys = pl.concat([state.keys, *(_with_shard(key, evidence[key].key_conversations()) for key in new)])
    frequent = frequent_keys(state.keys, limit)
    fresh = [_with_shard(key, matches_from(evidence[key], index, frequent)) for key in new]
    for key, matches in zip(new, fresh, strict=True):
        if log:
            log(f"shard {key}: {positions[key].size} rows checked, {matches['row'].n_unique()} contaminated")
    crossed = frequent.join(before, on="key", how="anti")["key"]
    earlier = pl.DataFrame(schema={"shard": pl.Utf8, "row": pl.Int64})
    if crossed.len():
        earlier = (state.keys.filter(pl.col("key").is_in(crossed.implode()) & ~pl.col("shard").is_in(new))
                   .select("shard", "row").unique().sort("shard", "row"))
        fresh += [_recheck(df, index, key, positions[key], rows["row"].to_numpy(), frequent)
                  for (key,), rows in earlier.partition_by("shard", as_dict=True).items()]
    if fresh:  # new shards have no matches in the state yet; re-checked rows drop their string detectors' ones
        semantic = pl.col("detector") == SEMANTIC
        state.matches = pl.concat([state.matches.filter(semantic),
                                   state.matches.filter(~semantic).join(earlier, on=["shard", "row"], how="anti"),
                                   *fresh])
    state.changed = bool(new) or earlier.height > 0
    if log and crossed.len():
        log(f"{crossed.len()} key(s) crossed max_train_rows={limit}; re-checked {earlier.height} earlier rows")
    return frequent, crossed.len(), earlier.height


def _with_shard(key: str, frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(pl.lit(key, pl.Utf8).alias("shard"), pl.all())


def _recheck(df: pl.DataFrame, index: EvalIndex, key: str, shard_positions: np.ndarray, rows: np.ndarray,
             frequent: pl.DataFrame) -> pl.DataFrame:
    """The string detectors' matches of rows ``rows`` (local to shard ``key``) under the ``frequent`` keys."""
    fresh = matches_from(gather_evidence(_rows_of(df, shard_positions[rows]), index, semantic=False), index, frequent)
    return _with_shard(key, fresh.with_columns(pl.Series("row", rows).gather(fresh["row"])))


def _table_matches(matches: pl.DataFrame, positions: dict[str, np.ndarray]) -> pl.DataFrame:
    """The state's matches with (shard, local row) turned into the position in the table, in :func:`sort_matches`
    order."""
    keys = list(positions)
    offsets = np.concatenate([[0], np.cumsum([positions[k].size for k in keys])[:-1]]).astype(np.int64)
    table_rows = np.concatenate([positions[k] for k in keys]) if keys else np.empty(0, np.int64)
    base = matches["shard"].replace_strict(keys, offsets.tolist(), return_dtype=pl.Int64)
    rows = table_rows[(base + matches["row"]).to_numpy()] if matches.height else np.empty(0, np.int64)
    return sort_matches(matches.drop("shard").with_columns(pl.Series("row", rows, dtype=pl.Int64)))
