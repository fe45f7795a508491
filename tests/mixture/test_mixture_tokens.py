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
