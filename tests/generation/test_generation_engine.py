"""Magpie on the real vLLM engine with the tiny model: provenance, determinism, and a killed shard resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from transformers import AutoTokenizer

from assets.common.data.schema import CONVERSATION_SCHEMA, validate_conversations
from assets.common.models.engine import EngineConfig, VLLMGenerator
from assets.generation.magpie import generate_conversations
from assets.generation.shards import run_shard
from tests.generation_config import tiny_magpie_config

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    generator = VLLMGenerator(str(tiny_model_dir), EngineConfig(max_model_len=512, cpu_kv_cache_gb=1), seed=5)
    yield generator
    generator.close()


def borrowed(engine):
    """The module's engine without `close`, so run_shard cannot shut it down for the other tests."""
    return SimpleNamespace(engine_name=engine.engine_name, engine_version=engine.engine_version,
                           generate=engine.generate)


@pytest.fixture(scope="module")
def reference(engine, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return generate_conversations(engine, tokenizer, tiny_magpie_config(), "tiny", "tiny-hash")


def test_rows_have_schema_and_provenance(reference):
    table, stats = reference
    assert table.schema == pl.Schema(CONVERSATION_SCHEMA)
    validate_conversations(table, "generated shard")  # what deduplication checks on read
    assert table.height == stats.kept and stats.attempted == 40 and stats.kept > 20
    assert stats.kept + sum(stats.dropped.values()) == stats.attempted
    assert (table["shard"] == 3).all() and (table["seed"] == 5).all()
    assert table["engine"].unique().to_list() == ["vllm-cpu"]
    assert table["generator_model_hash"].unique().to_list() == ["tiny-hash"]
    assert table["pre_query_template_hash"].str.len_chars().unique().to_list() == [64]
    assert table["conversation_id"].is_unique().all()
    for row in table.iter_rows(named=True):
        roles = [m["role"] for m in row["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant", "user", "assistant"]
        assert len(row["finish_reasons"]) == 4
        assert not any("<|im_start|>" in m["content"] or "<|im_end|>" in m["content"] for m in row["messages"])
    systems = {row["messages"][0]["content"] for row in table.iter_rows(named=True)
               if row["messages"][0]["role"] == "system"}
    assert systems == {"You answer briefly."}  # sampled for some rows, not for others
    assert table.filter(pl.col("messages").list.first().struct.field("role") == "user").height > 0


def test_rows_do_not_depend_on_batching(engine, reference, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    table, _ = reference
    parts = [generate_conversations(engine, tokenizer, tiny_magpie_config(), "tiny", "tiny-hash", rows=rows)[0]
             for rows in (range(0, 13), range(13, 40))]
    assert pl.concat(parts).equals(table)


def test_killed_shard_resumes_in_other_batches_without_losing_or_duplicating_rows(engine, reference, tiny_model_dir,
                                                                                  tmp_path):
    work_dir = tmp_path / "shard"
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.shard_worker", str(tiny_model_dir), str(work_dir)],
        cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(work_dir.glob("rows-*.json"))) < 2:
            assert worker.poll() is None, f"worker exited early:\n{worker.stdout.read()}"
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    committed = sorted(p.name for p in work_dir.glob("rows-*.json"))
    assert 2 <= len(committed) < 5, committed  # killed mid-shard: 5 batches of 8 rows in all

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    started = []
    result = run_shard(lambda: started.append(1) or borrowed(engine), tokenizer, tiny_magpie_config(), "tiny",
                       "tiny-hash", work_dir, batch_size=12, engine_key="vllm-cpu")  # another batch size
    expected, _ = reference
    assert result.resumed_batches == len(committed)
    assert started == [1]  # the engine was needed once, for the missing batches only
    assert result.table["conversation_id"].is_unique().all()
    assert result.table.equals(expected)  # nothing lost, nothing duplicated, identical rows


def test_fully_committed_shard_needs_no_engine(engine, reference, tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = tiny_magpie_config()
    first = run_shard(lambda: borrowed(engine), tokenizer, config, "tiny", "tiny-hash", tmp_path, 16,
                      engine_key="vllm-cpu")

    def no_engine():
        raise AssertionError("the engine must not start when every batch is committed")

    again = run_shard(no_engine, tokenizer, config, "tiny", "tiny-hash", tmp_path, 16, engine_key="vllm-cpu")
    assert again.resumed_batches == again.batches == 3
    assert again.table.equals(first.table)
    other = run_shard(lambda: borrowed(engine), tokenizer, config, "tiny", "other-model", tmp_path, 16,
                      engine_key="vllm-cpu")
    assert other.resumed_batches == 0  # a different model invalidates the checkpoints


@pytest.mark.parametrize("knob", [{"min_p": 1.0}, {"top_k": 1}])
def test_min_p_and_top_k_reach_the_engine(engine, tiny_model_dir, knob):
    """min_p=1 (only tokens as likely as the top one) and top_k=1 both leave the arg-max: sampling at a high
    temperature then gives the greedy answer, which plain sampling at that temperature does not."""
    from assets.common.models.engine import SamplingConfig

    prompts = [[1, 5 + i, 9, 17 + i] for i in range(8)]
    seeds = list(range(8))
    greedy = engine.generate(prompts, SamplingConfig(temperature=0.0, max_tokens=12), [], seeds)
    hot = SamplingConfig(temperature=1.5, max_tokens=12)
    plain = engine.generate(prompts, hot, [], seeds)
    filtered = engine.generate(prompts, SamplingConfig(**{**hot.to_dict(), **knob}), [], seeds)
    ids = [[c.token_ids for c in out] for out in (greedy, plain, filtered)]
    assert ids[2] == ids[0]
    assert ids[1] != ids[0]
