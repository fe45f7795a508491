"""Task tagging, train/validation split and task-mixture sampling (no Dagster here).

``build_mixture`` turns the filtered conversation pool into the SFT mixture in three steps:

1. **Task tag.** Every row keeps the ``task`` the tagging stage gave it (the LLM judge's category from the
   project's one taxonomy, ``assets/common/taxonomy.py``, or the fallback regex tagger's). Rows without one (a
   null ``task``, or no ``task`` column) get the fallback tagger's category (``classify_task``: a transparent
   keyword/regex heuristic over the first user message). Any label is allowed in an existing ``task`` column.
2. **Split (before any sampling).** Each row hashes ``(seed, conversation_id)`` with BLAKE2b to a 64-bit
   integer ``h``; rows with ``h / 2**64 < validation_fraction`` are the validation pool, the rest the train
   pool. A row's pool depends only on its own id and the seed, so adding or removing other rows never moves
   it between train and validation, and the two splits can never share a conversation. One exception keeps
   small pools usable: with >= 2 rows and ``validation_fraction > 0``, if no row hashed into validation the
   row with the smallest ``h`` is moved there (and if every row did, the largest ``h`` goes to train); a
   single row is always train. These moves are the only case where adding rows can change a row's split.
   The split is computed over the rows of the included tasks: those with a positive weight, or every task
   when ``weights`` is None; rows of other tasks are dropped (``stats["excluded_rows"]``).
3. **Sampling.** Target task proportions ``p`` are ``weights`` (normalised) or, when ``weights`` is None,
   temperature-scaled natural proportions ``p_i ∝ n_i ** (1 / temperature)`` over the train pool counts
   ``n_i`` (``temperature=1`` is the natural distribution, larger values flatten it towards uniform).
   The train size ``N`` is ``max_rows - validation rows`` when ``max_rows`` is set, otherwise the largest
   size whose per-task targets every task with available rows can meet without repeating rows (with the
   natural distribution: every train-pool row). Per-task targets are ``N * p`` rounded by largest
   remainder. Within a task, rows are taken in ascending ``h`` (a seeded uniform shuffle, without
   replacement). A task with fewer rows than its target contributes all of them and the shortfall is
   reported in ``stats``; it is not redistributed to other tasks. With ``allow_upsampling`` the task's rows
   are instead repeated cyclically (in the same ``h`` order) up to the target.
   Validation is drawn from the validation pool of the included tasks, in ascending ``h`` and so in the
   pool's natural task distribution (it measures held-out loss; it is not a replica of the mixture), never
   upsampled. Its size: ``max(1, round(max_rows * validation_fraction))`` with ``max_rows``; otherwise the
   whole validation pool when train took every train-pool row, else ``max(1, round(N_realized * f /
   (1 - f)))`` so that validation stays about ``validation_fraction`` of the output.

The output is sorted by ``split`` ("train" before "validation"), then ``conversation_id``, then repeat
index, so the same input and seed give an identical frame whatever the input row order (given unique
conversation_ids; rows sharing an id are ordered by input position).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from assets.common.taxonomy import classify_task

_SPLIT_TRAIN = "train"
_SPLIT_VALIDATION = "validation"
_HASH = "__mix_hash"
_ORDER = "__mix_order"
_REPEAT = "__mix_repeat"
_TWO_64 = 1 << 64
_IS_VAL = "__is_val"


@dataclass(frozen=True)
class MixtureConfig:
    """How to build the mixture (see the module docstring for the exact semantics).

    ``weights``: target share per task (any non-negative numbers, normalised; tasks missing from it or with
    weight 0 are excluded); None = temperature-scaled natural distribution. ``temperature`` > 0 (1 = natural).
    ``max_rows``: requested output size, train + validation (an upper bound: shortfalls make it smaller);
    None = as large as the pool allows. ``validation_fraction`` in [0, 1). ``seed`` drives the split and the
    sampling order. ``allow_upsampling``: repeat a short task's rows to reach its train target.
    """

    weights: Mapping[str, float] | None = None
    temperature: float = 1.0
    max_rows: int | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    allow_upsampling: bool = False

    def __post_init__(self) -> None:
        if self.weights is not None:
            weights = dict(self.weights)
            bad = {k: v for k, v in weights.items() if not (isinstance(v, int | float) and v >= 0)}
            if bad or not weights:
                raise ValueError(f"weights must map task -> non-negative number, got {self.weights!r}")
            if sum(weights.values()) <= 0:
                raise ValueError(f"weights must have a positive total, got {self.weights!r}")
            object.__setattr__(self, "weights", weights)
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")
        if self.max_rows is not None and self.max_rows < 0:
            raise ValueError(f"max_rows must be >= 0 or None, got {self.max_rows}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")


@dataclass(frozen=True)
class MixtureResult:
    """``mixture``: the selected rows, all input columns plus ``task`` (if absent) and ``split``.

    ``stats`` (JSON-serialisable): ``stats["tasks"][task]`` has ``available`` (rows in the input),
    ``weight`` (normalised target share, 0 = excluded), ``train`` = {``available`` (train pool), ``target``,
    ``realized``, ``shortfall``, ``target_fraction``, ``realized_fraction``, ``upsampled``} and
    ``validation`` = {``available`` (validation pool), ``realized``, ``realized_fraction``}. Top level:
    ``available_rows``, ``excluded_rows``, ``train_target``, ``train_rows``, ``validation_target``,
    ``validation_rows``, ``validation_shortfall``, ``shortfall`` ({task: missing train rows}), ``config``.
    """

    mixture: pl.DataFrame
    stats: dict[str, Any]


def split_hash(conversation_ids: pl.Series, seed: int) -> pl.Series:
    """Stable 64-bit BLAKE2b of each id keyed by ``seed`` (Python's hashlib: identical on every platform and
    polars version, unlike ``Series.hash``). The one per-row Python loop in this module."""
    key = str(seed).encode()
    values = [
        int.from_bytes(hashlib.blake2b(cid.encode("utf-8"), digest_size=8, key=key).digest(), "big")
        for cid in conversation_ids.to_list()
    ]
    return pl.Series(conversation_ids.name, values, dtype=pl.UInt64)


def _apportion(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer targets summing to ``total`` proportional to ``shares`` (largest remainder; ties by name)."""
    if total <= 0 or not shares:
        return {task: 0 for task in shares}
    quotas = {task: total * share for task, share in shares.items()}
    base = {task: math.floor(q + 1e-9) for task, q in quotas.items()}
    left = total - sum(base.values())
    order = sorted(shares, key=lambda t: (-(quotas[t] - base[t]), t))
    for task in order[:left]:
        base[task] += 1
    return base


