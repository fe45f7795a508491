"""The caches under a data root and which of their entries a later build can still reuse (no Dagster here).

Three caches save recomputation and never decide an output: a miss only costs the work again, with the same result.
They grow with every new input, so retention (:mod:`.retention`, ``--caches``) removes the entries no build of the
current inputs would read, by two rules:

- **a folder with an** ``IN_USE.json`` **record** (:func:`record_in_use`): the stage that owns the folder names in it,
  at the start of every build, the entries that build reads or writes: filtering's and tagging's
  ``<asset>/shard_results/`` (the results of the input's shards under the build's code and settings: one file per
  (identity, shard content), :class:`~.shards.ShardResults`) and the mixture's ``sft_mixture/token_counts/`` (the
  folder of the student tokenizer's identity: its rows' counts, token ids and masks, which ``sft_model`` reads too).
  Every other entry directly in that folder (a shard that changed or left the input, results under older settings or
  code, another tokenizer's counts) is removable. A cache folder
  without a record (written before records existed) is left as it is until its stage's next build writes one.
- **the embedding cache** ``<root>/embeddings/<model hash>/``: a model's folder is kept when its hash appears in a
  string retention keeps anyway (a kept JSON version: the current dedup and decontamination reports and the mixture's
  manifest record the model hash they embedded with; a kept run's metadata; a kept model's JSON files), else
  removed whole. Inside a model's folder nothing is removed: a sentence-transformers model's vectors move in the
  last bits with the batch they were computed in, so a vector recomputed for a text the cache had could differ from
  the one a current output was built from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from assets.common.data.storage import write_json_atomic

IN_USE = "IN_USE.json"  # in a cache folder: the entries the last build of its stage reads or writes
EMBEDDING_CACHE = "embeddings"  # <data root>/embeddings/<model hash>/: text embeddings, shared by every stage
MODELS = "models"


def record_in_use(folder: str | Path, entries: Iterable[str]) -> None:
    """Name ``entries`` (file or folder names directly in ``folder``) as what the build being run reads or writes:
    retention keeps them and may remove the folder's other entries."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"entries": sorted(set(entries))}, folder / IN_USE)


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    cache: str  # the cache folder, relative to the root (e.g. ``filtered_conversations/shard_results``)
    kept: str | None  # why it is kept, or None: removable
    record: Path | None  # what decided it (the IN_USE.json record; None for the embedding cache)


def cache_entries(root: Path, kept_strings: Iterable[str]) -> list[CacheEntry]:
    """Every entry of every cache under ``root``, kept or not by the rules above; ``kept_strings``: the strings of
    everything retention keeps (kept JSON versions and model JSON files, the kept runs' metadata)."""
    entries: list[CacheEntry] = []
    for record in sorted(root.rglob(IN_USE)):
        folder = record.parent
        if MODELS in folder.relative_to(root).parts[:1]:
            continue
        named = _named(record)
        cache = folder.relative_to(root).as_posix()
        entries += [CacheEntry(entry, cache, f"in use ({cache}/{IN_USE})" if entry.name in named else None, record)
                    for entry in sorted(folder.iterdir()) if entry.name != IN_USE]
    embeddings = root / EMBEDDING_CACHE
    if embeddings.is_dir():
        folders = [f for f in sorted(embeddings.iterdir()) if f.is_dir() and not f.is_symlink()]
        wanted = {f.name for f in folders}
        named = {name for text in kept_strings for name in wanted if name in text} if wanted else set()
        entries += [CacheEntry(f, EMBEDDING_CACHE, "its model hash is named by a kept version, run or model"
                               if f.name in named else None, None) for f in folders]
    return entries


def _named(record: Path) -> set[str]:
    try:
        entries = json.loads(record.read_text(encoding="utf-8"))["entries"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{record}: unreadable ({error!r}); expected {{\"entries\": [names]}}. Retention cannot tell "
                         "which cache entries are in use, so it removes nothing: delete the record (its stage "
                         "writes a new one on its next build) and run it again") from None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f"{record}: `entries` must be a list of names, got {entries!r}; delete the record (its "
                         "stage writes a new one on its next build) and run retention again")
    return set(entries)
