"""Semantic contamination on the planted pairs: today's string detectors, then embedding models (run by hand).

    python benchmarks/embeddings.py

Baseline: the decontamination stage's own detectors (13-gram + MinHash, ``find_contamination`` with the default
``DecontamConfig``) run on every planted candidate as a one-message conversation, against all bundled eval sets (the
asset's input). A pair counts as flagged when the candidate matches its own eval item (any field); ``any`` counts
matches with any eval text. Control: the eval texts themselves as candidates (the harness must flag them all).

The last line is ``key=value`` pairs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.eval_sets.planted import KINDS, planted_pairs  # noqa: E402
from benchmarks.common import load_average  # noqa: E402


def baseline_flags(pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` with ``flagged`` (a match with its own eval item) and ``flagged_any`` from today's detectors."""
    from assets.decontamination.matching import find_contamination
    from assets.eval_sets.core import load_bundled_eval_sets

    table = pairs.select(
        pl.col("id").alias("conversation_id"),
        pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("text"))).alias("messages"),
    )
    matches = find_contamination(table, load_bundled_eval_sets())
    own = matches.join(
        pairs.select(pl.col("id").alias("conversation_id"), "benchmark", "item_id"),
        on=["conversation_id", "benchmark", "item_id"], how="semi",
    )
    return pairs.with_columns(
        pl.col("id").is_in(own["conversation_id"].implode()).alias("flagged"),
        pl.col("id").is_in(matches["conversation_id"].implode()).alias("flagged_any"),
    )


def rates(flagged: pl.DataFrame, column: str = "flagged") -> dict[str, float]:
    """Share of pairs flagged per kind (``paraphrase``, ``translated``, ...) and per benchmark for the positives."""
    out = {kind: flagged.filter(kind=kind)[column].mean() or 0.0 for kind in KINDS}
    positives = flagged.filter(pl.col("kind").is_in(["paraphrase", "translated"]))
    out["positives"] = positives[column].mean() or 0.0
    for (benchmark,), group in positives.group_by("benchmark", maintain_order=True):
        out[f"positives_{benchmark}"] = group[column].mean() or 0.0
    return out


def main() -> None:
    pairs = planted_pairs()
    print(f"planted pairs: {pairs.height} ({dict(pairs.group_by('kind').len().iter_rows())}); load {load_average()}")
    base = baseline_flags(pairs)
    items = pairs.unique(["benchmark", "item_id", "field"], maintain_order=True)
    control = baseline_flags(items.with_columns(pl.col("eval_text").alias("text")))["flagged"].mean()
    print(f"control: the {items.height} eval texts themselves as candidates, flagged by n-gram+MinHash: {control:.3f}")
    figures = {}
    for split in ("tune", "holdout"):
        part = base.filter(split=split)
        own, anywhere = rates(part), rates(part, "flagged_any")
        print(f"baseline n-gram+MinHash, {split}: " + ", ".join(f"{k} {v:.3f}" for k, v in own.items()))
        print("  (a match with any eval text) " + ", ".join(f"{k} {v:.3f}" for k, v in anywhere.items()))
        figures |= {f"baseline_{split}_{k}": round(v, 3) for k, v in own.items() if k in KINDS or k == "positives"}
    print(" ".join(f"{k}={v}" for k, v in figures.items()) + f" load={load_average().replace('/', ',')}")


if __name__ == "__main__":
    main()
