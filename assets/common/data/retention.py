"""Retention: which files of a data root are still referenced, and removing the rest (no Dagster here).

A long-running deployment writes a new version of a table or report whenever its input changes, a new model directory
per training, and working files (training and generation checkpoints, temporary files of interrupted writes). Nothing
is ever overwritten (lineage files name exact versions), so the root grows without bound. :func:`plan_retention`
decides what may go; :func:`apply_retention` removes it and counts the bytes freed.

What may be removed (the *units*; nothing else under the root is ever touched, e.g. the incremental dedup and
decontamination ``state`` folders, the ``external_inputs`` hash cache or a Dagster home; the three caches below
only with ``caches=True``):

- **versions**: ``<root>/<asset>/<name>/<sha16>.parquet|json`` in a folder with a ``CURRENT`` pointer, and
  ``<root>/<asset>/<name>/<sha16>/`` folders there (``sft_dataset``'s exported datasets folders);
- **model directories**: under ``<root>/models``, every directory that directly holds a file (whatever the naming
  scheme: ``models/sft/<name>-<key>``, ``models/student/...``, ``models/embedded/...``);
- **working files**: hidden entries beside versions and model directories (``.<dir>.checkpoints`` of an unfinished
  training, ``.<name>.*.tmp`` and ``.<dir>.*`` of an interrupted write) and ``<root>/<asset>/checkpoints/*``
  (an unfinished generation shard);
- **cache entries** (``caches=True``): entries of filtering's and tagging's ``shard_results``, the mixture's
  ``token_counts`` and the ``embeddings`` cache that no build of the current inputs would read (the rules and why
  removing them changes no output: :mod:`.caches`).

What is kept: every unit a *reference* names, and, transitively, every unit named by a kept unit. References start
at every ``CURRENT`` pointer's version and at the paths given by the caller (the last N runs' materialization
metadata, see ``pipelines/retention.py``). A kept JSON version is read for the paths it names (the promoted pointer
names the promoted model directory; the base model's manifest its prepared directory); a kept model directory's
``lineage.json`` and its other top-level JSON files up to 1 MB likewise (the tables and reports it was trained on,
its base model, a previous model it continued from). A path names the unit that holds it (a model directory's
``train_rows.parquet`` keeps the directory) or, if it is a directory holding units, every unit under it. Working
files are kept while they are referenced or were modified after ``keep_work_since`` (the start of the oldest kept
run: a checkpoint a retried run may resume from survives).

Cache entries are kept by their own rules only (:mod:`.caches`): what a kept string names decides nothing there but
which embedding models' folders stay.

Bytes freed count every removed file once, and only when no link to its data is left (the prepared student's
weights are hard links of the original's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assets.common.data.caches import MODELS, CacheEntry, cache_entries
from assets.common.data.storage import CURRENT, VERSION_CHARS

LINEAGE = "lineage.json"
SCANNED_JSON_BYTES = 1 << 20  # other top-level JSON files of a kept model directory read for paths, up to this size
VERSION_NAME = re.compile(rf"^[0-9a-f]{{{VERSION_CHARS}}}(\.parquet|\.json)?$")  # no suffix: a folder version
VERSION, MODEL, WORK, CACHE = "version", "model directory", "working files", "cache entry"


@dataclass(frozen=True)
class Unit:
    path: Path
    kind: str  # VERSION, MODEL or WORK


@dataclass
class RetentionPlan:
    root: Path
    kept: dict[Path, str] = field(default_factory=dict)  # unit -> why (the first reference that kept it)
    removed: list[Unit] = field(default_factory=list)
    bytes_freed: int = 0  # what removing ``removed`` frees
    units: dict[Path, Unit] = field(default_factory=dict)
    caches: dict[Path, CacheEntry] = field(default_factory=dict)  # cache entry's path -> its cache and record
    cache_bytes_freed: dict[str, int] = field(default_factory=dict)  # cache -> what removing its entries frees

    def summary(self) -> dict[str, Any]:
        """Counts per kind, kept and removed, the bytes freed, and per cache (with ``caches``) the entries kept and
        removed and the bytes freed: what the command prints."""
        kinds = sorted({u.kind for u in self.units.values()})
        summary = {
            "root": str(self.root), "bytes_freed": self.bytes_freed,
            "removed": {k: sum(u.kind == k for u in self.removed) for k in kinds},
            "kept": {k: sum(self.units[p].kind == k for p in self.kept) for k in kinds},
        }
        if self.caches:
            removed = [u.path for u in self.removed if u.path in self.caches]
            summary["caches"] = {cache: {
                "bytes_freed": self.cache_bytes_freed.get(cache, 0),
                "entries_removed": sum(self.caches[p].cache == cache for p in removed),
                "entries_kept": sum(e.cache == cache for p, e in self.caches.items() if p in self.kept),
            } for cache in self._cache_names()}
        return {**summary, "removed_paths": [str(u.path) for u in self.removed]}

    def count_freed(self) -> None:
        """``bytes_freed`` and ``cache_bytes_freed`` of ``removed``."""
        self.bytes_freed = _bytes_freed([u.path for u in self.removed])
        self.cache_bytes_freed = {cache: _bytes_freed([u.path for u in self.removed if u.path in self.caches
                                                       and self.caches[u.path].cache == cache])
                                  for cache in self._cache_names()}

    def _cache_names(self) -> list[str]:
        return sorted({entry.cache for entry in self.caches.values()})


def find_units(root: Path) -> dict[Path, Unit]:
    """Every removable unit under ``root`` (see the module docstring)."""
    units: dict[Path, Unit] = {}
    for pointer in sorted(root.rglob(CURRENT)):
        folder = pointer.parent
        if MODELS in folder.relative_to(root).parts[:1]:
            continue
        for entry in folder.iterdir():
            if VERSION_NAME.match(entry.name) and (entry.is_file() or entry.name.isalnum() and entry.is_dir()):
                units[entry] = Unit(entry, VERSION)
            elif entry.name.startswith("."):
                units[entry] = Unit(entry, WORK)
    for checkpoints in sorted(root.glob("*/checkpoints")):
        if checkpoints.is_dir() and checkpoints.parent.name != MODELS:
            units.update({entry: Unit(entry, WORK) for entry in checkpoints.iterdir()})
    if (root / MODELS).is_dir():
        units.update(_model_units(root / MODELS))
    return units


def _model_units(folder: Path) -> dict[Path, Unit]:
    """Model directories (a directory that directly holds a file) and hidden working entries under ``folder``."""
    units: dict[Path, Unit] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            units[entry] = Unit(entry, WORK)
        elif entry.is_dir() and not entry.is_symlink():
            holds_file = any(child.is_file() and not child.name.startswith(".") for child in entry.iterdir())
            units.update({entry: Unit(entry, MODEL)} if holds_file else _model_units(entry))
    return units


def path_strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from path_strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from path_strings(item)


def paths_under(root: Path, strings: Iterable[str]) -> Iterator[Path]:
    """The paths under ``root`` that ``strings`` name: a string that is such a path, or contains one (a path in a
    sentence or a Markdown table ends at whitespace, a quote, a bracket or a comma)."""
    prefix = str(root)
    pattern = re.compile(re.escape(prefix) + r"(?:/[^\s'\"`()\[\]<>,|]*)?")
    for text in strings:
        if prefix not in text:
            continue
        whole = Path(os.path.normpath(text.strip())) if text.strip().startswith(prefix) else None
        if whole is not None and (whole == root or root in whole.parents) and whole.exists():
            yield whole  # a string that is a path (spaces and all)
            continue
        for match in pattern.finditer(text):
            path = Path(os.path.normpath(match.group(0).rstrip(".:;")))
            if path == root or root in path.parents:
                yield path


def _named_units(path: Path, root: Path, units: dict[Path, Unit]) -> list[Path]:
    """The units ``path`` names: the one holding it, or every unit under it (not for the root itself)."""
    for candidate in (path, *path.parents):
        if candidate in units:
            return [candidate]
        if candidate == root:
            break
    if path == root:
        return []
    return [unit for unit in units if path in unit.parents]


def _references(unit: Unit) -> list[str]:
    """The strings a kept unit holds that may name other units: a JSON version's content, a model directory's
    lineage.json and small top-level JSON files."""
    if unit.kind == VERSION and unit.path.suffix == ".json":
        files = [unit.path]
    elif unit.kind == MODEL:
        files = [f for f in sorted(unit.path.glob("*.json"))
                 if f.is_file() and (f.name == LINEAGE or f.stat().st_size <= SCANNED_JSON_BYTES)]
    else:
        return []
    strings: list[str] = []
    for file in files:
        try:
            strings += path_strings(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{file}: unreadable ({error}); retention cannot tell what it names, so it removes "
                             "nothing. Fix or remove the file, then run it again") from None
    return strings


def _current_versions(root: Path) -> list[tuple[Path, str]]:
    """Every ``CURRENT`` pointer's version, with why it is kept."""
    seeds = []
    for pointer in sorted(root.rglob(CURRENT)):
        if MODELS in pointer.relative_to(root).parts[:1]:
            continue
        target = pointer.parent / pointer.read_text().strip()
        seeds.append((target, f"current ({pointer.relative_to(root)})"))
    return seeds


