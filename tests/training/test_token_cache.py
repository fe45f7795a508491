"""Training reads the token ids and assistant masks the mixture's counter kept (assets/common/models/token_cache.py)
instead of tokenizing the same rows again, with the same examples, rows table and checkpoint fingerprint as without
the cache; rows it does not find are tokenized, and a part of the cache that is not what its name says is not
trusted."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest

from assets.common.models.chat_template import read_chat_template
from assets.common.models.token_cache import TokenizedRowsCache
from assets.mixture.tokens import CachedTokenCounts
from tests.training.test_train_rows import mixture
from training.checkpoints import run_fingerprint
from training.config import TrainConfig
from training.dataset import TokenizedRows, tokenize_rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _arrow_bytes(dataset) -> bytes:
    """The dataset's Arrow table as written (schema, chunks and values)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, dataset.data.table.schema) as writer:
        writer.write_table(dataset.data.table)
    return sink.getvalue().to_pybytes()


def _assert_same(cold: TokenizedRows, warm: TokenizedRows) -> None:
    assert _bytes(warm.rows) == _bytes(cold.rows)  # train_rows.parquet: counts, outcomes, tokens_sha256
    for split in ("train", "validation"):
        assert getattr(warm, split).features == getattr(cold, split).features
        assert _arrow_bytes(getattr(warm, split)) == _arrow_bytes(getattr(cold, split))
    assert (run_fingerprint(Path("m"), TrainConfig(), "h", warm.train, warm.validation)
            == run_fingerprint(Path("m"), TrainConfig(), "h", cold.train, cold.validation))


def test_a_warm_cache_gives_the_cold_examples_rows_and_fingerprint_and_missing_rows_are_tokenized(
        tokenizer, tiny_model_dir, tmp_path, monkeypatch) -> None:
    rows, template = mixture().drop("quality_score"), read_chat_template(tiny_model_dir)
    root = tmp_path / "token_counts"
    monkeypatch.setattr("assets.mixture.tokens.COUNT_CHUNK_ROWS", 3)
    monkeypatch.setattr("assets.mixture.tokens.PART_ROWS", 5)  # 8 rows: parts of 6 and 2
    CachedTokenCounts(tiny_model_dir, root).table(rows["messages"].head(8))
    CachedTokenCounts(tiny_model_dir, root).table(rows["messages"].slice(8, 5))  # a third part; rows 13-15 never (13
    # holds row 3's messages: found by its content)
    cold = tokenize_rows(tokenizer, rows, template, max_length=256, chunk_rows=5)
    cache = TokenizedRowsCache(tiny_model_dir, root)
    warm = tokenize_rows(tokenizer, rows, template, max_length=256, chunk_rows=5, cache=cache, cache_window_rows=10)
    assert len(cache.parts()) == 3 and cache.skipped == []
    assert (cold.rows_from_cache, warm.rows_from_cache) == (0, 14)
    _assert_same(cold, warm)


def test_a_part_that_is_not_what_its_name_says_is_not_trusted_and_is_counted_again(
        tokenizer, tiny_model_dir, tmp_path) -> None:
    rows, template = mixture().drop("quality_score"), read_chat_template(tiny_model_dir)
    root = tmp_path / "token_counts"
    cache = TokenizedRowsCache(tiny_model_dir, root)
    CachedTokenCounts(tiny_model_dir, root).table(rows["messages"])
    (part,) = cache.parts()
    kept = pl.read_parquet(part)  # still valid Parquet, other ids (each row's first token dropped): not its bytes
    kept.with_columns(pl.col("input_ids").list.slice(1), pl.col("assistant_masks").list.slice(1)).write_parquet(part)
    (part.parent / f"{'0' * 16}.parquet").write_bytes(b"PAR1 not a parquet file")
    cold = tokenize_rows(tokenizer, rows, template, max_length=256, chunk_rows=5)
    warm = tokenize_rows(tokenizer, rows, template, max_length=256, chunk_rows=5, cache=cache)
    assert warm.rows_from_cache == 0 and len(cache.skipped) == 2
    assert any("do not hash to its name" in reason for reason in cache.skipped)
    _assert_same(cold, warm)
    recount = CachedTokenCounts(tiny_model_dir, root)  # the mixture's next build counts those rows again
    recount.table(rows["messages"])
    assert recount.rows_counted == rows["messages"].n_unique() and len(recount.cache.skipped) == 2
    again = tokenize_rows(tokenizer, rows, template, max_length=256, chunk_rows=5, cache=cache)
    assert again.rows_from_cache == rows.height
    _assert_same(cold, again)


def test_a_run_reads_the_mixture_cache_and_writes_the_cold_runs_rows_and_lineage(tiny_model_dir, tmp_path) -> None:
    """Through the shared entry point (what `sft_model` calls): the same train_rows.parquet and lineage."""
    import json

    from training.continual import ContinualConfig
    from training.run import run_training

    rows, root = mixture(6, 2), tmp_path / "token_counts"
    CachedTokenCounts(tiny_model_dir, root).table(rows["messages"])
    config = TrainConfig(max_steps=1, per_device_train_batch_size=4, max_length=256, early_stopping_patience=0)
    base = {"path": str(tiny_model_dir), "content_hash": "base-hash"}
    runs, logs = {}, {}
    for name, cache in (("cold", None), ("warm", root)):
        logs[name] = []
        runs[name] = run_training(base, rows, config, ContinualConfig(), tmp_path / name, "tiny", data_hash="d",
                                  log=logs[name].append, token_cache=cache).result
    assert f"token cache {TokenizedRowsCache(tiny_model_dir, root).folder}: 8 of 8 rows read" in "\n".join(logs["warm"])
    assert runs["warm"].train_rows_path.read_bytes() == runs["cold"].train_rows_path.read_bytes()
    lineage = {name: _untimed(json.loads(run.lineage_path.read_text())) for name, run in runs.items()}
    assert lineage["warm"] == lineage["cold"] and lineage["cold"]["training"]["examples"]["train"] == 5


def _untimed(value):
    """``value`` without what differs between any two runs: durations, rates, peak and free memory."""
    timed = ("runtime", "seconds", "per_second", "peak_rss", "available_gb")
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not any(t in k for t in timed)}
    return [_untimed(v) for v in value] if isinstance(value, list) else value
