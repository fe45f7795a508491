"""The planted pairs (``planted_pairs.yaml``): hand-written rephrasings, translations, same-topic controls and unrelated
instructions, each paired with one text of a bundled eval set (no Dagster here). They measure a contamination detector
on what string overlap cannot see: is a candidate a rephrasing of that eval item? Thresholds are chosen on the ``tune``
split; only ``holdout`` figures are reported (the split is fixed in the file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import yaml

from assets.eval_sets.core import load_bundled_eval_sets

PLANTED_PAIRS_PATH = Path(__file__).parent / "planted_pairs.yaml"
KINDS = ("paraphrase", "translated", "hard_negative", "random", "translated_hard_negative")
POSITIVE_KINDS = ("paraphrase", "translated")  # a detector should flag these, and only these
SPLITS = ("tune", "holdout")
_FIELDS = ("id", "benchmark", "item_id", "field", "kind", "lang", "split", "text")
PLANTED_SCHEMA: dict[str, pl.DataType] = {name: pl.Utf8 for name in _FIELDS} | {"eval_text": pl.Utf8}


def planted_records(path: Path = PLANTED_PAIRS_PATH) -> list[dict[str, str]]:
    """The records as written, checked: every field present and a string, kind and split known, ids unique."""
    records = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a YAML list of records, got {type(records).__name__}")
    seen: set[str] = set()
    for number, record in enumerate(records):
        name = record.get('id', '?') if isinstance(record, dict) else repr(record)
        where = f"{path}: record {number} ({name})"
        if not isinstance(record, dict) or set(record) != set(_FIELDS):
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where}: expected exactly the fields {list(_FIELDS)}, got {got}")
        if not all(isinstance(record[name], str) and record[name].strip() for name in _FIELDS):
            raise ValueError(f"{where}: every field must be a non-empty string (quote ids such as \"227\")")
        if record["kind"] not in KINDS or record["split"] not in SPLITS:
            raise ValueError(f"{where}: kind must be one of {KINDS} and split one of {SPLITS}")
        if record["id"] in seen:
            raise ValueError(f"{where}: id {record['id']!r} is used twice; ids must be unique")
        seen.add(record["id"])
    return records


def planted_pairs(path: Path = PLANTED_PAIRS_PATH, eval_sets: pl.DataFrame | None = None) -> pl.DataFrame:
    """The planted pairs with the eval text each names (``eval_text``), columns :data:`PLANTED_SCHEMA`, in file order.

    ``eval_sets`` defaults to the bundled eval sets of the named benchmarks; a record naming an eval text that is not
    there raises, naming the record (a changed benchmark release must not silently shrink the set)."""
    records = pl.DataFrame(planted_records(path), schema={name: pl.Utf8 for name in _FIELDS})
    if eval_sets is None:
        eval_sets = load_bundled_eval_sets(sorted(set(records["benchmark"])))
    keyed = eval_sets.select("benchmark", "item_id", "field", pl.col("text").alias("eval_text"))
    joined = records.join(keyed, on=["benchmark", "item_id", "field"], how="left", maintain_order="left")
    missing = joined.filter(pl.col("eval_text").is_null())
    if missing.height:
        first = missing.row(0, named=True)
        raise ValueError(
            f"{path}: record {first['id']!r} names eval text ({first['benchmark']!r}, {first['item_id']!r}, "
            f"{first['field']!r}), which the eval sets do not hold; fix the record or install the benchmark's release"
        )
    return joined.select(*PLANTED_SCHEMA)


def choose_threshold(scores: np.ndarray, kinds: np.ndarray, max_hard: float = 0.05, max_random: float = 0.01) -> float:
    """The lowest threshold (a pair is flagged when its score >= threshold, so the highest recall) at which at most
    ``max_hard`` of the hard negatives and ``max_random`` of the random pairs are flagged: with ``k = floor(rate *
    count)`` allowed, just above the (k+1)-th highest score of each kind. Call it on the ``tune`` split only."""
    limits = [-1.0]
    for kind, rate in (("hard_negative", max_hard), ("random", max_random)):
        negatives = np.sort(np.asarray(scores, dtype=np.float32)[np.asarray(kinds) == kind])[::-1]
        allowed = int(rate * negatives.size + 1e-9)
        if allowed < negatives.size:
            limits.append(float(np.nextafter(negatives[allowed], np.float32(2))))
    return max(limits)


def flag_rates(pairs: pl.DataFrame, flagged: str = "flagged") -> dict[str, float]:
    """Share of ``pairs`` whose boolean column ``flagged`` is set: per kind, for all positives (paraphrases and
    translations), and per benchmark for the paraphrases and for all positives."""
    out = {kind: float(pairs.filter(kind=kind)[flagged].mean() or 0.0) for kind in KINDS}
    positives = pairs.filter(pl.col("kind").is_in(POSITIVE_KINDS))
    out["positives"] = float(positives[flagged].mean() or 0.0)
    for prefix, part in (("paraphrase", pairs.filter(kind="paraphrase")), ("positives", positives)):
        for (benchmark,), group in part.sort("benchmark").group_by("benchmark", maintain_order=True):
            out[f"{prefix}_{benchmark}"] = float(group[flagged].mean() or 0.0)
    return out
