"""Small helpers for what assets report in Dagster metadata (no Dagster here)."""

from __future__ import annotations

import polars as pl


def markdown_table(df: pl.DataFrame | list[dict], max_rows: int = 50) -> str:
    """A Markdown table of ``df`` (first ``max_rows`` rows); cells are stringified and pipes escaped."""
    frame = df if isinstance(df, pl.DataFrame) else pl.DataFrame(df)
    if frame.width == 0:
        return "(empty)"

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")[:200]

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.head(max_rows).iter_rows()]
    if frame.height > max_rows:
        lines.append(f"\n({frame.height - max_rows} more rows)")
    return "\n".join(lines)
