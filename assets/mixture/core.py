"""The SFT mixture: sources, categories, token or row targets, caps and floors, split, manifest (no Dagster here).

``build_mixture`` turns the tagged pool (generated rows and the rows of user sources, told apart by ``source``;
rows without one are the generated pool, ``"generated"``) into the training mixture:

1. **Labels.** ``task``: the tagging stage's (or the fallback tagger's for a null/missing one); ``language``: the
   ``instruction_language`` column ("unknown" without one); ``refusal`` (False without one); multi-turn = more
   than one user turn; system prompt = a leading system message. With ``weights``, generated rows of a task with
   no positive weight are excluded (``excluded_rows``).
2. **Split first** (:mod:`assets.mixture.split`): stratified by (source, task), by each row's seeded hash; a
   stratum of at least ``min_rows_for_validation`` rows has a validation row.
3. **Plan** (:mod:`assets.mixture.plan`): a share of the *training mix* per cell, measured in ``unit`` ("rows", or
   "tokens": every token of the conversation rendered with the student's chat template, counted by
   ``count_tokens``). A share is always a fraction of the final training mix, never of a source. Constraints, in
   the order that decides conflicts: (1) category caps/floors, multi-turn and system-prompt floors, (2) source
   shares, (3) the refusal share, (4) language targets, (5) temperature ``p_i ∝ n_i ** (1/T)`` across categories
   of the generated pool (or task ``weights``).
4. **Size.** With ``max_rows`` (unit rows) the output is that many rows: ``max(1, round(max_rows * f))`` validation
   (``f`` = ``validation_fraction``), train the rest. With ``max_tokens`` (unit tokens) train gets
   ``max_tokens * (1 - f)`` tokens and validation ``round(train rows * f / (1 - f))`` rows. Without either, train is
   the largest mix that takes every cell to its planned share without repeating a row. A requested size the rows
   cannot fill without repeats is an upper bound: the mix shrinks to the largest size at which every share holds
   (the manifest names the cells that limit it and the requested size), unless ``allow_upsampling`` repeats rows.
   With ``select`` (:mod:`assets.mixture.select`), the train pool is first cut to the highest-IFD rows of each
   (source, task), rows at IFD >= 1 dropped, with a diversity floor; the plan is then made over the selected rows.
5. **Draw** (:mod:`assets.mixture.draw`): rows of each cell in hash order to its planned amount. Upsampling is
   explicit (``allow_upsampling``); otherwise a cell short of rows gives all it has and the manifest says so.
6. **Validation**: from the validation pool, stratified, one row of every stratum first (see
   :func:`assets.mixture.split.validation_draw`; the manifest's ``validation_strata`` lists every stratum left
   without one and why), never upsampled: ``round(max_rows * f)`` rows with ``max_rows``; the whole pool when
   train took every train-pool row once; otherwise ``round(train rows * f / (1 - f))``.

Output columns: the input's, plus ``task``/``source`` when missing, ``split``, ``mix_tokens`` and
``mix_trainable_tokens`` (null without ``count_tokens``), ``mix_repeat`` (0 for a row's first copy) and
``mix_selected_by`` ("all", or the selection's score for train rows it chose), sorted by
split, conversation_id, repeat: the same input and seed give the same frame whatever the input order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from assets.common.data.taxonomy import classify_task
from assets.mixture.draw import AMOUNT, CELL, REPEAT, draw
from assets.mixture.manifest import build_manifest
from assets.mixture.plan import GENERATED, REFUSAL, Constraint, normalise, plan, prior
from assets.mixture.select import SELECTED_BY, Embed, SelectionConfig, check_scores, select_pool
from assets.mixture.split import (
    HASH,
    IS_VAL,
    MIN_ROWS_FOR_VALIDATION,
    ORDER,
    assign_split,
    half_up,
    split_hash,
    validation_coverage,
    validation_draw,
)

__all__ = ["MixtureConfig", "MixtureResult", "build_mixture", "split_hash", "GENERATED"]

TokenCounter = Callable[[Sequence[dict]], tuple[int, int]]  # messages -> (tokens, trainable tokens)
CELL_KEYS = ("source", "task", "language", REFUSAL, "multi_turn", "system_prompt")
TOKENS, TRAINABLE = "mix_tokens", "mix_trainable_tokens"
_INTERNAL = ("language", "multi_turn", "system_prompt", REFUSAL)


def _shares(value: Mapping[str, float] | None, what: str, total_at_most_one: bool = True) -> dict[str, float] | None:
    if value is None:
        return None
    shares = dict(value)
    if any(not (isinstance(v, int | float) and 0 <= v <= 1) for v in shares.values()):
        raise ValueError(f"{what} must map names to shares of the training mix in [0, 1], got {value!r}")
    if total_at_most_one and math.fsum(shares.values()) > 1 + 1e-9:
        raise ValueError(f"{what} sum to {math.fsum(shares.values())} > 1: each is a share of the same training mix")
    return shares


@dataclass(frozen=True)
class MixtureConfig:
    """How to build the mixture (the module docstring states the semantics).

    ``unit``: what shares and sizes count, "rows" or "tokens". ``source_shares``: share of the training mix per
    source (``"generated"`` = the generated pool); unlisted sources split the rest in proportion to their size.
    ``weights``: target share per task within the generated pool (normalised; unlisted/0 = excluded); None =
    temperature-scaled natural distribution, ``temperature`` > 0 (1 = natural, large = uniform). ``category_caps``
    / ``category_floors``: at most / at least this share of the mix per task (all sources). ``language_targets``:
    share per instruction language (unlisted languages split the rest). ``refusal_share``: share of rows flagged
    ``refusal``. ``multi_turn_floor`` / ``system_prompt_floor``: at least this share of multi-turn / system-prompt
    conversations (when any exist). ``max_rows`` / ``max_tokens``: output size (train + validation) in the unit.
    ``select``: keep the highest-IFD rows of each (source, task) of the train pool (:class:`SelectionConfig`).
    """

    unit: Literal["rows", "tokens"] = "rows"
    source_shares: Mapping[str, float] | None = None
    weights: Mapping[str, float] | None = None
    temperature: float = 1.0
    category_caps: Mapping[str, float] = field(default_factory=dict)
    category_floors: Mapping[str, float] = field(default_factory=dict)
    language_targets: Mapping[str, float] | None = None
    refusal_share: float | None = None
    multi_turn_floor: float = 0.0
    system_prompt_floor: float = 0.0
    max_rows: int | None = None
    max_tokens: int | None = None
    validation_fraction: float = 0.1
    min_rows_for_validation: int = MIN_ROWS_FOR_VALIDATION
    seed: int = 0
    allow_upsampling: bool = False
    select: SelectionConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.select, Mapping):
            object.__setattr__(self, "select", SelectionConfig(**self.select))
        if self.unit not in ("rows", "tokens"):
            raise ValueError(f"unit must be 'rows' or 'tokens', got {self.unit!r}")
        if self.weights is not None:
            weights = dict(self.weights)
            bad = {k: v for k, v in weights.items() if not (isinstance(v, int | float) and v >= 0)}
            if bad or not weights or sum(weights.values()) <= 0:
                raise ValueError(f"weights must map task -> non-negative number with a positive total, got "
                                 f"{self.weights!r}")
            object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "source_shares", _shares(self.source_shares, "source_shares"))
        object.__setattr__(self, "language_targets", _shares(self.language_targets, "language_targets"))
        object.__setattr__(self, "category_caps", _shares(self.category_caps, "category_caps", False))
        object.__setattr__(self, "category_floors", _shares(self.category_floors, "category_floors"))
        self._check_numbers()

    def _check_numbers(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")
        for name in ("refusal_share", "multi_turn_floor", "system_prompt_floor"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be a share of the training mix in [0, 1], got {value}")
        for name in ("max_rows", "max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {getattr(self, name)}")
        if self.max_tokens is not None and self.unit != "tokens":
            raise ValueError("max_tokens needs unit='tokens' (with unit='rows', set max_rows)")
        if self.max_rows is not None and self.unit != "rows":
            raise ValueError("max_rows needs unit='rows' (with unit='tokens', set max_tokens)")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not (isinstance(self.min_rows_for_validation, int) and self.min_rows_for_validation >= 0):
            raise ValueError(f"min_rows_for_validation must be an integer >= 0 (0: rounding alone decides), got "
                             f"{self.min_rows_for_validation!r}")

    def constraints(self, source_shares: Mapping[str, float] | None = None,
                    language_targets: Mapping[str, float] | None = None) -> list[Constraint]:
        """Every constraint of this config (the plan orders them by priority); ``source_shares`` and
        ``language_targets`` replace the configured ones (see :func:`_complete`)."""
        source_shares = self.source_shares if source_shares is None else source_shares
        language_targets = self.language_targets if language_targets is None else language_targets
        found = [Constraint("category_cap", "task", t, v) for t, v in sorted(self.category_caps.items())]
        found += [Constraint("category_floor", "task", t, v) for t, v in sorted(self.category_floors.items())]
        if self.multi_turn_floor > 0:
            found.append(Constraint("multi_turn_floor", "multi_turn", True, self.multi_turn_floor))
        if self.system_prompt_floor > 0:
            found.append(Constraint("system_prompt_floor", "system_prompt", True, self.system_prompt_floor))
        found += [Constraint("source_share", "source", s, v) for s, v in sorted((source_shares or {}).items())]
        if self.refusal_share is not None:
            found.append(Constraint("refusal_share", REFUSAL, True, self.refusal_share))
        found += [Constraint("language_target", "language", k, v)
                  for k, v in sorted((language_targets or {}).items())]
        return found

    def to_json(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else asdict(v) if is_dataclass(v) else v)
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class MixtureResult:
    """``mixture``: the selected rows (see the module docstring); ``manifest``: JSON-serialisable, see
    :func:`assets.mixture.manifest.build_manifest`."""

    mixture: pl.DataFrame
    manifest: dict[str, Any]

    @property
    def stats(self) -> dict[str, Any]:  # the name earlier callers used
        return self.manifest


def build_mixture(df: pl.DataFrame, cfg: MixtureConfig | None = None, count_tokens: TokenCounter | None = None,
                  embed: Embed | None = None) -> MixtureResult:
    """Label, split, plan and draw ``df`` into the SFT mixture (see the module docstring); ``embed``: the
    embedding function of ``select``'s diversity floor."""
    cfg = cfg or MixtureConfig()
    _check_input(df, cfg, count_tokens)
    out_columns = [*df.columns, *[c for c in ("task", "source") if c not in df.columns], "split", TOKENS, TRAINABLE,
                   REPEAT, SELECTED_BY]
    labelled = _label(df, cfg, count_tokens).with_columns(pl.lit("all").alias(SELECTED_BY))
    included = _included(labelled, cfg)
    pool = assign_split(included, cfg.validation_fraction, cfg.min_rows_for_validation)
    train_pool, val_pool = pool.filter(~pl.col(IS_VAL)), pool.filter(pl.col(IS_VAL))
    selection = None
    if cfg.select is not None:
        train_pool, selection = select_pool(train_pool, cfg.select, embed)
    cells, train_pool = _cells(train_pool)
    amount = cells[AMOUNT].to_numpy().astype(np.float64)
    columns = {k: cells[k].to_numpy() for k in CELL_KEYS}
    sources, languages = (_complete(cfg.source_shares, cells, "source"),
                          _complete(cfg.language_targets, cells, "language"))
    q0 = prior(columns, amount, _category_prior(cells, cfg))
    q, constraint_report = plan(q0, columns, amount, cfg.constraints(sources, languages))
    n_train, n_val, requested = _sizes(q, amount, cfg)
    drawn = draw(train_pool, q * n_train, cells["source"].to_list(), cfg.allow_upsampling)
    train = drawn.rows
    if n_val is None:
        every_row_once = train.height == train_pool.height and not cfg.allow_upsampling
        n_val = val_pool.height if every_row_once else _validation_rows(train.height, cfg.validation_fraction)
    validation = validation_draw(val_pool, n_val).with_columns(pl.lit(0, pl.Int64).alias(REPEAT))
    mixture = (pl.concat([train.with_columns(pl.lit("train").alias("split")),
                          validation.with_columns(pl.lit("validation").alias("split"))], how="diagonal_relaxed")
               .sort(["split", "conversation_id", REPEAT, ORDER]).select(out_columns))
    manifest = build_manifest(cells.with_columns(pl.Series("planned", q)), train, validation, pool, constraint_report,
                              drawn.short, cfg, n_train, tokens_counted=count_tokens is not None,
                              input_rows=df.height, source_shares=sources, requested=requested)
    manifest["selection"] = selection
    manifest["validation_strata"] = validation_coverage(pool, validation, cfg.validation_fraction,
                                                        cfg.min_rows_for_validation)
    return MixtureResult(mixture=mixture, manifest=manifest)


