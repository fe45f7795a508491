"""Token targets counted with a real tokenizer and chat template (the tiny test model's)."""

import json

import polars as pl
import pytest
from transformers import AutoTokenizer

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.models.chat_template import read_chat_template
from assets.mixture.core import MixtureConfig, build_mixture
from assets.mixture.tokens import student_token_counter
from assets.user_sources.core import UserSourceConfig, read_sources
from tests.mixture.test_mixture_core import conversation


def _pool(tmp_path) -> pl.DataFrame:
    """200 generated rows and a user JSONL source of 80 longer rows, read as the user_sft_sources stage reads it."""
    gen = [conversation(0, i, f"Solve for x: {i}x + 3 = 20.", "The answer is " + "a step. " * (i % 7 + 1))
           for i in range(200)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Write a short poem about harbour {i}."},
        {"role": "assistant", "content": "Waves " * (i % 30 + 20)}]}) + "\n" for i in range(80)))
    user = read_sources([UserSourceConfig(name="mine", path=str(path))])
    return pl.concat([pl.DataFrame(gen, schema=CONVERSATION_SCHEMA), user], how="diagonal_relaxed")


def test_a_user_jsonl_source_at_25_percent_of_tokens_lands_within_1_percent(tiny_model_dir, tmp_path) -> None:
    count = student_token_counter(tiny_model_dir)
    cfg = MixtureConfig(unit="tokens", source_shares={"mine": 0.25})
    result = build_mixture(_pool(tmp_path), cfg, count_tokens=count)
    train = result.mixture.filter(pl.col("split") == "train")
    # recount with the tokenizer and template directly, not through the mixture's counter
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = read_chat_template(tiny_model_dir)
    texts = [tokenizer.apply_chat_template(m, chat_template=template, tokenize=False)
             for m in train["messages"].to_list()]
    tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    assert tokens == train["mix_tokens"].to_list()
    mine = sum(t for t, s in zip(tokens, train["source"].to_list(), strict=True) if s == "mine")
    longest = max(tokens)
    assert abs(mine / sum(tokens) - 0.25) <= max(0.01, longest / sum(tokens))  # 1 point, or one conversation
    assert train.filter(pl.col("source") == "mine").height < 80  # the share binds: not simply every user row
    assert result.manifest["sources"]["mine"]["tokens_share"] == pytest.approx(mine / sum(tokens))
    assert 0 < result.manifest["train_trainable_tokens"] < result.manifest["train_tokens"] == sum(tokens)


def test_counting_in_batches_gives_the_per_row_counts(tiny_model_dir, monkeypatch) -> None:
    """The counter tokenizes conversations in batches (several batches here); every count is the one the per-row
    path gave: all tokens, and the trained ones."""
    from assets.mixture import tokens
    from tests.training.test_masking import reference_tokenize_conversation, varied_conversations

    monkeypatch.setattr(tokens, "COUNT_CHUNK_ROWS", 7)
    count = student_token_counter(tiny_model_dir)
    conversations = varied_conversations(30, seed=3)
    expected = [reference_tokenize_conversation(count.tokenizer, m, count.template, count.end_of_turn)
                for m in conversations]
    expected = [(len(t.input_ids), sum(t.assistant_masks)) for t in expected]
    assert count.many(conversations) == expected
    assert [count(m) for m in conversations[:5]] == expected[:5]
    assert count.many([]) == []


def _frame_bytes(df: pl.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return buffer.getvalue()


def test_cached_counts_equal_counting_every_row_and_a_rebuild_counts_only_new_rows(tiny_model_dir, tmp_path) -> None:
    from assets.mixture.tokens import CachedTokenCounts

    pool = _pool(tmp_path)
    cfg = MixtureConfig(unit="tokens", source_shares={"mine": 0.25})
    cached = CachedTokenCounts(tiny_model_dir, tmp_path / "cache")
    first = build_mixture(pool, cfg, count_tokens=cached)
    plain = build_mixture(pool, cfg, count_tokens=student_token_counter(tiny_model_dir))
    assert _frame_bytes(first.mixture) == _frame_bytes(plain.mixture) and first.manifest == plain.manifest
    distinct = pool["messages"].n_unique()
    assert (cached.rows_counted, cached.rows_reused) == (distinct, pool.height - distinct)
    grown = pl.concat([pool, pool.head(5).with_columns(  # five new rows: same prompts, other answers
        pl.format("new-{}", "conversation_id").alias("conversation_id"),
        pl.col("messages").list.eval(pl.struct(pl.element().struct.field("role"),
                                               pl.element().struct.field("content") + " More.")))])
    rebuild = CachedTokenCounts(tiny_model_dir, tmp_path / "cache")
    again = build_mixture(grown, cfg, count_tokens=rebuild)
    assert (rebuild.rows_counted, rebuild.rows_reused) == (5, pool.height)
    assert _frame_bytes(again.mixture) == _frame_bytes(
        build_mixture(grown, cfg, count_tokens=student_token_counter(tiny_model_dir)).mixture)


def test_counts_are_kept_per_tokenizer(tiny_model_dir, tmp_path) -> None:
    import shutil

    from assets.mixture.tokens import tokenizer_identity

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other, ignore=shutil.ignore_patterns("*.safetensors"))
    assert tokenizer_identity(other) == tokenizer_identity(tiny_model_dir)  # the weights do not count
    (other / "chat_template.jinja").write_text((other / "chat_template.jinja").read_text() + "\n")
    assert tokenizer_identity(other) != tokenizer_identity(tiny_model_dir)
