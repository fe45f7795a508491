"""train_rows.parquet records a digest of every row's trained tokens; the model directory's own tokenizer and
template must reproduce them (the `served_format_matches_training` check), and a changed template must not."""

import shutil

import polars as pl
from transformers import AutoTokenizer

from assets.common.models.chat_template import read_chat_template
from training.dataset import TRAIN_ROWS_FILE, conversation_rows, token_mismatches, tokenize_rows

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6"}],
]


def model_dir_with_rows(tiny_model_dir, tmp_path, max_length=512):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = conversation_rows(CONVERSATIONS[:1], CONVERSATIONS[1:])
    tokenized = tokenize_rows(tokenizer, rows, read_chat_template(model_dir), max_length)
    tokenized.rows.write_parquet(model_dir / TRAIN_ROWS_FILE)
    return model_dir, tokenized.rows


def test_the_shipped_tokenizer_and_template_reproduce_the_trained_tokens(tiny_model_dir, tmp_path):
    model_dir, rows = model_dir_with_rows(tiny_model_dir, tmp_path)
    assert rows["tokens_sha256"].str.len_chars().to_list() == [64, 64]
    check = token_mismatches(model_dir)
    assert (check.rows, check.mismatched, check.examples) == (2, 0, [])


def test_a_changed_template_is_caught_row_by_row(tiny_model_dir, tmp_path):
    model_dir, rows = model_dir_with_rows(tiny_model_dir, tmp_path)
    template = read_chat_template(model_dir)
    assert "<|im_start|>" in template
    (model_dir / "chat_template.jinja").write_text(template.replace("<|im_start|>", "<|im_start|> "))
    check = token_mismatches(model_dir)
    assert check.rows == 2 and check.mismatched == 2
    assert {e["conversation_id"] for e in check.examples} == set(rows["conversation_id"])
    assert all(e["served_tokens"] != e["trained_tokens"] for e in check.examples)


def test_dropped_rows_are_not_compared(tiny_model_dir, tmp_path):
    model_dir, rows = model_dir_with_rows(tiny_model_dir, tmp_path, max_length=20)
    kept = rows.filter(pl.col("status") != "dropped").height
    assert kept < 2 and token_mismatches(model_dir).rows == kept