def plan_retention(root: str | os.PathLike, referenced: Iterable[tuple[str, str]] = (),
                   keep_work_since: float | None = None, caches: bool = False) -> RetentionPlan:
    """What to keep and what to remove under ``root``. ``referenced``: (text naming paths, why) pairs from outside
    the root (the last runs' metadata); ``keep_work_since``: working files modified after this time (seconds since
    the epoch) are kept; None keeps none that nothing references. ``caches``: cache entries no build of the current
    inputs would read are removed too (:mod:`.caches`)."""
    root = Path(os.path.normpath(Path(root).resolve()))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data root; pass the storage root the assets write to (--root, "
                                "SFT_DATA_ROOT or the profile's storage.root)")
    plan = RetentionPlan(root=root, units=find_units(root))
    referenced = list(referenced)
    kept_strings = [text for text, _ in referenced]  # what decides which embedding models' caches stay
    queue: list[tuple[Path, str]] = _current_versions(root)
    queue += [(path, why) for text, why in referenced for path in paths_under(root, [text])]
    while queue:
        path, why = queue.pop()
        for name in _named_units(path, root, plan.units):
            if name in plan.kept:
                continue
            plan.kept[name] = why
            unit = plan.units[name]
            origin = f"named by {name.relative_to(root)}"
            strings = _references(unit)
            kept_strings += strings
            queue += [(found, origin) for found in paths_under(root, strings)]
    if caches:  # decided after the rest: only by the caches' own rules
        for entry in cache_entries(root, kept_strings):
            plan.units[entry.path] = Unit(entry.path, CACHE)
            plan.caches[entry.path] = entry
            if entry.kept is not None:
                plan.kept[entry.path] = entry.kept
    for name, unit in plan.units.items():
        if name in plan.kept:
            continue
        if unit.kind == WORK and keep_work_since is not None and _newest_change(name) >= keep_work_since:
            plan.kept[name] = "working files modified during the kept runs"
            continue
        plan.removed.append(unit)
    plan.removed.sort(key=lambda u: str(u.path))
    plan.count_freed()
    return plan


