"""Task mixture: heuristic tagging, hash split, weighted sampling, shortfall, stability, determinism."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest

from assets.common.schema import CONVERSATION_SCHEMA
from assets.common.taxonomy import classify_task, classify_text
from assets.mixture.core import MixtureConfig, build_mixture, split_hash

PROMPTS = {
    "coding": "Write a Python function that returns the {i}th Fibonacci number.",
    "math": "Solve for x: 3x + {i} = 20.",
    "summarization": "Summarize this paragraph in one sentence: item {i} of the report.",
    "creative_writing": "Write a short poem about harbour number {i}.",
    "reasoning": "Compare option {i} with the previous option and list the trade-offs.",
    "information_seeking": "Who was the mayor of town {i}?",
    "other": "Hello, I am visitor {i}.",
}


def conversation(shard: int, row: int, prompt: str) -> dict:
    return {
        "conversation_id": f"{shard}-{row}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "A fine answer."}],
        "finish_reasons": ["stop", "stop"],
        "num_turns": 1,
        "shard": shard,
        "row_index": row,
        "seed": 7,
        "generator_model": "tiny-model",
        "generator_model_hash": "abc",
        "pre_query_template_hash": "def",
        "sampling_params": "{}",
        "engine": "vllm",
        "engine_version": "0.0",
    }


def pool(counts: dict[str, int], shard: int = 0) -> pl.DataFrame:
    """Full-schema frame: ``counts[task]`` rows whose first user message the heuristic tags as ``task``."""
    rows, row = [], 0
    for task, n in counts.items():
        for i in range(n):
            rows.append(conversation(shard, row, PROMPTS[task].format(i=i)))
            row += 1
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)


def ids(df: pl.DataFrame, split: str) -> set[str]:
    return set(df.filter(pl.col("split") == split)["conversation_id"].to_list())


# ----------------------------------------------------------------------------------------------------------
# Task heuristic
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROMPTS))
def test_test_prompts_are_tagged_as_intended(name: str) -> None:
    assert classify_text(PROMPTS[name].format(i=3)) == name


def test_classify_uses_first_user_message_and_skips_system() -> None:
    df = pl.DataFrame(
        {
            "messages": [
                [
                    {"role": "system", "content": "You write Python code."},
                    {"role": "user", "content": "Write a poem about the sea."},
                    {"role": "assistant", "content": "Waves..."},
                    {"role": "user", "content": "Now write it as Python code."},
                ],
                [],
            ]
        },
        schema={"messages": CONVERSATION_SCHEMA["messages"]},
    )
    assert classify_task(df)["task"].to_list() == ["creative_writing", "other"]


def test_existing_task_column_overrides_heuristic() -> None:
    df = pool({"coding": 2, "math": 2}).with_columns(
        pl.Series("task", ["my_label", None, "math", "coding"], dtype=pl.Utf8)
    )
    tagged = classify_task(df)
    assert tagged.columns == df.columns  # kept in place, not duplicated
    assert tagged["task"].to_list() == ["my_label", "coding", "math", "coding"]
    result = build_mixture(df, MixtureConfig(validation_fraction=0.0))
    assert sorted(result.mixture["task"].to_list()) == ["coding", "coding", "math", "my_label"]
    assert result.mixture.columns == [*df.columns, "split"]


# ----------------------------------------------------------------------------------------------------------
# Mixture sampling
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "max_rows"),
    [
        ({"coding": 0.5, "math": 0.3, "creative_writing": 0.2}, 400),
        ({"coding": 1, "math": 1, "creative_writing": 1, "information_seeking": 1}, 301),
        ({"math": 0.9, "information_seeking": 0.1}, 250),
    ],
)
def test_weights_realized_when_rows_suffice(weights: dict[str, float], max_rows: int) -> None:
    df = pool({"coding": 400, "math": 400, "creative_writing": 400, "information_seeking": 400, "other": 100})
    result = build_mixture(df, MixtureConfig(weights=weights, max_rows=max_rows, seed=3))
    mix = result.mixture
    assert mix.height == max_rows
    train = mix.filter(pl.col("split") == "train")
    total_w = sum(weights.values())
    realized = dict(train.group_by("task").len().iter_rows())
    assert set(realized) == set(weights)  # unweighted tasks ("other") are excluded
    for task, w in weights.items():
        assert realized[task] / train.height == pytest.approx(w / total_w, abs=1.0 / train.height + 1e-9)
        entry = result.stats["tasks"][task]["train"]
        assert entry["realized"] == realized[task] == entry["target"]
        assert entry["shortfall"] == 0
    assert result.stats["shortfall"] == {}
    assert result.stats["excluded_rows"] == df.height - sum(400 for t in weights)
    assert train["conversation_id"].n_unique() == train.height  # without replacement


def test_shortfall_is_reported_not_redistributed() -> None:
    df = pool({"coding": 20, "math": 500, "creative_writing": 500})
    cfg = MixtureConfig(
        weights={"coding": 0.5, "math": 0.25, "creative_writing": 0.25}, max_rows=200, validation_fraction=0.1
    )
    result = build_mixture(df, cfg)
    code = result.stats["tasks"]["coding"]["train"]
    train_code_available = code["available"]
    assert train_code_available < 20  # a few code rows went to the validation pool
    assert code["target"] == 90  # 200 - 20 validation rows = 180 train, half of it code
    assert code["realized"] == train_code_available
    assert code["shortfall"] == 90 - train_code_available
    assert result.stats["shortfall"] == {"coding": 90 - train_code_available}
    # the other tasks get exactly their targets: the shortfall is not filled from them
    for task in ("math", "creative_writing"):
        assert result.stats["tasks"][task]["train"]["realized"] == 45
    train = result.mixture.filter(pl.col("split") == "train")
    assert train.height == 90 + train_code_available
    assert result.stats["train_rows"] == train.height
    json.dumps(result.stats)  # serialisable for Dagster metadata


def test_upsampling_repeats_short_task_deterministically() -> None:
    df = pool({"coding": 10, "math": 300})
    cfg = MixtureConfig(
        weights={"coding": 0.5, "math": 0.5}, max_rows=100, validation_fraction=0.0, allow_upsampling=True
    )
    result = build_mixture(df, cfg)
    train = result.mixture
    code = train.filter(pl.col("task") == "coding")
    assert code.height == 50
    counts = code.group_by("conversation_id").len()["len"]
    assert counts.n_unique() == 1 and counts[0] == 5  # 10 rows x 5 copies: evenly repeated
    stats = result.stats["tasks"]["coding"]["train"]
    assert (stats["realized"], stats["shortfall"], stats["upsampled"]) == (50, 0, 40)
    assert build_mixture(df, cfg).mixture.equals(train)


def test_upsampling_partial_cycle_uses_first_rows_in_hash_order() -> None:
    df = pool({"coding": 4, "math": 100})
    cfg = MixtureConfig(
        weights={"coding": 0.5, "math": 0.5}, max_rows=14, validation_fraction=0.0, allow_upsampling=True
    )
    code = build_mixture(df, cfg).mixture.filter(pl.col("task") == "coding")
    assert code.height == 7
    counts = dict(code.group_by("conversation_id").len().iter_rows())
    assert sorted(counts.values()) == [1, 2, 2, 2]
    code_ids = df["conversation_id"][:4]  # pool() puts the code rows first
    order = [
        cid for _, cid in sorted(zip(split_hash(code_ids, seed=0).to_list(), code_ids.to_list(), strict=True))
    ]
    assert [counts[c] for c in order] == [2, 2, 2, 1]


def test_natural_distribution_uses_every_row() -> None:
    df = pool({"coding": 37, "math": 120, "creative_writing": 55, "other": 8})
    result = build_mixture(df, MixtureConfig(validation_fraction=0.2, seed=1))
    mix = result.mixture
    assert mix.height == df.height
    assert sorted(mix["conversation_id"].to_list()) == sorted(df["conversation_id"].to_list())
    n_val = (mix["split"] == "validation").sum()
    assert 0.1 < n_val / df.height < 0.3
    assert result.stats["shortfall"] == {}


@pytest.mark.parametrize(("fraction", "seed"), [(0.1, 0), (0.25, 3), (0.5, 8)])
def test_validation_is_exactly_the_hash_pool(fraction: float, seed: int) -> None:
    df = pool({"coding": 90, "math": 130, "information_seeking": 40})
    mix = build_mixture(df, MixtureConfig(validation_fraction=fraction, seed=seed)).mixture
    hashes = split_hash(df["conversation_id"], seed).to_list()
    expected = {
        cid for cid, h in zip(df["conversation_id"].to_list(), hashes, strict=True) if h < fraction * 2**64
    }
    assert ids(mix, "validation") == expected
    assert ids(mix, "train") == set(df["conversation_id"].to_list()) - expected


@pytest.mark.parametrize(("temperature", "max_ratio"), [(1.0, 10.0), (2.0, 3.5), (100.0, 1.1)])
def test_temperature_flattens_distribution(temperature: float, max_ratio: float) -> None:
    df = pool({"coding": 1000, "math": 100})
    cfg = MixtureConfig(temperature=temperature, max_rows=110, validation_fraction=0.0)
    result = build_mixture(df, cfg)
    realized = dict(result.mixture.group_by("task").len().iter_rows())
    ratio = realized["coding"] / realized["math"]
    # p_code / p_math = (n_code / n_math) ** (1 / T) = 10 ** (1 / T)
    assert ratio == pytest.approx(10 ** (1 / temperature), rel=0.15)
    assert ratio <= max_ratio + 1e-9
    assert result.stats["tasks"]["coding"]["weight"] == pytest.approx(
        10 ** (1 / temperature) / (1 + 10 ** (1 / temperature))
    )


# ----------------------------------------------------------------------------------------------------------
# Train / validation split
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        MixtureConfig(),
        MixtureConfig(validation_fraction=0.3, seed=5),
        MixtureConfig(weights={"coding": 0.7, "math": 0.3}, max_rows=150),
        MixtureConfig(weights={"coding": 0.9, "math": 0.1}, max_rows=600, allow_upsampling=True),
    ],
)
def test_no_train_validation_overlap(cfg: MixtureConfig) -> None:
    result = build_mixture(pool({"coding": 120, "math": 200, "information_seeking": 50}), cfg)
    train, validation = ids(result.mixture, "train"), ids(result.mixture, "validation")
    assert train and validation
    assert not train & validation


def test_validation_is_chosen_from_hash_pool_before_sampling() -> None:
    df = pool({"coding": 150, "math": 150})
    natural = build_mixture(df, MixtureConfig(seed=9))
    val_pool = ids(natural.mixture, "validation")
    for cfg in (
        MixtureConfig(seed=9, weights={"coding": 0.8, "math": 0.2}),
        MixtureConfig(seed=9, weights={"coding": 0.5, "math": 0.5}, max_rows=60),
        MixtureConfig(seed=9, weights={"coding": 0.9, "math": 0.1}, max_rows=1000, allow_upsampling=True),
    ):
        mix = build_mixture(df, cfg).mixture
        assert ids(mix, "validation") <= val_pool
        assert not ids(mix, "train") & val_pool


def test_split_is_stable_when_rows_are_added() -> None:
    small = pool({"coding": 60, "math": 60, "creative_writing": 60})
    extra = pool({"coding": 90, "information_seeking": 70}, shard=1)
    big = pl.concat([small, extra])
    cfg = MixtureConfig(validation_fraction=0.15, seed=11)
    before = build_mixture(small, cfg).mixture
    after = build_mixture(big, cfg).mixture
    split_before = dict(before.select("conversation_id", "split").iter_rows())
    split_after = dict(after.select("conversation_id", "split").iter_rows())
    assert ids(before, "validation")  # the small-pool exception is not in play
    assert {cid: split_after[cid] for cid in split_before} == split_before
    # and the same holds row by row in a shuffled, re-ordered input
    shuffled = build_mixture(big.sample(fraction=1.0, shuffle=True, seed=1), cfg).mixture
    assert shuffled.equals(after)


@pytest.mark.parametrize(
    ("n_rows", "fraction", "n_validation"),
    [(2, 0.1, 1), (3, 0.01, 1), (5, 0.99, 4), (1, 0.5, 0), (10, 0.0, 0)],
)
def test_small_pools_get_one_validation_row(n_rows: int, fraction: float, n_validation: int) -> None:
    df = pool({"math": n_rows})
    mix = build_mixture(df, MixtureConfig(validation_fraction=fraction)).mixture
    assert mix.height == n_rows
    assert (mix["split"] == "validation").sum() == n_validation


@pytest.mark.parametrize(("max_rows", "n_validation"), [(100, 10), (55, 6), (2, 1)])
def test_max_rows_sets_validation_share(max_rows: int, n_validation: int) -> None:
    df = pool({"coding": 500, "math": 500})
    result = build_mixture(df, MixtureConfig(max_rows=max_rows, validation_fraction=0.1))
    mix = result.mixture
    assert mix.height == max_rows
    assert (mix["split"] == "validation").sum() == n_validation == result.stats["validation_rows"]


def test_subsampled_train_caps_validation_size() -> None:
    # weights force a small train set (limited by 'code'); validation must shrink with it, not stay at 10% of
    # the whole pool
    df = pool({"coding": 50, "math": 2000})
    result = build_mixture(df, MixtureConfig(weights={"coding": 0.5, "math": 0.5}, validation_fraction=0.1))
    n_train, n_val = result.stats["train_rows"], result.stats["validation_rows"]
    assert result.stats["shortfall"] == {}
    assert n_val == round(n_train * 0.1 / 0.9)
    assert n_val < 0.2 * n_train


# ----------------------------------------------------------------------------------------------------------
# Determinism and output shape
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        MixtureConfig(),
        MixtureConfig(weights={"coding": 0.6, "math": 0.4}, max_rows=80, seed=4),
        MixtureConfig(temperature=3.0, max_rows=90, allow_upsampling=True, seed=2),
    ],
)
def test_deterministic_output(cfg: MixtureConfig) -> None:
    df = pool({"coding": 70, "math": 40, "creative_writing": 25})
    first = build_mixture(df, cfg)
    second = build_mixture(df.reverse(), cfg)
    assert first.mixture.equals(second.mixture)
    assert first.stats == second.stats
    expected_order = first.mixture.sort(["split", "conversation_id"], maintain_order=True)
    assert first.mixture.equals(expected_order)
    assert first.mixture.columns == [*df.columns, "task", "split"]
    assert set(first.mixture["split"].unique()) == {"train", "validation"}


def test_seed_changes_split_and_sample() -> None:
    df = pool({"coding": 200, "math": 200})
    cfg = MixtureConfig(weights={"coding": 0.5, "math": 0.5}, max_rows=100)
    a = build_mixture(df, cfg).mixture
    b = build_mixture(df, MixtureConfig(weights={"coding": 0.5, "math": 0.5}, max_rows=100, seed=1)).mixture
    assert ids(a, "validation") != ids(b, "validation")
    assert ids(a, "train") != ids(b, "train")


def test_split_hash_is_stable_across_runs() -> None:
    # BLAKE2b keyed by the seed (hashlib), so the split never depends on polars' hash implementation
    got = split_hash(pl.Series("conversation_id", ["0-0", "3-17"]), seed=0).to_list()
    assert got != split_hash(pl.Series(["0-0", "3-17"]), seed=1).to_list()
    want = int.from_bytes(hashlib.blake2b(b"3-17", digest_size=8, key=b"0").digest(), "big")
    assert got[1] == want


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": {"coding": -1.0}},
        {"weights": {"coding": 0.0}},
        {"weights": {}},
        {"temperature": 0.0},
        {"validation_fraction": 1.0},
        {"max_rows": -5},
    ],
)
def test_invalid_config_rejected(kwargs) -> None:
    with pytest.raises(ValueError):
        MixtureConfig(**kwargs)


def test_missing_or_null_ids_rejected() -> None:
    df = pool({"coding": 3}).with_columns(pl.lit(None, pl.Utf8).alias("conversation_id"))
    with pytest.raises(ValueError, match="null"):
        build_mixture(df)


def test_weighted_task_with_no_rows_is_a_full_shortfall() -> None:
    df = pool({"coding": 30, "math": 20})
    result = build_mixture(df, MixtureConfig(weights={"coding": 1, "poetry": 1}))
    code, poetry = result.stats["tasks"]["coding"]["train"], result.stats["tasks"]["poetry"]["train"]
    # without max_rows the size is set by the tasks that have rows: all train-pool code rows
    assert code["realized"] == code["target"] == code["available"]
    assert poetry == poetry | {"available": 0, "target": code["target"], "realized": 0}
    assert result.stats["shortfall"] == {"poetry": code["target"]}
    assert result.stats["excluded_rows"] == 20
    assert set(result.mixture["task"].to_list()) == {"coding"}


def test_empty_input_and_explicit_tasks_without_messages() -> None:
    empty = build_mixture(pool({}))
    assert empty.mixture.height == 0 and empty.mixture.columns[-2:] == ["task", "split"]
    # a fully labelled frame needs no messages column at all
    df = pl.DataFrame({"conversation_id": [f"0-{i}" for i in range(40)], "task": ["a", "b"] * 20})
    mix = build_mixture(
        df, MixtureConfig(weights={"a": 3, "b": 1}, max_rows=20, validation_fraction=0.0)
    ).mixture
    assert dict(mix.group_by("task").len().iter_rows()) == {"a": 15, "b": 5}