def _check_input(df: pl.DataFrame, cfg: MixtureConfig, count_tokens: TokenCounter | None) -> None:
    if "conversation_id" not in df.columns:
        raise ValueError(f"build_mixture: missing column 'conversation_id'; columns are {df.columns}")
    if df["conversation_id"].null_count():
        raise ValueError("build_mixture: conversation_id has null values; every row needs an id to be split")
    for column in ("split", HASH, ORDER, IS_VAL, CELL, AMOUNT, REPEAT, TOKENS, TRAINABLE, SELECTED_BY, *_INTERNAL):
        if column in df.columns:
            raise ValueError(f"build_mixture: input already has a column named '{column}'")
    if cfg.select is not None:
        check_scores(df)
    if cfg.unit == "tokens" and count_tokens is None:
        raise ValueError("build_mixture: unit='tokens' needs count_tokens (the student's tokenizer and chat template:"
                         " materialize base_model first)")


def _label(df: pl.DataFrame, cfg: MixtureConfig, count_tokens: TokenCounter | None) -> pl.DataFrame:
    """``df`` with task, source, the cell labels, token counts, hash and input order."""
    labelled = classify_task(df)
    first_role = pl.col("messages").list.first().struct.field("role")
    users = pl.col("messages").list.eval(pl.element().struct.field("role") == "user").list.sum()
    labelled = labelled.with_columns(
        (pl.col("source").cast(pl.Utf8).fill_null(GENERATED) if "source" in df.columns
         else pl.lit(GENERATED)).alias("source"),
        (pl.col("instruction_language").cast(pl.Utf8).fill_null("unknown") if "instruction_language" in df.columns
         else pl.lit("unknown")).alias("language"),
        (pl.col("refusal").cast(pl.Boolean).fill_null(False) if "refusal" in df.columns
         else pl.lit(False)).alias(REFUSAL),
        (users > 1).fill_null(False).alias("multi_turn"),
        (first_role == "system").fill_null(False).alias("system_prompt"),
        split_hash(df["conversation_id"], cfg.seed).alias(HASH),
        pl.int_range(pl.len()).alias(ORDER),
    )
    if count_tokens is not None:
        tokens, trainable = _token_counts(df["messages"], count_tokens)
    else:
        tokens, trainable = pl.lit(None, pl.Int64).alias(TOKENS), pl.lit(None, pl.Int64).alias(TRAINABLE)
    amount = pl.lit(1, pl.Int64) if cfg.unit == "rows" else pl.col(TOKENS)
    return labelled.with_columns(tokens, trainable).with_columns(amount.alias(AMOUNT))


