"""Checkpointed shards with the deterministic fake engine: a shard killed mid-way and resumed, with the same or
another batch size, equals an uninterrupted run row for row (nothing lost, nothing duplicated)."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from assets.common.data.schema import validate_conversations
from assets.generation.magpie import row_seed
from assets.generation.shards import Chunk, missing_batches, run_shard
from tests.fake_generator import CrashedRun, FakeGenerator
from tests.generation_config import tiny_magpie_config

CONFIG = tiny_magpie_config(num_conversations=40)  # 2 turns, with and without a system prompt
CALLS_PER_BATCH = 2 * CONFIG.num_turns  # one instruction and one response call per turn


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def run(tokenizer, work_dir: Path, batch_size: int, generator: FakeGenerator, model_hash: str = "tiny-hash",
        log=None):
    return run_shard(lambda: generator, tokenizer, CONFIG, "tiny", model_hash, work_dir, batch_size,
                     engine_key="fake-engine==1.0", log=log)


@pytest.fixture(scope="module")
def uninterrupted(tokenizer, tmp_path_factory):
    return run(tokenizer, tmp_path_factory.mktemp("whole"), 40, FakeGenerator())


def committed(work_dir: Path) -> list[str]:
    return sorted(p.name for p in work_dir.glob("*.json") if p.name != "manifest.json")


def comparable(stats) -> dict:
    return {k: v for k, v in stats.to_dict().items() if k not in ("seconds", "tokens_per_second")}


def generated_rows(generator: FakeGenerator) -> list[list[int]]:
    """The rows of each first-turn instruction call (one call per batch), recovered from their seeds."""
    by_seed = {row_seed(CONFIG, i, 1, "user"): i for i in range(CONFIG.num_conversations)}
    return [[by_seed[s] for s in call["seeds"]] for call in generator.calls if call["seeds"]
            and all(s in by_seed for s in call["seeds"])]


def test_fake_run_drops_and_keeps_rows(uninterrupted):
    stats = uninterrupted.stats
    assert stats.attempted == 40 and 20 < stats.kept < 40 and sum(stats.dropped.values()) == 40 - stats.kept
    assert uninterrupted.table["conversation_id"].is_unique().all()
    assert stats.dropped["empty_response"] > 0  # a conversation with an empty answer is not written
    validate_conversations(uninterrupted.table, "generated shard")  # what deduplication checks on read


@pytest.mark.parametrize(("first", "batches_done", "second"),
                         [(8, 2, 16), (16, 1, 8), (8, 3, 12), (12, 2, 5), (7, 1, 40), (8, 2, 8)])
def test_resume_with_another_batch_size_equals_uninterrupted_run(tokenizer, uninterrupted, tmp_path, first,
                                                                 batches_done, second):
    crashed = FakeGenerator(fail_on_call=batches_done * CALLS_PER_BATCH + 1)
    with pytest.raises(CrashedRun):
        run(tokenizer, tmp_path, first, crashed)
    assert len(committed(tmp_path)) == batches_done

    engine, messages = FakeGenerator(), []
    result = run(tokenizer, tmp_path, second, engine, log=messages.append)
    assert result.table["conversation_id"].is_unique().all()
    assert result.table.equals(uninterrupted.table)  # row for row: nothing lost, nothing duplicated
    assert comparable(result.stats) == comparable(uninterrupted.stats)
    assert result.resumed_batches == batches_done
    done = batches_done * first
    batches = generated_rows(engine)
    assert [row for batch in batches for row in batch] == list(range(done, 40))  # only the missing rows
    assert all(len(batch) <= second for batch in batches)
    assert result.batches == batches_done + len(batches)
    if first != second:
        assert any(f"batches of {first}" in m and f"batches of {second}" in m for m in messages), messages


def test_checkpoints_of_another_model_are_discarded(tokenizer, uninterrupted, tmp_path):
    with pytest.raises(CrashedRun):
        run(tokenizer, tmp_path, 8, FakeGenerator(fail_on_call=CALLS_PER_BATCH + 1), model_hash="other-model")
    assert len(committed(tmp_path)) == 1
    messages = []
    result = run(tokenizer, tmp_path, 16, FakeGenerator(), log=messages.append)
    assert result.resumed_batches == 0
    assert result.table.equals(uninterrupted.table)
    assert any("starting the shard afresh" in m for m in messages)


@pytest.mark.parametrize(("covered", "expected"), [
    ([], [(0, 8), (8, 16), (16, 20)]),
    ([(0, 5)], [(5, 13), (13, 20)]),
    ([(4, 9), (12, 20)], [(0, 4), (9, 12)]),
    ([(0, 20)], []),
])
def test_missing_batches_cover_every_uncovered_row_once(covered, expected):
    chunks = [Chunk(start, stop, None, {}) for start, stop in covered]
    assert [(b.start, b.stop) for b in missing_batches(chunks, 20, 8)] == expected


def test_a_chunk_whose_file_no_longer_matches_its_hash_is_generated_again(tokenizer, uninterrupted, tmp_path):
    """A committed chunk's Parquet file changed after its marker recorded its hash (a partial copy, a disk error, an
    edit): the resume must not trust it. Its rows are generated again, the log names the file, and the shard equals
    an uninterrupted run."""
    import polars as pl

    with pytest.raises(CrashedRun):
        run(tokenizer, tmp_path, 8, FakeGenerator(fail_on_call=2 * CALLS_PER_BATCH + 1))
    assert committed(tmp_path) == ["rows-0000000-0000008.json", "rows-0000008-0000016.json"]
    damaged = tmp_path / "rows-0000000-0000008.parquet"
    pl.read_parquet(damaged).head(1).write_parquet(damaged)  # a readable file, one row short
    engine, messages = FakeGenerator(), []
    result = run(tokenizer, tmp_path, 8, engine, log=messages.append)
    assert result.resumed_batches == 1
    assert [row for batch in generated_rows(engine) for row in batch] == [*range(8), *range(16, 40)]
    assert result.table.equals(uninterrupted.table)
    assert f"{damaged}: does not match the hash recorded in rows-0000000-0000008.json; rows 0..7 are generated again" \
        in messages