def _exact_size(available: dict[str, int], shares: dict[str, float]) -> int:
    """Largest N whose targets N * share every task with rows can meet without repeating rows."""
    limits = [available[t] / s for t, s in shares.items() if s > 0 and available.get(t, 0) > 0]
    return math.floor(min(limits) + 1e-9) if limits else 0


def _included_tasks(available: dict[str, int], cfg: MixtureConfig) -> list[str]:
    """Tasks the mixture draws from: positive weight, or (no weights) every task with rows."""
    if cfg.weights is not None:
        return sorted(t for t, w in cfg.weights.items() if w > 0)
    return sorted(t for t, n in available.items() if n > 0)


def _target_shares(train_available: dict[str, int], cfg: MixtureConfig) -> dict[str, float]:
    """Normalised target share per task: the weights, or temperature-scaled train-pool counts."""
    if cfg.weights is not None:
        raw = {t: float(w) for t, w in cfg.weights.items() if w > 0}
    else:
        raw = {t: n ** (1.0 / cfg.temperature) for t, n in train_available.items() if n > 0}
    total = math.fsum(raw[t] for t in sorted(raw))  # exact, order-independent
    return {t: raw[t] / total for t in sorted(raw)} if total > 0 else {}


def _take(pool: pl.DataFrame, targets: dict[str, int], upsample: bool) -> pl.DataFrame:
    """Per task, the first ``target`` rows in ascending hash order (cyclic repeats when ``upsample``)."""
    ranked = pool.with_columns(pl.int_range(pl.len()).over("task", order_by=[_HASH, _ORDER]).alias("__rank"))
    target_col = pl.col("task").replace_strict(targets, default=0, return_dtype=pl.Int64)
    n_task = pl.len().over("task")
    if upsample:
        # Row with rank r is used for draws r, r + n, r + 2n, ... below the target.
        copies = (
            pl.when(pl.col("__rank") < target_col)
            .then((target_col - pl.col("__rank") - 1) // n_task + 1)
            .otherwise(0)
        )
        return (
            ranked.with_columns(pl.int_ranges(0, copies).alias(_REPEAT))
            .filter(pl.col(_REPEAT).list.len() > 0)
            .explode(_REPEAT)
            .drop("__rank")
        )
    return ranked.filter(pl.col("__rank") < target_col).drop("__rank").with_columns(pl.lit(0).alias(_REPEAT))


def _counts(df: pl.DataFrame) -> dict[str, int]:
    """Rows per task, keys sorted (group_by order is arbitrary; float sums must not depend on it)."""
    return {t: int(n) for t, n in sorted(df.group_by("task").len().iter_rows())}


def _split_stats(available: dict[str, int], target: dict[str, int], realized: dict[str, int]) -> dict:
    tasks = sorted(set(available) | set(target) | set(realized))
    target_total, realized_total = sum(target.values()), sum(realized.values())
    return {
        t: {
            "available": available.get(t, 0),
            "target": target.get(t, 0),
            "realized": realized.get(t, 0),
            "shortfall": max(0, target.get(t, 0) - realized.get(t, 0)),
            "target_fraction": target.get(t, 0) / target_total if target_total else 0.0,
            "realized_fraction": realized.get(t, 0) / realized_total if realized_total else 0.0,
        }
        for t in tasks
    }


def build_mixture(df: pl.DataFrame, cfg: MixtureConfig | None = None) -> MixtureResult:
    """Tag, split and sample ``df`` into the SFT mixture (see the module docstring)."""
    cfg = cfg or MixtureConfig()
    _check_input(df)
    out_columns = [*df.columns, *(["task"] if "task" not in df.columns else []), "split"]

    tagged = classify_task(df).with_columns(
        split_hash(df["conversation_id"], cfg.seed).alias(_HASH), pl.int_range(pl.len()).alias(_ORDER)
    )
    available_all = _counts(tagged)
    pool = _assign_split(tagged.filter(pl.col("task").is_in(_included_tasks(available_all, cfg))), cfg)
    train_pool = pool.filter(~pl.col(_IS_VAL))
    val_pool = pool.filter(pl.col(_IS_VAL))
    train_available = _counts(train_pool)
    shares = _target_shares(train_available, cfg)

    n_train, n_val_target = _sizes(train_available, shares, cfg)
    train_target = _apportion(n_train, shares)
    train = _take(train_pool, train_target, cfg.allow_upsampling)
    if n_val_target is None:  # decided after train is drawn
        n_val_target = _validation_size(train, train_pool, val_pool, pool.height, cfg.validation_fraction)
    validation = val_pool.sort([_HASH, _ORDER]).head(n_val_target).with_columns(pl.lit(0).alias(_REPEAT))

    mixture = (
        pl.concat(
            [
                train.with_columns(pl.lit(_SPLIT_TRAIN).alias("split")),
                validation.with_columns(pl.lit(_SPLIT_VALIDATION).alias("split")),
            ],
            how="vertical_relaxed",
        )
        .sort(["split", "conversation_id", _REPEAT, _ORDER])
        .select(out_columns)
    )
    drawn_train = _Drawn(train_available, train_target, _counts(train), n_train, train.height)
    drawn_val = _Drawn(_counts(val_pool), {}, _counts(validation), n_val_target, validation.height)
    stats = _stats(df.height, pool.height, available_all, shares, drawn_train, drawn_val, cfg)
    return MixtureResult(mixture=mixture, stats=stats)


def _check_input(df: pl.DataFrame) -> None:
    if "conversation_id" not in df.columns:
        raise ValueError(f"build_mixture: missing column 'conversation_id'; columns are {df.columns}")
    if df["conversation_id"].null_count():
        raise ValueError("build_mixture: conversation_id has null values; every row needs an id to be split")
    for column in ("split", _HASH, _ORDER, _REPEAT):
        if column in df.columns:
            raise ValueError(f"build_mixture: input already has a column named '{column}'")


def _assign_split(pool: pl.DataFrame, cfg: MixtureConfig) -> pl.DataFrame:
    """``pool`` with a boolean ``_IS_VAL`` column: split by hash, before any sampling."""
    # the threshold is exact integer arithmetic on the 64-bit hash
    threshold = min(int(cfg.validation_fraction * _TWO_64), _TWO_64 - 1)
    is_val = (pl.col(_HASH) < threshold) if cfg.validation_fraction > 0 else pl.lit(False)
    pool = pool.with_columns(is_val.alias(_IS_VAL))
    # Small-pool exceptions: >= 1 validation and >= 1 train row when there are >= 2 rows; one row is train.
    n_val = int(pool[_IS_VAL].sum())
    if pool.height == 1:
        pool = pool.with_columns(pl.lit(False).alias(_IS_VAL))
    elif cfg.validation_fraction > 0 and pool.height >= 2 and n_val in (0, pool.height):
        by_hash = pool.sort([_HASH, _ORDER])[_ORDER]
        move = by_hash[0] if n_val == 0 else by_hash[-1]
        pool = pool.with_columns((pl.col(_IS_VAL) ^ (pl.col(_ORDER) == move)).alias(_IS_VAL))
    return pool


def _sizes(train_available: dict[str, int], shares: dict[str, float], cfg: MixtureConfig) -> tuple[int, int | None]:
    """(train size, validation size); the validation size is None when it depends on the train draw."""
    f = cfg.validation_fraction
    if cfg.max_rows is not None:
        n_val_target = max(1, round(cfg.max_rows * f)) if f > 0 and cfg.max_rows >= 2 else 0
        return cfg.max_rows - n_val_target, n_val_target
    return _exact_size(train_available, shares), None


def _validation_size(
    train: pl.DataFrame, train_pool: pl.DataFrame, val_pool: pl.DataFrame, pool_rows: int, f: float
) -> int:
    """Validation size without ``max_rows``: the whole pool when train took every train-pool row, else about
    ``f`` of the output."""
    used_every_row = train.filter(pl.col(_REPEAT) == 0).height == train_pool.height
    if f == 0 or pool_rows < 2:
        return 0
    if used_every_row:
        return val_pool.height
    return max(1, round(train.height * f / (1 - f)))


@dataclass(frozen=True)
class _Drawn:
    """Rows per task of one split: in its pool (``available``), wanted (``target``; none for validation) and
    drawn (``realized``), and the wanted and drawn totals."""

    available: dict[str, int]
    target: dict[str, int]
    realized: dict[str, int]
    target_rows: int
    rows: int


_ZERO_TRAIN = {
    "available": 0,
    "target": 0,
    "realized": 0,
    "shortfall": 0,
    "target_fraction": 0.0,
    "realized_fraction": 0.0,
    "upsampled": 0,
}


def _stats(
    input_rows: int,
    pool_rows: int,
    available_all: dict[str, int],
    shares: dict[str, float],
    train: _Drawn,
    validation: _Drawn,
    cfg: MixtureConfig,
) -> dict[str, Any]:
    """:attr:`MixtureResult.stats`."""
    train_stats = _split_stats(train.available, train.target, train.realized)
    for t, entry in train_stats.items():
        entry["upsampled"] = max(0, train.realized.get(t, 0) - train.available.get(t, 0))
    return {
        "tasks": {
            t: {
                "available": available_all.get(t, 0),
                "weight": shares.get(t, 0.0),
                "train": train_stats.get(t, dict(_ZERO_TRAIN)),
                "validation": {
                    "available": validation.available.get(t, 0),
                    "realized": validation.realized.get(t, 0),
                    "realized_fraction": validation.realized.get(t, 0) / validation.rows if validation.rows else 0.0,
                },
            }
            for t in sorted(set(available_all) | set(shares))
        },
        "available_rows": input_rows,
        "excluded_rows": input_rows - pool_rows,  # rows of tasks with zero/no weight
        "train_target": train.target_rows,
        "train_rows": train.rows,
        "validation_target": validation.target_rows,
        "validation_rows": validation.rows,
        "validation_shortfall": max(0, validation.target_rows - validation.rows),
        "shortfall": {t: s["shortfall"] for t, s in train_stats.items() if s["shortfall"] > 0},
        "config": {
            "weights": dict(cfg.weights) if cfg.weights is not None else None,
            "temperature": cfg.temperature,
            "max_rows": cfg.max_rows,
            "validation_fraction": cfg.validation_fraction,
            "seed": cfg.seed,
            "allow_upsampling": cfg.allow_upsampling,
        },
    }
