"""The data funnel across every stage, overall and per task category, as tables and PNG charts (no Dagster here).

A stage is what the storage holds of it: the rows it wrote (its ``data`` or ``shard-*`` tables), the rows it removed
(its ``rejected`` table, by ``reason``) and, for generation, what it attempted and dropped before writing (its
report's ``stats``). Per category, the rows that reached tagging carry their final ``task`` (the judge's or the
fallback tagger's); rows removed earlier are tagged by the fallback tagger (cheap, deterministic), so every
stage's removals can be split by category.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from assets.common.data.taxonomy import TASKS


@dataclass(frozen=True)
class Stage:
    """One stage of the funnel: rows in, rows out, rows removed by reason and by category."""

    name: str
    rows_in: int
    rows_out: int
    removed_by_reason: dict[str, int] = field(default_factory=dict)
    removed_by_category: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.removed_by_reason.items(), key=lambda x: -x[1]))
        return {"stage": self.name, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "removed": self.rows_in - self.rows_out,
                "kept_share": round(self.rows_out / self.rows_in, 4) if self.rows_in else None,
                "removed_by_reason": reasons or "-"}


def stage_table(stages: Sequence[Stage]) -> list[dict]:
    return [s.row() for s in stages]


def category_table(stages: Sequence[Stage], kept_by_category: dict[str, int]) -> list[dict]:
    """Per category: rows written by the first stage, removed by each later stage, and kept at the end. The first
    stage's count is rebuilt as kept + every later removal (its own drops happen before text exists)."""
    later = stages[1:]
    categories = set(kept_by_category).union(*(s.removed_by_category for s in later))
    order = {t: i for i, t in enumerate(TASKS)}
    rows = []
    for category in sorted(categories, key=lambda t: (order.get(t, len(order)), t)):
        removed = {s.name: s.removed_by_category.get(category, 0) for s in later}
        kept = kept_by_category.get(category, 0)
        first = stages[0].name if stages else "input"
        rows.append({"category": category, first: kept + sum(removed.values()),
                     **{f"-{name}": n for name, n in removed.items()}, "kept": kept})
    return rows


def funnel_png(stages: Sequence[Stage], title: str = "rows through the stages") -> bytes:
    """Horizontal bars: rows out of each stage (removed part hatched on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(stages), 1)))
    names = [s.name for s in stages][::-1]
    outs = [s.rows_out for s in stages][::-1]
    removed = [s.rows_in - s.rows_out for s in stages][::-1]
    ax.barh(names, outs, color="#4c72b0", label="rows out")
    ax.barh(names, removed, left=outs, color="#dd8452", hatch="//", label="removed")
    for y, (o, r) in enumerate(zip(outs, removed, strict=True)):
        ax.text(o + r, y, f" {o}/{o + r}", va="center", fontsize=8)
    ax.set_xlabel("rows")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def category_png(table: Sequence[dict]) -> bytes:
    """Stacked bars per category: kept, and removed by each stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pl.DataFrame(table) if table else pl.DataFrame({"category": []})
    parts = ["kept", *[c for c in frame.columns if c.startswith("-")]]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.35 * max(frame.height, 1)))
    left = [0] * frame.height
    for part in parts if frame.height else []:
        values = frame[part].to_list()
        ax.barh(frame["category"].to_list(), values, left=left, label=part.lstrip("-") if part != "kept" else "kept")
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("per category: kept, and removed by stage")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def distributions_png(distributions: dict[str, dict[str, dict]]) -> bytes:
    """One bar chart per label (rows per value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(distributions)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.2 * max(len(names), 1)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        values = distributions[name]
        ax.bar(list(values), [v["rows"] for v in values.values()], color="#55a868")
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def stage_from_tables(name: str, outputs: Sequence, rejected: pl.DataFrame | None, reports: Sequence[dict]) -> Stage:
    """A stage from what it stored: its output tables (paths), its ``rejected`` table (or None) and its reports
    (a generation report's ``stats`` give the rows attempted and dropped before any table was written)."""
    from assets.common.data.taxonomy import classify_task

    rows_out = sum(pl.scan_parquet(path).select(pl.len()).collect().item() for path in outputs)
    by_reason: dict[str, int] = {}
    by_category: dict[str, int] = {}
    if rejected is not None and rejected.height:
        by_reason = {str(r): int(n) for r, n in rejected.group_by("reason").len().iter_rows()}
        tagged = classify_task(rejected.select("messages", *(["task"] if "task" in rejected.columns else [])))
        by_category = {str(t): int(n) for t, n in tagged.group_by("task").len().iter_rows()}
    stats = [r["stats"] for r in reports if isinstance(r.get("stats"), dict) and "attempted" in r["stats"]]
    for s in stats:
        for reason, n in (s.get("dropped") or {}).items():
            by_reason[reason] = by_reason.get(reason, 0) + int(n)
    rows_in = sum(int(s["attempted"]) for s in stats) if stats else rows_out + sum(by_reason.values())
    return Stage(name, rows_in, rows_out, by_reason, by_category)
