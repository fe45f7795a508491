"""What the IFD asset reports (no Dagster here): the distribution (quantiles, a histogram as PNG), rows at IFD >= 1
(the ones selection drops), and per category."""

from __future__ import annotations

import io
from typing import Any

import polars as pl

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def summary(scores: pl.DataFrame, tasks: pl.DataFrame | None = None) -> dict[str, Any]:
    """Counts by status, rows at IFD >= 1, quantiles of the scored rows and, with ``tasks`` (conversation_id, task),
    per task: rows, scored, at IFD >= 1, median IFD."""
    scored = scores.filter(pl.col("ifd_status") == "scored")
    out: dict[str, Any] = {
        "rows": scores.height,
        "by_status": dict(sorted(scores.group_by("ifd_status").len().iter_rows())),
        "scored": scored.height,
        "ifd_at_least_1": int((scored["ifd"] >= 1.0).sum()) if scored.height else 0,
        "quantiles": {f"q{int(q * 100):02d}": round(float(scored["ifd"].quantile(q, "nearest")), 6)
                      for q in QUANTILES} if scored.height else {},
        "mean_loss_conditioned": round(float(scored["ifd_loss_conditioned"].mean()), 6) if scored.height else None,
        "mean_loss_unconditioned": round(float(scored["ifd_loss_unconditioned"].mean()), 6) if scored.height else None,
    }
    if tasks is not None:
        joined = scores.join(tasks, on="conversation_id", how="left").with_columns(pl.col("task").fill_null("?"))
        per_task = joined.group_by("task").agg(
            pl.len().alias("rows"), (pl.col("ifd_status") == "scored").sum().alias("scored"),
            (pl.col("ifd") >= 1.0).sum().alias("ifd_at_least_1"), pl.col("ifd").median().alias("median_ifd"))
        out["per_task"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                           for row in per_task.sort("task").iter_rows(named=True)]
    return out


def histogram_png(scores: pl.DataFrame, bins: int = 30) -> bytes | None:
    """The IFD histogram of the scored rows (a line at 1, where selection drops rows), or None without any."""
    values = scores.filter(pl.col("ifd_status") == "scored")["ifd"].to_list()
    if not values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.hist(values, bins=bins, color="#4c72b0")
    ax.axvline(1.0, color="#c44e52", linestyle="--", linewidth=1, label="IFD = 1 (dropped at or above)")
    ax.set_xlabel("IFD = PPL(answer | instruction) / PPL(answer)")
    ax.set_ylabel("rows")
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
