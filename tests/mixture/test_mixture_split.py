"""The train/validation split of many small strata: every (source, task) stratum of at least
`min_rows_for_validation` rows validates, the validation draw keeps one row per stratum, the manifest names every
stratum without one and why; what adding rows may move (the README's claim); same inputs and seed, same bytes."""

import json

import polars as pl
import pytest

from assets.mixture.core import MixtureConfig, build_mixture
from assets.mixture.split import MIN_ROWS_FOR_VALIDATION
from tests.mixture.test_mixture_core import pool, with_labels

TASKS = ("coding", "math", "creative_writing")


def sources(sizes: dict[str, dict[str, int]], shard: int = 0) -> pl.DataFrame:
    """Rows of several user sources: ``sizes[source][task]`` rows each (ids unique per source and shard)."""
    frames = []
    for i, (name, tasks) in enumerate(sorted(sizes.items())):
        df = pool(tasks, shard=shard * 100 + i)
        frames.append(with_labels(df, source=[name] * df.height))
    return pl.concat(frames)


def validated(result) -> dict[tuple[str, str], int]:
    rows = result.mixture.filter(pl.col("split") == "validation")
    return {(s, t): n for s, t, n in rows.group_by("source", "task").len().iter_rows()}


def split_of(df: pl.DataFrame, cfg: MixtureConfig) -> dict[str, str]:
    return dict(build_mixture(df, cfg).mixture.select("conversation_id", "split").iter_rows())


SMALL_SOURCES = {f"user{i}": {"coding": 5 + i % 2, "math": 6, "creative_writing": 3} for i in range(4)}


def test_every_stratum_of_min_rows_validates_and_the_rest_are_named():
    """Four small sources at a 5% fraction: rounding alone gives no stratum a row (before: one fallback row for the
    whole mix); now each of the 8 strata of 5-6 rows has one, and the 4 of 3 rows are listed with the reason."""
    cfg = MixtureConfig(validation_fraction=0.05)
    result = build_mixture(sources(SMALL_SOURCES), cfg)
    assert validated(result) == {(s, t): 1 for s in SMALL_SOURCES for t in ("coding", "math")}
    coverage = result.manifest["validation_strata"]
    assert (coverage["strata"], coverage["with_validation"]) == (12, 8)
    assert coverage["min_rows_for_validation"] == MIN_ROWS_FOR_VALIDATION == 5
    assert coverage["without_validation"] == [
        {"source": s, "task": "creative_writing", "rows": 3,
         "reason": "3 row(s): round(0.05 x 3) = 0, and fewer than min_rows_for_validation=5"} for s in SMALL_SOURCES]
    rounding_only = build_mixture(sources(SMALL_SOURCES), MixtureConfig(validation_fraction=0.05,
                                                                          min_rows_for_validation=0))
    assert sum(validated(rounding_only).values()) == 1  # the old behaviour: one fallback row for 12 strata
    assert len(rounding_only.manifest["validation_strata"]["without_validation"]) == 11


def test_the_validation_draw_keeps_one_row_of_every_stratum():
    """A large generated pool and a 6-row user source: 5 validation rows (max_rows 50) used to go by size alone
    (the user source's share, 1 of 41 pool rows, rounded to none); now every stratum has one."""
    gen = pool({"coding": 200, "math": 200}).with_columns(pl.lit(None, pl.Utf8).alias("source"))
    df = pl.concat([gen, sources({"mine": {"creative_writing": 6}}, shard=1)], how="diagonal_relaxed")
    result = build_mixture(df, MixtureConfig(max_rows=50))
    assert validated(result) == {("generated", "coding"): 2, ("generated", "math"): 2, ("mine", "creative_writing"): 1}
    assert result.manifest["validation_strata"]["without_validation"] == []
    fewer = build_mixture(df, MixtureConfig(max_rows=20))  # 2 validation rows for 3 strata: the largest two
    assert validated(fewer) == {("generated", "coding"): 1, ("generated", "math"): 1}
    (missing,) = fewer.manifest["validation_strata"]["without_validation"]
    assert missing["source"] == "mine" and missing["reason"] == (
        "2 validation row(s) for the 3 strata of the validation pool: one each went to the largest")


def test_adding_rows_of_other_sources_and_categories_moves_no_row():
    """The README's claim, with strata small enough that the floor decides their validation row."""
    cfg = MixtureConfig(validation_fraction=0.05, seed=3)
    before_df = sources(SMALL_SOURCES)
    before = split_of(before_df, cfg)
    more = pl.concat([before_df, sources({"user9": {"coding": 7, "math": 2}}, shard=1),
                      with_labels(pool({"summarization": 5}, shard=77), source=["user0"] * 5)])
    after = split_of(more, cfg)
    assert {cid: after[cid] for cid in before} == before


@pytest.mark.parametrize("seed", range(6))
def test_adding_k_rows_to_a_stratum_moves_at_most_k_of_its_rows(seed):
    """Rows added to a source's existing category can move that stratum's rows at its validation cut (the README
    says so): never more than were added, and never a row of another stratum."""
    cfg = MixtureConfig(validation_fraction=0.1, seed=seed)
    old = sources({"a": {"coding": 4 + seed, "math": 30}, "b": {"coding": 12}})
    before = split_of(old, cfg)
    k = 1 + seed % 4
    new_rows = with_labels(pool({"coding": k}, shard=50 + seed), source=["a"] * k)
    after = split_of(pl.concat([old, new_rows]), cfg)
    moved = [cid for cid in before if after[cid] != before[cid]]
    stratum = set(old.filter((pl.col("source") == "a") & pl.col("conversation_id").is_in(
        pool({"coding": 4 + seed}, shard=0)["conversation_id"].to_list()))["conversation_id"].to_list())
    assert set(moved) <= stratum and len(moved) <= k


def test_small_strata_split_the_same_bytes_whatever_the_row_order(tmp_path):
    generated = pool({"coding": 40}, shard=99).with_columns(pl.lit(None, pl.Utf8).alias("source"))
    df = pl.concat([sources(SMALL_SOURCES), generated], how="diagonal_relaxed")
    cfg = MixtureConfig(validation_fraction=0.05, max_rows=30, seed=9)
    first, second = build_mixture(df, cfg), build_mixture(df.reverse(), cfg)
    first.mixture.write_parquet(tmp_path / "a.parquet")
    second.mixture.write_parquet(tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert json.dumps(first.manifest, sort_keys=True) == json.dumps(second.manifest, sort_keys=True)


def test_min_rows_for_validation_must_be_a_count():
    with pytest.raises(ValueError, match="min_rows_for_validation must be an integer >= 0"):
        MixtureConfig(min_rows_for_validation=-1)
