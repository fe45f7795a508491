"""Drawing the training rows of each cell to its planned amount (no Dagster here).

Within a cell, rows are taken in ascending hash ``h`` (a seeded shuffle without replacement). Row ``j`` is taken when
the amount before it plus half of its own is within the goal (rows: round half up; tokens: the nearest row
boundary). The goal is the cell's planned amount plus what the previous cell of the same source missed or overshot
(a carry), so a source's total is within half a row of its plan whatever the number of its cells. A cell whose goal
exceeds its rows takes them all (a shortage, reported) or, with upsampling, repeats them cyclically in the same
order (every repeat counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from assets.mixture.split import HASH, ORDER

CELL = "__mix_cell"
AMOUNT = "__mix_amount"
REPEAT = "mix_repeat"


@dataclass(frozen=True)
class Drawn:
    rows: pl.DataFrame  # the drawn train rows (repeats included), with REPEAT
    short: dict[int, float]  # cell -> planned amount it could not get (no upsampling)


def _take(w: np.ndarray, goal: float, upsample: bool) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``w``, repeat index) of the rows that reach ``goal``."""
    if goal <= 0 or w.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    total = float(w.sum())
    cycles = int(np.ceil(goal / total)) + 1 if upsample and total > 0 and goal > total else 1
    ww = np.tile(w, cycles)
    cum = np.cumsum(ww)
    k = int(np.searchsorted(cum - ww / 2.0, goal + 1e-9, side="right"))
    taken = np.arange(k, dtype=np.int64)
    return taken % w.size, taken // w.size


def draw(train_pool: pl.DataFrame, targets: np.ndarray, cell_source: list[str], upsample: bool) -> Drawn:
    """Per cell (``CELL`` column, 0..n-1, sources contiguous), rows whose ``AMOUNT`` reaches ``targets``."""
    ranked = train_pool.sort([CELL, HASH, ORDER])
    cells = ranked[CELL].to_numpy()
    amounts = ranked[AMOUNT].to_numpy().astype(np.float64)
    bounds = np.searchsorted(cells, np.arange(len(targets) + 1))
    positions, repeats, short = [], [], {}
    carry, previous = 0.0, None
    for c in range(len(targets)):
        if cell_source[c] != previous:
            carry, previous = 0.0, cell_source[c]
        w = amounts[bounds[c]:bounds[c + 1]]
        goal = float(targets[c]) + carry
        pos, rep = _take(w, goal, upsample)
        taken = float(w[pos].sum())
        if not upsample and goal - taken > (w.max(initial=0.0) / 2.0) and pos.size == w.size:
            short[c] = goal - taken
        carry = goal - taken
        positions.append(pos + bounds[c])
        repeats.append(rep)
    index = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
    repeat = np.concatenate(repeats) if repeats else np.zeros(0, dtype=np.int64)
    rows = ranked[index].with_columns(pl.Series(REPEAT, repeat, dtype=pl.Int64))
    return Drawn(rows=rows, short=short)