def _files(path: Path) -> Iterator[Path]:
    """``path`` if it is a file (or a link), else every file and link under it; links are not followed."""
    if path.is_symlink() or not path.is_dir():
        yield path
        return
    for folder, _, names in os.walk(path):
        for name in names:
            yield Path(folder) / name


def _newest_change(path: Path) -> float:
    return max((f.lstat().st_mtime for f in _files(path)), default=path.lstat().st_mtime)


def _bytes_freed(paths: list[Path]) -> int:
    """Bytes of the files under ``paths`` whose every link is among them (a hard link kept elsewhere frees nothing)."""
    links: dict[tuple[int, int], list[os.stat_result]] = {}
    for path in paths:
        for file in _files(path):
            stat = file.lstat()
            links.setdefault((stat.st_dev, stat.st_ino), []).append(stat)
    return sum(stats[0].st_size for stats in links.values() if len(stats) >= stats[0].st_nlink)


def apply_retention(plan: RetentionPlan, unchanged_since: float | None = None) -> int:
    """Remove the plan's units; returns the bytes freed. With ``unchanged_since`` (seconds since the epoch), a unit
    changed after it is left in place (a write that began after the caller checked that nothing runs) and dropped
    from ``plan.removed``; so is a cache entry whose cache's record (its ``IN_USE.json``; for the embedding cache,
    any ``CURRENT`` pointer) changed after it."""
    if unchanged_since is not None:
        changed = [u for u in plan.removed if _newest_change(u.path) > unchanged_since
                   or u.path in plan.caches and _record_changed(plan, u.path, unchanged_since)]
        for unit in changed:
            plan.kept[unit.path] = "changed while retention ran"
        plan.removed = [u for u in plan.removed if u not in changed]
        plan.count_freed()
    for unit in plan.removed:
        if unit.path.is_dir() and not unit.path.is_symlink():
            shutil.rmtree(unit.path, onerror=_gone_already)
        else:
            unit.path.unlink(missing_ok=True)
    return plan.bytes_freed


def _record_changed(plan: RetentionPlan, entry: Path, since: float) -> bool:
    record = plan.caches[entry].record
    records = [record] if record is not None else plan.root.rglob(CURRENT)
    return any(r.exists() and r.stat().st_mtime > since for r in records)


def _gone_already(function, path, exc_info) -> None:
    """Removing what another process removed (or renamed) meanwhile is not an error; anything else is."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
