"""The mixture manifest: target vs realized share per source × category × language, in rows and tokens (trainable
tokens included), every constraint and whether it bound, every repeat and shortage (no Dagster here).

Shares are fractions of the training split (validation rows are counted apart): ``planned_share`` is the plan's
(in the mixture's unit), ``rows_share``, ``tokens_share`` and ``trainable_share`` are what was drawn.
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl

from assets.mixture.plan import GENERATED, REFUSAL

GROUP = ("source", "task", "language")
_TOKENS, _TRAINABLE, _REPEAT, _AMOUNT = "mix_tokens", "mix_trainable_tokens", "mix_repeat", "__mix_amount"


def _share(part: float, total: float) -> float:
    return part / total if total else 0.0


def _groups(cells: pl.DataFrame, train: pl.DataFrame, validation: pl.DataFrame, pool: pl.DataFrame,
            n_train: float) -> list[dict[str, Any]]:
    """One entry per (source, task, language): available, planned and realized amounts and shares."""
    planned = cells.group_by(GROUP).agg(pl.col("planned").sum())
    available = pool.group_by(GROUP).agg(pl.len().alias("available_rows"))
    drawn = train.group_by(GROUP).agg(
        pl.len().alias("rows"), pl.col(_TOKENS).sum().alias("tokens"), pl.col(_TRAINABLE).sum().alias("trainable"),
        (pl.col(_REPEAT) > 0).sum().alias("repeats"))
    held = validation.group_by(GROUP).agg(pl.len().alias("validation_rows"))
    table = (available.join(planned, on=GROUP, how="full", coalesce=True)
             .join(drawn, on=GROUP, how="full", coalesce=True).join(held, on=GROUP, how="full", coalesce=True)
             .fill_null(0).sort(GROUP))
    totals = {k: float(train[c].sum()) if train.height else 0.0
              for k, c in (("rows", None), ("tokens", _TOKENS), ("trainable", _TRAINABLE)) if c}
    totals["rows"] = float(train.height)
    return [{"source": s, "task": t, "language": lang, "available_rows": int(a),
             "planned_share": float(p), "target_amount": float(p) * n_train,
             "rows": int(r), "tokens": int(tok), "trainable_tokens": int(tr), "repeats": int(rep),
             "validation_rows": int(v), "rows_share": _share(r, totals["rows"]),
             "tokens_share": _share(tok, totals["tokens"]), "trainable_share": _share(tr, totals["trainable"])}
            for s, t, lang, a, p, r, tok, tr, rep, v in table.select(
                *GROUP, "available_rows", "planned", "rows", "tokens", "trainable", "repeats",
                "validation_rows").iter_rows()]


def _by(groups: list[dict], key: str, unit: str) -> dict[str, dict[str, Any]]:
    """Groups summed by ``key`` (source or task)."""
    out: dict[str, dict[str, Any]] = {}
    for g in groups:
        entry = out.setdefault(g[key], {"available_rows": 0, "planned_share": 0.0, "target_amount": 0.0, "rows": 0,
                                        "tokens": 0, "trainable_tokens": 0, "repeats": 0, "validation_rows": 0})
        for name in entry:
            entry[name] += g[name]
    rows = sum(e["rows"] for e in out.values())
    tokens = sum(e["tokens"] for e in out.values())
    for entry in out.values():
        entry["rows_share"] = _share(entry["rows"], rows)
        entry["tokens_share"] = _share(entry["tokens"], tokens)
        entry["realized_share"] = entry["rows_share"] if unit == "rows" else entry["tokens_share"]
    return dict(sorted(out.items()))


def _realized(train: pl.DataFrame, column: str, value: Any, unit: str) -> float:
    if train.height == 0:
        return 0.0
    weight = pl.lit(1) if unit == "rows" else pl.col(_TOKENS)
    part = train.select((weight * (pl.col(column) == value).cast(pl.Int64)).sum()).item()
    return _share(float(part), float(train.select(weight.sum()).item() if unit != "rows" else train.height))


def _limiting(cells: pl.DataFrame, n_train: float) -> list[str]:
    """The cells whose rows set the shrunk size (their planned amount equals all they have)."""
    full = cells.filter((pl.col("planned") > 0) & ((pl.col("planned") * n_train - pl.col(_AMOUNT)).abs()
                                                   <= 1e-6 * pl.col(_AMOUNT)))
    return sorted({f"{s}/{t}" for s, t in full.select("source", "task").iter_rows()})


def _sources(by_source: dict, cells: pl.DataFrame, short: dict[int, float], configured: dict[str, float],
             unit: str, limiting: list[str], requested: float | None, n_train: float) -> dict[str, dict]:
    """Per source: target share (configured, or its natural share), and what was done when it could not be met."""
    short_by_source: dict[str, float] = {}
    for cell, amount in short.items():
        source = cells["source"][cell]
        short_by_source[source] = short_by_source.get(source, 0.0) + amount
    out = {}
    for name in sorted(set(by_source) | set(configured)):
        entry = dict(by_source.get(name, {"rows": 0, "tokens": 0, "realized_share": 0.0, "planned_share": 0.0,
                                          "repeats": 0, "available_rows": 0}))
        entry["target_share"] = configured.get(name)
        missing = short_by_source.get(name, 0.0)
        if entry["available_rows"] == 0 and name in configured:
            entry["instead"] = "no rows in the pool: its share went to the other sources in proportion"
        elif any(cell.startswith(f"{name}/") for cell in limiting):
            entry["instead"] = (f"too few rows for its share of the requested {requested:.0f} {unit}: the mix was "
                                f"shrunk to {n_train:.0f} so that every share holds (allow_upsampling would repeat "
                                "rows instead)")
        elif missing > 0:
            entry["instead"] = (f"short by {missing:.1f} {unit}: every row taken once (allow_upsampling would repeat "
                                "them); the mix is that much smaller")
        elif entry["repeats"]:
            entry["instead"] = f"upsampled: {entry['repeats']} repeated rows"
        out[name] = entry
    return out


def build_manifest(cells: pl.DataFrame, train: pl.DataFrame, validation: pl.DataFrame, pool: pl.DataFrame,
                   constraints: list[dict], short: dict[int, float], cfg, n_train: float, tokens_counted: bool,
                   input_rows: int, source_shares: dict[str, float], requested: float | None) -> dict[str, Any]:
    """The manifest (JSON-serialisable): totals, ``groups`` (source × task × language), ``sources``, ``tasks``,
    ``constraints`` (with the realized share of each), ``shortfall`` and the config. ``source_shares``: as the plan
    used them (the configured ones, scaled to 1 when they name every source). ``requested``: the train size asked
    for when the rows could not fill it (the mix was shrunk to ``n_train``), else None."""
    unit = cfg.unit
    train_pool = pool.filter(~pl.col("__is_val"))
    limiting = _limiting(cells, n_train) if requested is not None else []
    groups = _groups(cells, train, validation, train_pool, n_train)
    by_source, by_task = _by(groups, "source", unit), _by(groups, "task", unit)
    realized = []
    for entry in constraints:
        column, value = _constraint_column(entry["constraint"])
        realized.append({**entry, "realized": _realized(train, column, value, unit)})
    return {
        "unit": unit, "tokens_counted": tokens_counted, "input_rows": input_rows,
        "excluded_rows": input_rows - pool.height, "train_target": n_train, "train_rows": train.height,
        "requested_train_size": requested, "size_limited_by": limiting,
        "validation_rows": validation.height,
        "train_tokens": int(train[_TOKENS].sum() or 0) if tokens_counted else None,
        "train_trainable_tokens": int(train[_TRAINABLE].sum() or 0) if tokens_counted else None,
        "groups": groups, "tasks": by_task,
        "sources": _sources(by_source, cells, short, source_shares, unit, limiting, requested, n_train),
        "constraints": realized,
        "shortfall": {f"{cells['source'][c]}/{cells['task'][c]}": round(a, 3) for c, a in sorted(short.items())},
        "weights_without_rows": sorted(t for t, w in (cfg.weights or {}).items() if w > 0 and t not in set(
            cells.filter(pl.col("source") == GENERATED)["task"].to_list())),
        "order": "1 category caps/floors, multi-turn and system-prompt floors; 2 source shares; 3 refusal share; "
                 "4 language targets; 5 temperature (or task weights)",
        "config": cfg.to_json(),
    }


def _constraint_column(label: str) -> tuple[str, Any]:
    name, _, rest = label.partition("[")
    value = rest.rstrip("]")
    column = {"category_cap": "task", "category_floor": "task", "source_share": "source",
              "language_target": "language", "refusal_share": REFUSAL, "multi_turn_floor": "multi_turn",
              "system_prompt_floor": "system_prompt"}[name]
    return column, (value if rest else True)


def manifest_table(manifest: dict[str, Any], max_rows: int = 60) -> list[dict[str, Any]]:
    """The groups as table rows with rounded shares (for Markdown); token columns only when tokens were counted."""
    token_columns = ("tokens", "tokens_share", "trainable_tokens") if manifest["tokens_counted"] else ()
    rows = []
    for g in manifest["groups"][:max_rows]:
        row = {"source": g["source"], "task": g["task"], "language": g["language"],
               "target": round(g["planned_share"], 4), "rows": g["rows"], "rows_share": round(g["rows_share"], 4),
               "tokens": g["tokens"], "tokens_share": round(g["tokens_share"], 4),
               "trainable_tokens": g["trainable_tokens"], "repeats": g["repeats"], "validation": g["validation_rows"]}
        rows.append({k: v for k, v in row.items() if k not in ("tokens", "tokens_share", "trainable_tokens")
                     or k in token_columns})
    return rows


def manifest_png(manifest: dict[str, Any]) -> bytes:
    """Per source × task: target share vs realized share (in the mixture's unit), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    realized_key = "rows_share" if manifest["unit"] == "rows" else "tokens_share"
    bars: dict[str, list[float]] = {}
    for g in manifest["groups"]:
        entry = bars.setdefault(f"{g['source']} / {g['task']}", [0.0, 0.0])
        entry[0] += g["planned_share"]
        entry[1] += g[realized_key]
    names = list(bars)
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.35 * max(len(names), 1)))
    y = range(len(names))
    ax.barh([i - 0.2 for i in y], [bars[n][0] for n in names], height=0.4, label="target", color="#8c8c8c")
    ax.barh([i + 0.2 for i in y], [bars[n][1] for n in names], height=0.4, label="realized", color="#4c72b0")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"share of the training mix ({manifest['unit']})")
    ax.legend(fontsize=7, loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