def _token_counts(messages: pl.Series, count_tokens: TokenCounter) -> tuple[pl.Series, pl.Series]:
    """Every row's tokens and trainable tokens: by the counter's ``table`` when it has one (a cache of earlier
    counts, :class:`~assets.mixture.tokens.CachedTokenCounts`), else by its ``many`` (all rows in batches,
    :class:`~assets.mixture.tokens.StudentTokenCounter`), else row by row."""
    if hasattr(count_tokens, "table"):
        counts = count_tokens.table(messages)
        return counts["tokens"].cast(pl.Int64).alias(TOKENS), counts["trainable"].cast(pl.Int64).alias(TRAINABLE)
    rows = messages.to_list()
    counts = count_tokens.many(rows) if hasattr(count_tokens, "many") else [count_tokens(row) for row in rows]
    return (pl.Series(TOKENS, [c[0] for c in counts], dtype=pl.Int64),
            pl.Series(TRAINABLE, [c[1] for c in counts], dtype=pl.Int64))


def _included(labelled: pl.DataFrame, cfg: MixtureConfig) -> pl.DataFrame:
    """Rows the mixture draws from: with ``weights``, generated rows of a task without positive weight are out."""
    if cfg.weights is None:
        return labelled
    keep = [t for t, w in cfg.weights.items() if w > 0]
    return labelled.filter((pl.col("source") != GENERATED) | pl.col("task").is_in(keep))


