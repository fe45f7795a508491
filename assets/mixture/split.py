"""Row hashes and the stratified train/validation split (no Dagster here).

Every row hashes ``(seed, conversation_id)`` with BLAKE2b to a 64-bit ``h`` (identical on every platform). The
split is stratified by (source, task): within each stratum the rows are ranked by ``h`` and the first
``round(validation_fraction * n)`` (half up) are the validation pool, the rest the train pool. A row's split depends
only on the rows of its own stratum, so adding rows of other sources or categories never moves it (adding rows to
its own stratum can move only the rows at the boundary). One exception keeps small pools usable: with >= 2 rows and
``validation_fraction > 0``, if no stratum rounds to a validation row, the row with the smallest ``h`` of the largest
stratum (ties: by name) goes to validation; if every row rounded to validation, the one with the largest ``h`` is
train.
"""

from __future__ import annotations

import hashlib
import math

import polars as pl

HASH = "__mix_hash"
ORDER = "__mix_order"
IS_VAL = "__is_val"
STRATUM = ("source", "task")
_RANK = "__stratum_rank"


def split_hash(conversation_ids: pl.Series, seed: int) -> pl.Series:
    """Stable 64-bit BLAKE2b of each id keyed by ``seed`` (hashlib: identical on every platform and polars
    version, unlike ``Series.hash``)."""
    key = str(seed).encode()
    values = [
        int.from_bytes(hashlib.blake2b(cid.encode("utf-8"), digest_size=8, key=key).digest(), "big")
        for cid in conversation_ids.to_list()
    ]
    return pl.Series(conversation_ids.name, values, dtype=pl.UInt64)


def half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def assign_split(pool: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """``pool`` with a boolean ``IS_VAL`` column (see the module docstring)."""
    if pool.height == 0 or fraction == 0:
        return pool.with_columns(pl.lit(False).alias(IS_VAL))
    n = pl.len().over(STRATUM)
    wanted = ((n.cast(pl.Float64) * fraction) + 0.5 + 1e-9).floor().cast(pl.Int64)
    ranked = pool.with_columns(pl.int_range(pl.len()).over(STRATUM, order_by=[HASH, ORDER]).alias(_RANK))
    ranked = ranked.with_columns((pl.col(_RANK) < wanted).alias(IS_VAL))
    if ranked.height >= 2 and not ranked[IS_VAL].any():
        sizes = ranked.group_by(STRATUM).len().sort(["len", *STRATUM], descending=[True, False, False])
        source, task = sizes.row(0)[:2]
        first = (pl.col("source") == source) & (pl.col("task") == task) & (pl.col(_RANK) == 0)
        ranked = ranked.with_columns(first.alias(IS_VAL))
    if ranked[IS_VAL].all():  # keep at least one training row
        last = ranked.sort([HASH, ORDER])[ORDER][-1]
        ranked = ranked.with_columns((pl.col(ORDER) != last).alias(IS_VAL))
    return ranked.drop(_RANK)


def validation_draw(val_pool: pl.DataFrame, rows: int) -> pl.DataFrame:
    """``rows`` validation rows, stratified: each (source, task) stratum gets its share of the validation pool
    (largest remainder, ties by name), taken in ascending ``h``."""
    if rows >= val_pool.height:
        return val_pool
    counts = {(s, t): n for s, t, n in val_pool.group_by(STRATUM).len().iter_rows()}
    total = sum(counts.values())
    quota = {k: rows * n / total for k, n in counts.items()}
    take = {k: math.floor(q + 1e-9) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: (-(quota[k] - take[k]), k))[: rows - sum(take.values())]:
        take[k] += 1
    keys = pl.DataFrame({"source": [k[0] for k in take], "task": [k[1] for k in take],
                         "__take": list(take.values())}, schema={"source": pl.Utf8, "task": pl.Utf8,
                                                                 "__take": pl.Int64})
    ranked = val_pool.with_columns(pl.int_range(pl.len()).over(STRATUM, order_by=[HASH, ORDER]).alias(_RANK))
    return ranked.join(keys, on=list(STRATUM), how="left").filter(pl.col(_RANK) < pl.col("__take")).drop(
        _RANK, "__take")
