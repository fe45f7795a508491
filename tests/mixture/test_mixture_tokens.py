"""Token targets counted with a real tokenizer and chat template (the tiny test model's)."""

import polars as pl
import pytest
from transformers import AutoTokenizer

from assets.common.chat_template import read_chat_template
from assets.common.schema import CONVERSATION_SCHEMA
from assets.mixture.core import MixtureConfig, build_mixture
from assets.mixture.tokens import student_token_counter
from tests.mixture.test_mixture_core import conversation, with_labels


def _pool() -> pl.DataFrame:
    gen = [conversation(0, i, f"Solve for x: {i}x + 3 = 20.", "The answer is " + "a step. " * (i % 7 + 1))
           for i in range(200)]
    user = [conversation(9, i, f"Write a short poem about harbour {i}.", "Waves " * (i % 30 + 20))
            for i in range(80)]
    frame = pl.DataFrame(gen + user, schema=CONVERSATION_SCHEMA)
    return with_labels(frame, source=[None] * 200 + ["mine"] * 80)


def test_tokens_are_counted_with_the_template_and_shares_hold_in_tokens(tiny_model_dir) -> None:
    count = student_token_counter(tiny_model_dir)
    result = build_mixture(_pool(), MixtureConfig(unit="tokens", source_shares={"mine": 0.25}), count_tokens=count)
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
    assert abs(mine - 0.25 * sum(tokens)) <= max(0.01 * sum(tokens), longest)
    assert result.manifest["sources"]["mine"]["tokens_share"] == pytest.approx(mine / sum(tokens))
    assert 0 < result.manifest["train_trainable_tokens"] < result.manifest["train_tokens"] == sum(tokens)