def _cells(train_pool: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One row per cell (sorted by its keys, so sources are contiguous) with its amount and rows; the pool with
    its cell id."""
    cells = (train_pool.group_by(list(CELL_KEYS)).agg(pl.col(AMOUNT).sum(), pl.len().alias("rows"))
             .sort(list(CELL_KEYS)).with_row_index(CELL))
    pool = train_pool.join(cells.select(CELL, *CELL_KEYS), on=list(CELL_KEYS), how="left")
    return cells.with_columns(pl.col(CELL).cast(pl.Int64)), pool.with_columns(pl.col(CELL).cast(pl.Int64))


def _complete(shares: Mapping[str, float] | None, cells: pl.DataFrame, column: str) -> dict[str, float]:
    """``shares`` as the plan uses them: when they name every ``column`` value that has rows, yet sum to less than
    1, nothing else could take the rest, so they are scaled to sum to 1 (their ratios kept)."""
    shares = dict(shares or {})
    present = set(cells.filter(pl.col(AMOUNT) > 0)[column].to_list())
    total = math.fsum(v for k, v in shares.items() if k in present)
    if shares and present and present <= set(shares) and 0 < total < 1 - 1e-12:
        return {k: (v / total if k in present else v) for k, v in shares.items()}
    return shares


def _category_prior(cells: pl.DataFrame, cfg: MixtureConfig) -> dict[str, float]:
    """The generated pool's category distribution: the task weights, or ``n_i ** (1 / T)`` of its amounts."""
    if cfg.weights is not None:
        return normalise({t: float(w) for t, w in cfg.weights.items() if w > 0})
    generated = cells.filter(pl.col("source") == GENERATED).group_by("task").agg(pl.col(AMOUNT).sum())
    return normalise({t: float(n) ** (1.0 / cfg.temperature) for t, n in generated.iter_rows() if n > 0})


def _sizes(q: np.ndarray, amount: np.ndarray, cfg: MixtureConfig) -> tuple[float, int | None, float | None]:
    """(train size in the unit, validation rows or None when it depends on the train draw, the requested train
    size when the rows could not fill it without repeats, else None)."""
    f = cfg.validation_fraction
    wanted = q > 0
    largest = float(np.min(amount[wanted] / q[wanted])) if wanted.any() else 0.0  # every share, no repeats
    if cfg.max_rows is not None:
        n_val = max(1, half_up(cfg.max_rows * f)) if f > 0 and cfg.max_rows >= 2 else 0
        requested = float(cfg.max_rows - n_val)
    elif cfg.max_tokens is not None:
        n_val, requested = None, cfg.max_tokens * (1 - f)
    else:
        return largest, None, None
    if cfg.allow_upsampling or requested <= largest + 1e-9:
        return requested, n_val, None
    return largest, None, requested  # shrunk so that every share holds; validation follows the train size


def _validation_rows(train_rows: int, f: float) -> int:
    return max(1, half_up(train_rows * f / (1 - f))) if f > 0 and train_rows > 0 else 0
