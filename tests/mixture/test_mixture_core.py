"""Mixture core: tagging fallback, stratified split, temperature, weights, caps/floors, sources, refusal, language,
upsampling, the manifest, determinism."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.data.taxonomy import classify_task, classify_text
from assets.mixture.core import MixtureConfig, build_mixture, split_hash

MIX_COLUMNS = ["source", "split", "mix_tokens", "mix_trainable_tokens", "mix_repeat", "mix_selected_by"]

PROMPTS = {
    "coding": "Write a Python function that returns the {i}th Fibonacci number.",
    "math": "Solve for x: 3x + {i} = 20.",
    "summarization": "Summarize this paragraph in one sentence: item {i} of the report.",
    "creative_writing": "Write a short poem about harbour number {i}.",
    "reasoning": "Compare option {i} with the previous option and list the trade-offs.",
    "information_seeking": "Who was the mayor of town {i}?",
    "other": "Hello, I am visitor {i}.",
}


def conversation(shard: int, row: int, prompt: str, answer: str = "A fine answer.") -> dict:
    return {
        "conversation_id": f"{shard}-{row}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
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
    assert result.mixture.columns == [*df.columns, *MIX_COLUMNS]


def train_of(result) -> pl.DataFrame:
    return result.mixture.filter(pl.col("split") == "train")


def counts(df: pl.DataFrame, key: str = "task") -> dict[str, int]:
    return {k: int(n) for k, n in df.group_by(key).len().iter_rows()}


def constraint(result, label: str) -> dict:
    (entry,) = [c for c in result.manifest["constraints"] if c["constraint"] == label]
    return entry


def with_labels(df: pl.DataFrame, **columns: list) -> pl.DataFrame:
    return df.with_columns(*[pl.Series(name, values) for name, values in columns.items()])


# ----------------------------------------------------------------------------------------------------------
# Temperature and task weights (the generated pool)
# ----------------------------------------------------------------------------------------------------------

NATURAL = {"coding": 400, "math": 100, "creative_writing": 25}


def test_temperature_one_is_the_natural_distribution() -> None:
    result = build_mixture(pool(NATURAL), MixtureConfig(temperature=1.0, validation_fraction=0.1))
    train = train_of(result)
    assert train.height == result.manifest["train_rows"] == round(0.9 * 525)  # every train-pool row, once
    for task, n in NATURAL.items():
        assert counts(train)[task] / train.height == pytest.approx(n / 525, abs=1 / train.height)


def test_large_temperature_is_near_uniform() -> None:
    train = train_of(build_mixture(pool(NATURAL), MixtureConfig(temperature=1000.0, validation_fraction=0.1)))
    realized = counts(train)
    assert set(realized) == set(NATURAL)
    assert max(realized.values()) / min(realized.values()) <= 1.1
    assert min(realized.values()) == round(0.9 * 25)  # the smallest category sets the size: all its rows


@pytest.mark.parametrize(("temperature", "max_ratio"), [(1.0, 16.5), (2.0, 4.3), (100.0, 1.1)])
def test_temperature_flattens(temperature: float, max_ratio: float) -> None:
    realized = counts(train_of(build_mixture(pool(NATURAL), MixtureConfig(temperature=temperature))))
    assert max(realized.values()) / min(realized.values()) <= max_ratio


def test_weights_realized_with_max_rows_and_unweighted_tasks_excluded() -> None:
    df = pool({"coding": 400, "math": 400, "creative_writing": 400, "other": 100})
    weights = {"coding": 0.5, "math": 0.3, "creative_writing": 0.2}
    result = build_mixture(df, MixtureConfig(weights=weights, max_rows=400, seed=3))
    assert result.mixture.height == 400
    train = train_of(result)
    for task, w in weights.items():
        assert counts(train)[task] == round(w * train.height)
    assert result.manifest["excluded_rows"] == 100 and "other" not in counts(result.mixture)
    assert train["conversation_id"].is_unique().all()  # no repeats without upsampling


# ----------------------------------------------------------------------------------------------------------
# Caps, floors, and the constraint report
# ----------------------------------------------------------------------------------------------------------


def test_a_cap_and_a_floor_both_bind_and_the_manifest_says_so() -> None:
    cfg = MixtureConfig(category_caps={"coding": 0.4}, category_floors={"creative_writing": 0.2},
                        validation_fraction=0.1)
    result = build_mixture(pool(NATURAL), cfg)
    train = train_of(result)
    cap, floor = constraint(result, "category_cap[coding]"), constraint(result, "category_floor[creative_writing]")
    assert cap["bound"] and floor["bound"] and cap["status"] == floor["status"] == "bound"
    assert cap["without"] > 0.4 and floor["without"] < 0.2  # each alone would be violated
    assert cap["moved_by"] < 0 < floor["moved_by"]
    assert counts(train)["coding"] / train.height <= 0.4 + 1 / train.height
    assert counts(train)["creative_writing"] / train.height >= 0.2 - 1 / train.height
    assert cap["realized"] == pytest.approx(counts(train)["coding"] / train.height)


def test_a_loose_cap_does_not_bind() -> None:
    result = build_mixture(pool(NATURAL), MixtureConfig(category_caps={"creative_writing": 0.5}))
    entry = constraint(result, "category_cap[creative_writing]")
    assert (entry["bound"], entry["status"], entry["moved_by"]) == (False, "met", 0.0)
    assert counts(train_of(result)) == {t: round(0.9 * n) for t, n in NATURAL.items()}


def test_conflict_is_decided_by_the_order_floors_before_sources() -> None:
    """A floor (priority 1) beats a source share (priority 2): the source share is missed, and said so."""
    gen = pool({"coding": 200, "math": 200})
    user = with_labels(pool({"creative_writing": 200}, shard=9), source=["user"] * 200)
    df = pl.concat([gen.with_columns(pl.lit(None, pl.Utf8).alias("source")), user])
    cfg = MixtureConfig(source_shares={"user": 0.5}, category_floors={"coding": 0.6}, validation_fraction=0.0)
    result = build_mixture(df, cfg)
    floor, share = constraint(result, "category_floor[coding]"), constraint(result, "source_share[user]")
    assert floor["planned"] == pytest.approx(0.6) and floor["status"] == "bound"
    assert share["status"].startswith("missed") and share["planned"] == pytest.approx(0.4)


def test_unavailable_constraint_is_reported_not_applied() -> None:
    result = build_mixture(pool(NATURAL), MixtureConfig(category_floors={"translation": 0.3}))
    assert constraint(result, "category_floor[translation]")["status"] == "unavailable"
    assert counts(train_of(result)) == {t: round(0.9 * n) for t, n in NATURAL.items()}


def test_refusal_share_language_target_and_multi_turn_floor() -> None:
    df = pool({"coding": 100, "math": 100, "creative_writing": 100})
    refusal = [i % 10 == 0 for i in range(300)]  # 10% refusals
    language = ["fr" if i % 5 == 0 else "en" for i in range(300)]  # 20% French
    df = with_labels(df, refusal=refusal, instruction_language=language)
    cfg = MixtureConfig(refusal_share=0.02, language_targets={"fr": 0.4}, validation_fraction=0.0)
    result = build_mixture(df, cfg)
    train = train_of(result)
    assert train["refusal"].mean() == pytest.approx(0.02, abs=2 / train.height)
    assert (train["instruction_language"] == "fr").mean() == pytest.approx(0.4, abs=2 / train.height)
    assert constraint(result, "refusal_share")["realized"] == pytest.approx(train["refusal"].mean())
    assert constraint(result, "language_target[fr]")["status"] == "bound"


def test_multi_turn_and_system_prompt_floors() -> None:
    rows = [conversation(0, i, PROMPTS["math"].format(i=i)) for i in range(100)]
    for i in range(10):  # 10 multi-turn rows, 5 with a system prompt
        rows[i]["messages"] = rows[i]["messages"] + [{"role": "user", "content": "More."},
                                                     {"role": "assistant", "content": "Sure."}]
    for i in range(50, 55):
        rows[i]["messages"] = [{"role": "system", "content": "Be brief."}, *rows[i]["messages"]]
    df = pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)
    result = build_mixture(df, MixtureConfig(multi_turn_floor=0.25, system_prompt_floor=0.25,
                                             validation_fraction=0.0))
    train = train_of(result)
    assert constraint(result, "multi_turn_floor")["status"] == "bound"
    multi = train["messages"].list.len() > 2
    system = train["messages"].list.first().struct.field("role") == "system"
    assert multi.mean() >= 0.25 - 1 / train.height and system.mean() >= 0.25 - 1 / train.height


# ----------------------------------------------------------------------------------------------------------
# Sources, upsampling, shortages
# ----------------------------------------------------------------------------------------------------------


def two_sources(user_rows: int = 60) -> pl.DataFrame:
    gen = pool({"coding": 150, "math": 150}).with_columns(pl.lit(None, pl.Utf8).alias("source"))
    user = with_labels(pool({"creative_writing": user_rows}, shard=9), source=["mine"] * user_rows)
    return pl.concat([gen, user])


def test_source_share_of_rows() -> None:
    result = build_mixture(two_sources(), MixtureConfig(source_shares={"mine": 0.25}))
    train = train_of(result)
    assert counts(train, "source")["mine"] / train.height == pytest.approx(0.25, abs=1 / train.height)
    assert result.manifest["sources"]["mine"]["realized_share"] == pytest.approx(
        counts(train, "source")["mine"] / train.height)


def test_a_source_short_of_rows_shrinks_the_mix_so_every_share_holds_and_says_so() -> None:
    cfg = MixtureConfig(source_shares={"mine": 0.5}, max_rows=300)
    result = build_mixture(two_sources(user_rows=40), cfg)
    train = train_of(result)
    mine = result.manifest["sources"]["mine"]
    assert mine["rows"] == 36 and train.height == 72  # every train-pool row of the source, once; half the mix
    assert "shrunk to 72" in mine["instead"] and result.manifest["requested_train_size"] == 300 - 30
    assert result.manifest["size_limited_by"] == ["mine/creative_writing"]
    assert result.manifest["validation_rows"] == 8  # follows the train size: about 10% of the output


def test_upsampling_is_explicit_and_counted_per_source_and_category() -> None:
    cfg = MixtureConfig(source_shares={"mine": 0.5}, max_rows=300, allow_upsampling=True)
    result = build_mixture(two_sources(user_rows=40), cfg)
    train = train_of(result)
    mine = train.filter(pl.col("source") == "mine")
    repeats = int((mine["mix_repeat"] > 0).sum())
    assert mine.height == pytest.approx(0.5 * train.height, abs=1) and repeats == mine.height - 36
    group = [g for g in result.manifest["groups"] if g["source"] == "mine"]
    assert sum(g["repeats"] for g in group) == repeats
    assert result.manifest["sources"]["mine"]["instead"] == f"upsampled: {repeats} repeated rows"


# ----------------------------------------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------------------------------------


def test_validation_is_stratified_by_source_and_category() -> None:
    df = two_sources()
    result = build_mixture(df, MixtureConfig(validation_fraction=0.2))
    validation = result.mixture.filter(pl.col("split") == "validation")
    assert counts(validation) == {"coding": 30, "math": 30, "creative_writing": 12}
    assert not ids(result.mixture, "train") & ids(result.mixture, "validation")


def test_split_does_not_move_when_rows_of_other_strata_are_added() -> None:
    small = pool({"coding": 60, "math": 60})
    extra = pl.concat([pool({"creative_writing": 90}, shard=1),
                       with_labels(pool({"coding": 40}, shard=2), task=["coding_user"] * 40)],
                      how="diagonal_relaxed")
    cfg = MixtureConfig(validation_fraction=0.15, seed=11)
    before = dict(build_mixture(small, cfg).mixture.select("conversation_id", "split").iter_rows())
    after = dict(build_mixture(pl.concat([small, extra], how="diagonal_relaxed"), cfg).mixture
                 .select("conversation_id", "split").iter_rows())
    assert {cid: after[cid] for cid in before} == before


@pytest.mark.parametrize(("n_rows", "fraction", "n_validation"), [(2, 0.1, 1), (5, 0.99, 4), (1, 0.5, 0), (10, 0.0, 0)])
def test_small_pools(n_rows: int, fraction: float, n_validation: int) -> None:
    mix = build_mixture(pool({"math": n_rows}), MixtureConfig(validation_fraction=fraction)).mixture
    assert (mix["split"] == "validation").sum() == n_validation


@pytest.mark.parametrize(("max_rows", "n_validation"), [(100, 10), (55, 6), (2, 1)])
def test_max_rows_sets_validation_share(max_rows: int, n_validation: int) -> None:
    result = build_mixture(pool({"coding": 500, "math": 500}), MixtureConfig(max_rows=max_rows))
    assert result.mixture.height == max_rows
    assert (result.mixture["split"] == "validation").sum() == n_validation == result.manifest["validation_rows"]


# ----------------------------------------------------------------------------------------------------------
# Determinism, the manifest, config errors
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    MixtureConfig(),
    MixtureConfig(weights={"coding": 0.6, "math": 0.4}, max_rows=80, seed=4),
    MixtureConfig(temperature=3.0, max_rows=90, allow_upsampling=True, seed=2, category_caps={"coding": 0.3}),
])
def test_same_input_and_seed_give_the_same_bytes_whatever_the_row_order(cfg: MixtureConfig, tmp_path) -> None:
    df = pool({"coding": 70, "math": 40, "creative_writing": 25})
    first, second = build_mixture(df, cfg), build_mixture(df.reverse(), cfg)
    first.mixture.write_parquet(tmp_path / "a.parquet")
    second.mixture.write_parquet(tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert json.dumps(first.manifest, sort_keys=True) == json.dumps(second.manifest, sort_keys=True)


def test_seed_changes_split_and_sample() -> None:
    df = pool({"coding": 200, "math": 200})
    a = build_mixture(df, MixtureConfig(max_rows=100)).mixture
    b = build_mixture(df, MixtureConfig(max_rows=100, seed=1)).mixture
    assert ids(a, "validation") != ids(b, "validation") and ids(a, "train") != ids(b, "train")


def test_split_hash_is_stable_across_runs() -> None:
    got = split_hash(pl.Series("conversation_id", ["0-0", "3-17"]), seed=0).to_list()
    assert got != split_hash(pl.Series(["0-0", "3-17"]), seed=1).to_list()
    assert got[1] == int.from_bytes(hashlib.blake2b(b"3-17", digest_size=8, key=b"0").digest(), "big")


def test_manifest_shares_match_the_table_recomputed_independently() -> None:
    df = with_labels(two_sources(), instruction_language=["en", "de", "en"] * 120)
    result = build_mixture(df, MixtureConfig(source_shares={"mine": 0.3}, category_caps={"math": 0.3}))
    train = result.mixture.filter(pl.col("split") == "train").to_dicts()
    tally: dict[tuple, int] = {}
    for row in train:  # plain Python, not the manifest's polars code
        key = (row["source"] or "generated", row["task"], row["instruction_language"])
        tally[key] = tally.get(key, 0) + 1
    manifest = {(g["source"], g["task"], g["language"]): g for g in result.manifest["groups"]}
    for key, n in tally.items():
        assert manifest[key]["rows"] == n
        assert manifest[key]["rows_share"] == pytest.approx(n / len(train), rel=1e-12)
    assert sum(g["rows"] for g in manifest.values()) == len(train)


@pytest.mark.parametrize("kwargs", [
    {"weights": {"coding": -1.0}}, {"weights": {"coding": 0.0}}, {"weights": {}}, {"temperature": 0.0},
    {"validation_fraction": 1.0}, {"max_rows": -5}, {"source_shares": {"a": 0.7, "b": 0.5}},
    {"category_floors": {"a": 1.5}}, {"refusal_share": 2.0}, {"unit": "bytes"}, {"max_tokens": 100},
    {"unit": "tokens", "max_rows": 10},
])
def test_invalid_config_rejected(kwargs) -> None:
    with pytest.raises(ValueError):
        MixtureConfig(**kwargs)


def test_tokens_need_a_counter_and_ids_must_be_set() -> None:
    with pytest.raises(ValueError, match="count_tokens"):
        build_mixture(pool({"coding": 3}), MixtureConfig(unit="tokens"))
    with pytest.raises(ValueError, match="null"):
        build_mixture(pool({"coding": 3}).with_columns(pl.lit(None, pl.Utf8).alias("conversation_id")))


def test_empty_input() -> None:
    empty = build_mixture(pool({}))
    assert empty.mixture.height == 0 and empty.mixture.columns[-6:] == MIX_COLUMNS


def test_a_weighted_task_without_rows_is_reported() -> None:
    result = build_mixture(pool({"coding": 30, "math": 20}), MixtureConfig(weights={"coding": 1, "poetry": 1}))
    assert result.manifest["weights_without_rows"] == ["poetry"]
    assert counts(result.mixture) == {"coding": 30}


def test_shares_naming_every_source_are_scaled_to_the_whole_mix() -> None:
    result = build_mixture(two_sources(), MixtureConfig(source_shares={"generated": 0.3, "mine": 0.1}))
    train = train_of(result)
    assert counts(train, "source")["mine"] / train.height == pytest.approx(0.25, abs=1 / train.height)
    assert constraint(result, "source_share[mine]")["target"] == pytest.approx(0.25)
