"""The quality rules shard by shard, each shard's verdicts kept for reuse (no Dagster here).

Every rule judges a row by its own ``messages`` and ``finish_reasons`` (nothing table-wide: no quantile, no count
over other rows), so a row's verdict (its first failed rule and the detail) is computed once per shard content and
kept (:class:`~assets.common.data.shards.ShardResults`, named by the shard's content hash over those two columns,
the filtering code's version, the thresholds and the polars version). A build computes the verdicts of the shards
it has not seen, reads the others', and splits the whole table by them with the same code as a full check, so the
output equals :func:`~.core.apply_filters` of the table byte for byte. What still reads the whole table: the content
hashes and the split itself (vectorized, no rule is evaluated on a reused row).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl

from assets.common.data.config import config_dict
from assets.common.data.rules import ROW, split_by_verdicts
from assets.common.data.schema import REJECTED_DETAIL, REJECTED_REASON
from assets.common.data.shards import ShardResults, shard_hashes, shard_positions, shard_rows, table_order
from assets.common.models.code_version import source_version
from assets.filtering.core import RULES, FilterConfig, FilterResult, filter_verdicts

INPUT_COLUMNS = ("messages", "finish_reasons")  # what a verdict depends on
_CODE = (Path(__file__).parent, Path(__file__).parents[1] / "common" / "data" / "rules.py")
_VERDICT = {REJECTED_REASON: pl.Utf8, REJECTED_DETAIL: pl.Utf8}


@dataclass(frozen=True)
class IncrementalFilter:
    result: FilterResult
    computed_shards: list[str]
    reused_shards: list[str]


def filter_shards(df: pl.DataFrame, cfg: FilterConfig, results_dir: str | Path) -> IncrementalFilter:
    """:func:`~.core.apply_filters` of ``df`` (a table with ``shard``), reusing the verdicts kept in
    ``results_dir`` for shards whose content was already checked under these thresholds and this code."""
    positions = shard_positions(df)
    hashes = shard_hashes(df, positions, INPUT_COLUMNS)
    results = ShardResults(results_dir, {"stage": "filtering", "code": _code_version(),
                                         "config": config_dict(cfg), "polars": pl.__version__})
    results.record_in_use(hashes.values())
    verdicts = {}
    for key, rows in positions.items():
        kept = results.read(key, hashes[key])
        if kept is None:  # only rejected rows are kept: (row in the shard, reason, detail)
            shard = shard_rows(df.select(INPUT_COLUMNS), rows)
            kept = filter_verdicts(shard, cfg).filter(pl.col(REJECTED_REASON).is_not_null())
            results.write(key, hashes[key], kept)
        verdicts[key] = _every_row(kept, rows.size)
    verdict = table_order(positions, verdicts) if positions else pl.DataFrame(schema=_VERDICT)
    split = split_by_verdicts(df, verdict, list(RULES))
    return IncrementalFilter(FilterResult(kept=split.kept, rejected=split.rejected, funnel=split.funnel),
                             results.computed, results.reused)


def _every_row(rejected: pl.DataFrame, rows: int) -> pl.DataFrame:
    """The verdict of each of a shard's ``rows`` rows (null reason: kept) from its rejected rows' verdicts."""
    every = pl.DataFrame({ROW: pl.int_range(rows, eager=True, dtype=pl.UInt32)})
    return every.join(rejected.select(pl.col(ROW).cast(pl.UInt32), REJECTED_REASON, REJECTED_DETAIL), on=ROW,
                      how="left", maintain_order="left").select(REJECTED_REASON, REJECTED_DETAIL)


@cache
def _code_version() -> str:
    return source_version(_CODE)
