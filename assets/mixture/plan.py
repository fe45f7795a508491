"""The mixture plan: what share of the training mix each cell gets (no Dagster here).

A *cell* is one combination of (source, task, language, refusal, multi-turn, system prompt). The plan is a share
per cell (summing to 1), found in two steps:

1. **Prior** (the lowest-priority wish). Sources in proportion to their size (their configured shares are
   constraints, below: unlisted sources then split the rest in proportion to their size). Within the generated
   pool, categories get ``p_i ∝ n_i ** (1 / temperature)`` (or the normalised task ``weights``); within a user
   source, categories are in their natural proportion. Within a (source, category), cells are in proportion to their
   size.
2. **Constraints**, applied by iterative proportional fitting in the documented order, lowest priority first and the
   highest last in every round, so that when two conflict the higher one holds and the lower one is missed:

   1. category caps and floors, the multi-turn floor, the system-prompt floor (bounds: they move the plan only when
      violated);
   2. source shares;
   3. the refusal share;
   4. language targets;
   5. temperature / task weights (the prior itself).

   A constraint scales the cells in its set to its target and the others to the rest, keeping proportions on each
   side. One whose set has no rows cannot be met: it is skipped and reported ``unavailable``.

Every constraint is reported with the share its set would have without it (the plan re-fitted without it), the
planned share, whether it *bound* (it moved the plan by more than ``TOLERANCE``) and by how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GENERATED = "generated"  # the source name of rows without a `source` (the generated pool)
REFUSAL = "__refusal"  # the cell key of the refusal flag
TOLERANCE = 1e-6
_ROUNDS = 2000

# priority: 1 decides first (wins a conflict)
PRIORITY = {"category_cap": 1, "category_floor": 1, "multi_turn_floor": 1, "system_prompt_floor": 1,
            "source_share": 2, "refusal_share": 3, "language_target": 4}
KIND = {"category_cap": "max", "category_floor": "min", "multi_turn_floor": "min", "system_prompt_floor": "min",
        "source_share": "equal", "refusal_share": "equal", "language_target": "equal"}


@dataclass(frozen=True)
class Constraint:
    """``name`` in :data:`PRIORITY`; the cells whose ``column`` equals ``value`` get ``target`` of the mix."""

    name: str
    column: str
    value: object
    target: float

    @property
    def priority(self) -> int:
        return PRIORITY[self.name]

    @property
    def kind(self) -> str:
        return KIND[self.name]

    @property
    def label(self) -> str:
        return f"{self.name}[{self.value}]" if self.column in ("source", "task", "language") else self.name


def normalise(raw: dict[str, float]) -> dict[str, float]:
    """``raw`` scaled to sum 1 (an exact, order-independent sum); empty when the total is 0."""
    total = math.fsum(raw[k] for k in sorted(raw))
    return {k: raw[k] / total for k in sorted(raw)} if total > 0 else {}


def prior(cells: dict[str, np.ndarray], amount: np.ndarray, category_prior: dict[str, float]) -> np.ndarray:
    """The prior share of every cell (see the module docstring, step 1): sources in proportion to their size (their
    shares are constraints, so the report can say what each one moved); ``category_prior`` is the generated pool's
    category distribution (temperature-scaled or the task weights)."""
    sources, tasks = cells["source"], cells["task"]
    total = float(amount.sum())
    q = np.zeros(len(amount))
    for s in sorted(set(sources.tolist())):
        in_source = sources == s
        task_names = sorted(set(tasks[in_source].tolist()))
        task_size = {t: float(amount[in_source & (tasks == t)].sum()) for t in task_names}
        wish = {t: category_prior.get(t, 0.0) for t in task_names} if s == GENERATED else task_size
        wish = normalise({t: w for t, w in wish.items() if task_size[t] > 0})
        mass = float(amount[in_source].sum()) / total if total else 0.0
        for t, share in wish.items():
            cell = in_source & (tasks == t)
            q[cell] = mass * share * amount[cell] / task_size[t]
    norm = q.sum()
    return q / norm if norm > 0 else q


def _apply(q: np.ndarray, mask: np.ndarray, c: Constraint) -> np.ndarray:
    inside = float(q[mask].sum())
    if (c.kind == "max" and inside <= c.target) or (c.kind == "min" and inside >= c.target):
        return q
    if inside <= 0.0 or inside >= 1.0:  # nothing to scale on one side
        return q
    out = q.copy()
    out[mask] *= c.target / inside
    out[~mask] *= (1.0 - c.target) / (1.0 - inside)
    return out


def fit(q0: np.ndarray, masks: list[np.ndarray], constraints: list[Constraint]) -> np.ndarray:
    """Iterative proportional fitting of ``q0`` to ``constraints`` (lowest priority first in each round)."""
    order = sorted(range(len(constraints)), key=lambda i: (-constraints[i].priority, i))
    q = q0.copy()
    for _ in range(_ROUNDS):
        before = q
        for i in order:
            q = _apply(q, masks[i], constraints[i])
        if np.abs(q - before).max(initial=0.0) < 1e-15:
            break
    return q


def plan(q0: np.ndarray, cells: dict[str, np.ndarray], amount: np.ndarray,
         constraints: list[Constraint]) -> tuple[np.ndarray, list[dict]]:
    """The fitted plan and one report entry per constraint (see the module docstring)."""
    masks = [cells[c.column] == c.value for c in constraints]
    usable = [i for i, m in enumerate(masks) if amount[m].sum() > 0]
    q = fit(q0, [masks[i] for i in usable], [constraints[i] for i in usable])
    report = []
    for i, c in enumerate(constraints):
        entry = {"constraint": c.label, "kind": c.kind, "priority": c.priority, "target": c.target}
        if i not in usable:
            report.append({**entry, "status": "unavailable", "without": None, "planned": 0.0, "bound": False,
                           "moved_by": 0.0})
            continue
        others = [j for j in usable if j != i]
        without = float(fit(q0, [masks[j] for j in others], [constraints[j] for j in others])[masks[i]].sum())
        planned = float(q[masks[i]].sum())
        bound = abs(planned - without) > TOLERANCE
        missed = (c.kind == "equal" and abs(planned - c.target) > TOLERANCE) or \
                 (c.kind == "max" and planned > c.target + TOLERANCE) or \
                 (c.kind == "min" and planned < c.target - TOLERANCE)
        status = "missed (a higher-priority constraint decided)" if missed else "bound" if bound else "met"
        report.append({**entry, "status": status, "without": without, "planned": planned, "bound": bound,
                       "moved_by": planned - without})
    return q, report
