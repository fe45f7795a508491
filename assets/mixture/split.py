"""Row hashes and the stratified train/validation split (no Dagster here).

Every row hashes ``(seed, conversation_id)`` with BLAKE2b to a 64-bit ``h`` (identical on every platform). The
split is stratified by (source, task): within each stratum the rows are ranked by ``h`` and the first
``round(validation_fraction * n)`` (half up) are the validation pool, the rest the train pool; a stratum of at least
``min_rows_for_validation`` rows (:data:`MIN_ROWS_FOR_VALIDATION` by default) has at least one, whatever the
fraction (at 0.1 rounding alone starts at 5 rows, at 0.05 only at 10). A row's split depends only on the rows of its
own stratum, so adding rows of other sources or categories never moves it; adding ``k`` rows to its own stratum
moves at most ``k`` of that stratum's earlier rows, those ranked next to its validation cut (the cut moves, and new
rows rank in front of old ones). One exception keeps small pools usable: with >= 2 rows and
``validation_fraction > 0``, if no stratum has a validation row, the row with the smallest ``h`` of the largest
stratum (ties: by name) goes to validation (which stratum that is depends on the others); if every row went to
validation, the one with the largest ``h`` is train.

The validation rows a mixture takes from the pool (:func:`validation_draw`) keep one row of every stratum the pool
has, whenever there are at least as many rows as strata; :func:`validation_coverage` lists every stratum left
without a validation row and why.
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
# A (source, task) stratum with at least this many rows gets at least one validation row: holding one out costs it at
# most a fifth of its rows. MixtureConfig.min_rows_for_validation overrides it (0: rounding alone decides).
MIN_ROWS_FOR_VALIDATION = 5


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


def assign_split(pool: pl.DataFrame, fraction: float, min_rows: int = MIN_ROWS_FOR_VALIDATION) -> pl.DataFrame:
    """``pool`` with a boolean ``IS_VAL`` column (see the module docstring)."""
    if pool.height == 0 or fraction == 0:
        return pool.with_columns(pl.lit(False).alias(IS_VAL))
    n = pl.len().over(STRATUM)
    wanted = ((n.cast(pl.Float64) * fraction) + 0.5 + 1e-9).floor().cast(pl.Int64)
    if min_rows > 0:
        wanted = pl.max_horizontal(wanted, (n >= min_rows).cast(pl.Int64))
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
    """``rows`` validation rows, stratified: with at least as many rows as strata, one row of each (source, task)
    stratum of the validation pool and the rest in proportion to what each has beyond it (largest remainder, ties by
    name); with fewer, one row of each of the ``rows`` largest strata (ties by name). Taken in ascending ``h``."""
    if rows >= val_pool.height:
        return val_pool
    counts = {(s, t): n for s, t, n in val_pool.group_by(STRATUM).len().iter_rows()}
    take = _stratum_takes(counts, rows)
    keys = pl.DataFrame({"source": [k[0] for k in take], "task": [k[1] for k in take],
                         "__take": list(take.values())}, schema={"source": pl.Utf8, "task": pl.Utf8,
                                                                 "__take": pl.Int64})
    ranked = val_pool.with_columns(pl.int_range(pl.len()).over(STRATUM, order_by=[HASH, ORDER]).alias(_RANK))
    return ranked.join(keys, on=list(STRATUM), how="left").filter(pl.col(_RANK) < pl.col("__take")).drop(
        _RANK, "__take")


def _stratum_takes(counts: dict[tuple[str, str], int], rows: int) -> dict[tuple[str, str], int]:
    """Rows to take per stratum (see :func:`validation_draw`); ``rows`` < the pool's rows."""
    if rows < len(counts):
        largest = sorted(counts, key=lambda k: (-counts[k], k))[:rows]
        return {k: int(k in largest) for k in counts}
    rest, beyond = rows - len(counts), sum(counts.values()) - len(counts)
    quota = {k: rest * (n - 1) / beyond for k, n in counts.items()}
    take = {k: 1 + math.floor(q + 1e-9) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: (-(quota[k] - math.floor(quota[k] + 1e-9)), k))[: rows - sum(take.values())]:
        take[k] += 1
    return take


def validation_coverage(pool: pl.DataFrame, validation: pl.DataFrame, fraction: float,
                        min_rows: int = MIN_ROWS_FOR_VALIDATION) -> dict:
    """How many (source, task) strata of ``pool`` (with ``IS_VAL``) the mixture's ``validation`` rows cover, and
    every stratum without one, with its size and why (what the manifest reports)."""
    sizes = pool.group_by(STRATUM).agg(pl.len().alias("rows"), pl.col(IS_VAL).sum().alias("pool"))
    held = {(s, t): n for s, t, n in validation.group_by(STRATUM).len().iter_rows()}
    missing = []
    for source, task, n, in_pool in sizes.sort(list(STRATUM)).iter_rows():
        if held.get((source, task)):
            continue
        if fraction == 0:
            why = "validation_fraction is 0"
        elif in_pool == 0 and (n < min_rows or min_rows == 0):
            why = (f"{n} row(s): round({fraction} x {n}) = 0, and " + (
                f"fewer than min_rows_for_validation={min_rows}" if min_rows else "min_rows_for_validation is 0"))
        elif in_pool == 0:
            why = "its validation row would have left the whole mix without a training row"
        else:
            why = (f"{validation.height} validation row(s) for the {sizes.filter(pl.col('pool') > 0).height} strata "
                   "of the validation pool: one each went to the largest")
        missing.append({"source": source, "task": task, "rows": n, "reason": why})
    return {"min_rows_for_validation": min_rows, "strata": sizes.height, "with_validation": len(held),
            "without_validation": missing}
