"""The scale benchmark's report (benchmarks/scale.py --report): one table per stage and size, the growth exponents,
the incremental ratios, a log-log chart, and a last line of ``key=value`` figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.scale_data import SHARD_ROWS

STAGE_ORDER = ("dedup", "decontamination", "filtering", "tagging", "mixture", "tokenization")


def latest(results: Path) -> dict[tuple, dict]:
    """The latest successful record per (rows, stage, mode)."""
    records = {}
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            if r.get("success"):
                records[(r["rows"], r["stage"], r["mode"])] = r
    return records


def exponent(small: dict | None, large: dict | None, key: str = "seconds") -> float | None:
    """Slope of log(seconds) (``key``: wall ``seconds`` or ``cpu_s``) over log(rows) between two full runs."""
    if not small or not large or not small.get(key) or not large.get(key):
        return None
    return math.log(large[key] / small[key]) / math.log(large["rows"] / small["rows"])


def cpu_reference(records: dict, rows: int, stage: str) -> dict | None:
    """The record to take ``stage``'s CPU seconds at ``rows`` from: its full run, or for one shard's size any cold
    run of one shard alone (`shard_alone`: a table of SHARD_ROWS rows) when the full run has none."""
    full = records.get((rows, stage, "full"))
    if full and full.get("cpu_s"):
        return full
    if rows == SHARD_ROWS:
        alone = [r for (_, st, mode), r in records.items() if st == stage and mode == "shard_alone" and r.get("cpu_s")]
        if alone:
            return {**alone[-1], "rows": rows}
    return None


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _load(record: dict) -> str:
    return "/".join(f"{x:.1f}" for x in record["load_before"][:1] + record["load_after"][:1])


def full_table(records: dict, sizes: list[int]) -> list[str]:
    lines = ["| stage | rows | seconds | CPU s | rows/s | peak RSS GB | MB written | load (before/after) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for stage in STAGE_ORDER:
        for rows in sizes:
            r = records.get((rows, stage, "full"))
            if r:
                lines.append(f"| {stage} | {rows:,} | {r['seconds']:.1f} | {_fmt(r.get('cpu_s'), '.1f')} | "
                             f"{rows / r['seconds']:,.0f} | "
                             f"{r['peak_rss_gb']:.2f} | {r['bytes_written'] / 1e6:,.1f} | {_load(r)} |")
    return lines


def growth_table(records: dict, sizes: list[int]) -> tuple[list[str], dict]:
    pairs = list(zip(sizes, sizes[1:], strict=False))
    header = " | ".join(f"exponent {a // 1000}k->{b // 1000}k | (CPU s) | rows/s ratio {b // 1000}k/{a // 1000}k"
                        for a, b in pairs)
    lines = [f"| stage | {header} |", "|---|" + "---:|" * (3 * len(pairs))]
    exponents = {}
    for stage in STAGE_ORDER:
        cells = []
        for a, b in pairs:
            small, large = records.get((a, stage, "full")), records.get((b, stage, "full"))
            e = exponent(small, large)
            ratio = (b / large["seconds"]) / (a / small["seconds"]) if e is not None else None
            cpu = exponent(cpu_reference(records, a, stage), cpu_reference(records, b, stage), "cpu_s")
            exponents[(stage, a, b)] = cpu if cpu is not None else e  # CPU seconds when measured: load-proof
            cells += [_fmt(e), _fmt(cpu), _fmt(ratio)]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines, exponents


def incremental_table(records: dict, sizes: list[int]) -> tuple[list[str], dict]:
    lines = ["| stage | table rows | new shard into the table: s (CPU s) | the shard alone: s (CPU s) | ratio, wall "
             "| ratio, CPU | load |", "|---|---:|---:|---:|---:|---:|---|"]
    ratios = {}
    for rows in sizes:
        for stage in STAGE_ORDER:
            added, alone = records.get((rows, stage, "incremental")), records.get((rows, stage, "shard_alone"))
            if added and alone:
                wall = added["seconds"] / alone["seconds"]
                cpu = added["cpu_s"] / alone["cpu_s"] if added.get("cpu_s") and alone.get("cpu_s") else None
                ratios[(rows, stage)] = cpu if cpu is not None else wall
                lines.append(f"| {stage} | {rows:,} | {added['seconds']:.1f} ({_fmt(added.get('cpu_s'), '.1f')}) | "
                             f"{alone['seconds']:.1f} ({_fmt(alone.get('cpu_s'), '.1f')}) | {wall:.2f} | {_fmt(cpu)} | "
                             f"{_load(added)} |")
    return lines, ratios


def chart(records: dict, sizes: list[int], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (the table has the data)"
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    firsts = []
    for stage in STAGE_ORDER:
        points = [(rows, ref["cpu_s"]) for rows in sizes if (ref := cpu_reference(records, rows, stage))]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=stage)
            firsts.append(points[0])
    if firsts:
        x0, y0 = min(firsts)
        ax.plot(sizes, [y0 * s / x0 for s in sizes], "k:", label="linear (slope 1)")
    ax.set(xscale="log", yscale="log", xlabel="rows", ylabel="CPU seconds of the step process (with checks)",
           title="Stage cost vs table size (benchmarks/scale.py)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"chart: {path}"


def summary(records: dict, sizes: list[int], exponents: dict, ratios: dict) -> str:
    complete = [s for s in sizes if all((s, st, "full") in records for st in STAGE_ORDER)]
    rows = max(complete, default=max(sizes, default=0))
    at = [records[k] for k in records if k[0] == rows and k[2] == "full"]
    known = {k: e for k, e in exponents.items() if e is not None}
    widest = max((b for _, _, b in known), default=None)
    worst = max((e for (_, _, b), e in known.items() if b == widest), default=None)
    inc_rows = max((r for r, _ in ratios), default=None)
    inc = max((v for (r, _), v in ratios.items() if r == inc_rows), default=None)
    return (f"rows={rows} total_s={sum(r['seconds'] for r in at):.1f} "
            f"peak_rss_gb={max((r['peak_rss_gb'] for r in at), default=0):.2f} worst_exponent={_fmt(worst)} "
            f"incremental_worst_ratio={_fmt(inc)}")


def report(results: Path, chart_path: Path) -> None:
    records = latest(results)
    sizes = sorted({k[0] for k in records if k[2] == "full"})
    growth, exponents = growth_table(records, sizes)
    incremental, ratios = incremental_table(records, sizes)
    print("\n".join(full_table(records, sizes)), end="\n\n")
    print("\n".join(growth), end="\n\n")
    print("\n".join(incremental), end="\n\n")
    print(chart(records, sizes, chart_path))
    print(summary(records, sizes, exponents, ratios))
