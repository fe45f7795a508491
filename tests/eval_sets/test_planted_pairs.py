"""Tests for assets/eval_sets/planted.py: the planted pairs resolve to bundled eval texts and keep their design."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from assets.eval_sets.planted import PLANTED_PAIRS_PATH, choose_threshold, planted_pairs, planted_records


@pytest.fixture(scope="module")
def pairs() -> pl.DataFrame:
    return planted_pairs()


def test_every_record_names_a_bundled_eval_text(pairs: pl.DataFrame) -> None:
    assert pairs.height == len(planted_records())
    assert pairs["eval_text"].null_count() == 0
    assert pairs.filter(pl.col("text") == pl.col("eval_text")).height == 0  # no candidate is a verbatim copy


def test_the_set_holds_what_issue_20_asks(pairs: pl.DataFrame) -> None:
    counts = dict(pairs.group_by("kind").len().iter_rows())
    assert counts["paraphrase"] + counts["translated"] >= 40 and counts["hard_negative"] >= 40
    assert counts["translated"] >= 8 and counts["random"] >= 100
    assert set(pairs.filter(kind="translated")["lang"]) == {"fr", "de", "es"}
    translated = pl.col("kind").is_in(["translated", "translated_hard_negative"])
    assert set(pairs.filter(~translated)["lang"]) == {"en"}
    # every hard negative has its translation (the cross-lingual same-topic control), same item and split
    controls = pairs.filter(kind="translated_hard_negative")
    assert set(controls["lang"]) == {"fr", "de", "es"}
    assert sorted(controls["id"].str.strip_prefix("translated_")) == sorted(pairs.filter(kind="hard_negative")["id"])
    keys = ["benchmark", "item_id", "split"]
    assert controls.select(keys).sort(keys).equals(pairs.filter(kind="hard_negative").select(keys).sort(keys))
    per_benchmark = pairs.filter(kind="paraphrase").group_by("benchmark").len()
    assert set(per_benchmark["benchmark"]) == {"ifeval", "alpaca_eval", "mt_bench", "humaneval"}
    assert per_benchmark["len"].min() >= 8


def test_the_split_is_half_and_half_within_each_benchmark_and_kind(pairs: pl.DataFrame) -> None:
    per_group = pairs.group_by("benchmark", "kind").agg(
        (pl.col("split") == "tune").sum().alias("tune"), (pl.col("split") == "holdout").sum().alias("holdout")
    )
    assert ((per_group["tune"] - per_group["holdout"]).abs() <= 1).all(), per_group


def test_a_record_naming_a_missing_eval_text_raises_with_its_id(tmp_path: Path) -> None:
    records = planted_records()[:3]
    records[1] = {**records[1], "item_id": "no-such-item"}
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(records), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"record '{records[1]['id']}' names eval text .*no-such-item"):
        planted_pairs(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"kind": "reworded"}, "kind must be one of"), ({"item_id": 227}, "non-empty string"),
     ({"extra": "x"}, "expected exactly the fields")],
)
def test_a_malformed_record_raises_naming_it(tmp_path: Path, change: dict, message: str) -> None:
    records = planted_records()[:2]
    records[1] = {**records[1], **change}
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(records), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"record 1 \({records[1]['id']}\).*{message}"):
        planted_records(path)


def test_ids_are_unique() -> None:
    ids = [record["id"] for record in yaml.safe_load(PLANTED_PAIRS_PATH.read_text(encoding="utf-8"))]
    assert len(ids) == len(set(ids))


def test_the_threshold_is_the_lowest_that_keeps_the_false_positive_limits() -> None:
    hard = [0.90, 0.80, 0.70] + [0.1] * 17  # 20 hard negatives: one (5%) may be flagged, so just above 0.80
    random = [0.85] + [0.2] * 99  # 100 random pairs: one (1%) may be flagged; 0.2 binds nothing
    kinds = np.array(["hard_negative"] * 20 + ["random"] * 100 + ["paraphrase"] * 2)
    scores = np.array(hard + random + [0.95, 0.5], dtype=np.float32)
    threshold = choose_threshold(scores, kinds)
    assert np.float32(0.80) < threshold < 0.8001
    flagged = scores >= threshold
    assert flagged[kinds == "hard_negative"].sum() == 1 and flagged[kinds == "random"].sum() == 1
    assert choose_threshold(scores, kinds, max_hard=0.0) > 0.90  # none allowed: above the highest
