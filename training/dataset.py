"""Training rows to tokenized datasets, each example keeping its row's conversation_id and split (no Dagster here).

A run's data is one table: every row with its ``conversation_id``, ``split`` ("train", "validation", or
"rehearsal": a previous model's row trained on again in continual mode), ``messages`` and provenance
(:data:`TRAIN_ROW_COLUMNS`). :func:`tokenize_rows` renders each row with the model's own chat template (assistant-only
masks, see :mod:`training.masking`) and returns

- the training examples (train + rehearsal rows) and the validation examples, as ``datasets.Dataset``s of
  ``input_ids``, ``assistant_masks``, ``conversation_id`` and ``split``;
- the table again, with what became of each row: ``num_tokens``, ``status`` ("trained", "validated" or "dropped"),
  ``drop_reason`` (e.g. "longer than max_length=2048 tokens (2391)") and ``tokens_sha256`` (a digest of the row's
  token ids and loss mask, so the shipped tokenizer and template can be shown to reproduce what was trained: see
  :func:`token_mismatches`). It is the model directory's
  ``train_rows.parquet``: exactly the rows trained and validated on, and the ones dropped, with why.

A row longer than ``max_length`` is dropped, never truncated: truncation would cut the end-of-turn token the model
must learn to stop on. "trained" means in the training set handed to the trainer (a run stopped early may not have
reached every row of its last epoch).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from assets.common.models.token_cache import TokenizedRowsCache, row_keys
from training.masking import assistant_end_of_turn, token_digest, tokenize_conversations

TRAIN_ROWS_FILE = "train_rows.parquet"
# What a model directory keeps of every row it saw: provenance back to the generation shard and row (or the user
# source and its own id), the task and split, and the messages themselves (so a later continual run can rehearse
# them without the old data root).
TRAIN_ROW_COLUMNS = ("conversation_id", "source", "source_id", "shard", "row_index", "seed", "generator_model",
                     "generator_model_hash", "pre_query_template_hash", "task", "split", "messages")
REQUIRED_ROW_COLUMNS = ("conversation_id", "split", "messages")
TRAIN_SPLIT, VALIDATION_SPLIT, REHEARSAL_SPLIT = "train", "validation", "rehearsal"
TRAINED_SPLITS = (TRAIN_SPLIT, REHEARSAL_SPLIT)  # rows a model is trained on (validation rows are not)
# What became of each row (train_rows.parquet, after the row's own columns)
OUTCOME_COLUMNS = ("num_tokens", "status", "drop_reason", "tokens_sha256")
TRAINED, VALIDATED, DROPPED = "trained", "validated", "dropped"
TOKENIZE_CHUNK_ROWS = 2_000  # rows tokenize_rows holds as Python lists at once
CACHE_WINDOW_ROWS = 200_000  # rows tokenize_rows reads from a token cache at once (their tokens as Arrow, ~2 KB a row)


@dataclass(frozen=True)
class TokenizedRows:
    train: Any  # datasets.Dataset: input_ids, assistant_masks, conversation_id, split (train + rehearsal rows kept)
    validation: Any  # datasets.Dataset, same columns (validation rows kept)
    rows: pl.DataFrame  # every input row, in order, with OUTCOME_COLUMNS: the model's train_rows.parquet
    rows_from_cache: int = 0  # rows read from the token cache instead of tokenized (the same result either way)

    def dropped(self, splits: Sequence[str] = (*TRAINED_SPLITS, VALIDATION_SPLIT)) -> int:
        """Rows of ``splits`` dropped (longer than max_length)."""
        return self.rows.filter((pl.col("status") == DROPPED) & pl.col("split").is_in(list(splits))).height


def check_rows(rows: pl.DataFrame, splits: Sequence[str] = (*TRAINED_SPLITS, VALIDATION_SPLIT),
               what: str = "training rows") -> None:
    """Raise ValueError unless ``rows`` has the required columns and only the given splits."""
    missing = [c for c in REQUIRED_ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{what}: no column(s) {missing} (columns: {rows.columns}); expected "
                         f"{list(REQUIRED_ROW_COLUMNS)}: a conversation id, its split and its messages")
    unknown = sorted(set(rows["split"].unique().to_list()) - set(splits), key=str)
    if unknown:
        raise ValueError(f"{what}: unknown split value(s) {unknown} in column `split`; expected one of {list(splits)}")


def tokenize_rows(tokenizer: Any, rows: pl.DataFrame, chat_template: str, max_length: int,
                  chunk_rows: int = TOKENIZE_CHUNK_ROWS, cache: TokenizedRowsCache | None = None,
                  cache_window_rows: int = CACHE_WINDOW_ROWS) -> TokenizedRows:
    """Tokenize every row (see the module docstring); rows longer than ``max_length`` tokens are marked dropped.

    ``chunk_rows`` rows at a time: a chunk's token ids live as Python lists (~40 KB a row: an int object per token)
    only until they are Arrow arrays of its examples, so memory holds the Arrow data of every row, not the lists.
    ``cache``: rows tokenized before under this same tokenizer and template (the mixture's token counts keep them,
    :class:`~assets.common.models.token_cache.TokenizedRowsCache`, which must be the folder of the model directory
    ``tokenizer`` and ``chat_template`` were read from): the rows found there are read, not tokenized, with the same
    results; the others are tokenized. The cache is read ``cache_window_rows`` rows at a time (a multiple of
    ``chunk_rows``): only their cached tokens are held, beside the examples made so far."""
    check_rows(rows)
    end_of_turn = assistant_end_of_turn(tokenizer, chat_template)
    keys = row_keys(rows["messages"]) if cache is not None and rows.height else None
    window = max(1, cache_window_rows // chunk_rows) * chunk_rows
    known, reused = None, 0
    lengths, status, digests, train, validation = [], [], [], [], []
    for start in range(0, max(rows.height, 1), chunk_rows):  # an empty table: one empty chunk
        chunk = rows.slice(start, chunk_rows)
        if keys is not None and start % window == 0:  # the next window's cached rows (the last window's freed)
            known = None
            known = cache.lookup(keys.slice(start, window))
            reused += known.height - known["tokens_sha256"].null_count()
        tokenized = _tokenized(tokenizer, chunk["messages"],
                               None if known is None else known.slice(start % window, chunk_rows), chat_template,
                               end_of_turn)
        n_tokens = [len(t.input_ids) for t in tokenized]
        outcome = [DROPPED if n > max_length else VALIDATED if split == VALIDATION_SPLIT else TRAINED
                   for n, split in zip(n_tokens, chunk["split"].to_list(), strict=True)]
        lengths += n_tokens
        status += outcome
        digests += [t.tokens_sha256 for t in tokenized]
        train.append(_examples(tokenized, chunk, outcome, TRAINED))
        validation.append(_examples(tokenized, chunk, outcome, VALIDATED))
    table = rows.with_columns(
        pl.Series("num_tokens", lengths, dtype=pl.Int64),
        pl.Series("status", status, dtype=pl.Utf8),
        pl.Series("drop_reason", [f"longer than max_length={max_length} tokens ({n})" if s == DROPPED else None
                                  for n, s in zip(lengths, status, strict=True)], dtype=pl.Utf8),
        pl.Series("tokens_sha256", digests, dtype=pl.Utf8),
    )
    return TokenizedRows(train=_concatenate(train), validation=_concatenate(validation), rows=table,
                         rows_from_cache=reused)


class _Example(NamedTuple):
    input_ids: list[int]
    assistant_masks: list[int]
    tokens_sha256: str


def _tokenized(tokenizer: Any, messages: pl.Series, known: pl.DataFrame | None, chat_template: str,
               end_of_turn: str) -> list[_Example]:
    """A chunk's rows tokenized: those ``known`` has (the cache's, in row order; null: not found) as kept there, the
    others by :func:`~training.masking.tokenize_conversations`."""
    if known is None:
        found: list[_Example | None] = [None] * messages.len()
    else:
        found = [None if digest is None else _Example(ids, masks, digest) for ids, masks, digest
                 in zip(*(known[c].to_list() for c in ("input_ids", "assistant_masks", "tokens_sha256")), strict=True)]
    todo = [i for i, example in enumerate(found) if example is None]
    fresh = tokenize_conversations(tokenizer, messages.gather(todo).to_list() if todo else [], chat_template,
                                   end_of_turn)
    for i, t in zip(todo, fresh, strict=True):
        found[i] = _Example(t.input_ids, t.assistant_masks, token_digest(t.input_ids, t.assistant_masks))
    return found


@dataclass(frozen=True)
class TokenCheck:
    rows: int  # trained and validated rows re-tokenized
    mismatched: int
    examples: list[dict]  # the first mismatches: conversation_id, trained and served token counts


def token_mismatches(model_dir: str | Path, limit: int = 5) -> TokenCheck:
    """Re-tokenize a model directory's trained and validated rows (``train_rows.parquet``) with the tokenizer and
    chat template the directory ships, as a server would, and compare with the token digests recorded in training.

    Any mismatch means the shipped tokenizer or template does not format conversations as they were trained."""
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import read_chat_template

    model_dir = Path(model_dir)
    rows = pl.read_parquet(model_dir / TRAIN_ROWS_FILE).filter(pl.col("status") != DROPPED)
    if "tokens_sha256" not in rows.columns:
        raise ValueError(f"{model_dir / TRAIN_ROWS_FILE}: no tokens_sha256 column (trained before token digests "
                         "were recorded); retrain from base to get one")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = read_chat_template(model_dir)
    end_of_turn = assistant_end_of_turn(tokenizer, template)
    mismatches = []
    for start in range(0, rows.height, TOKENIZE_CHUNK_ROWS):
        chunk = rows.slice(start, TOKENIZE_CHUNK_ROWS)
        tokenized = tokenize_conversations(tokenizer, chunk["messages"].to_list(), template, end_of_turn)
        for row, again in zip(chunk.select("conversation_id", "num_tokens", "tokens_sha256").iter_rows(named=True),
                              tokenized, strict=True):
            if token_digest(again.input_ids, again.assistant_masks) != row["tokens_sha256"]:
                mismatches.append({"conversation_id": row["conversation_id"], "trained_tokens": row["num_tokens"],
                                   "served_tokens": len(again.input_ids)})
    return TokenCheck(rows=rows.height, mismatched=len(mismatches), examples=mismatches[:limit])


def _examples(tokenized: Sequence, table: pl.DataFrame, outcome: Sequence[str], status: str):
    """The ``datasets.Dataset`` of the rows of ``table`` whose ``outcome`` is ``status``, in table order."""
    from datasets import Dataset

    keep = [i for i, s in enumerate(outcome) if s == status]
    ids, splits = table["conversation_id"].to_list(), table["split"].to_list()
    return Dataset.from_dict({
        "input_ids": [tokenized[i].input_ids for i in keep],
        "assistant_masks": [tokenized[i].assistant_masks for i in keep],
        "conversation_id": [ids[i] for i in keep],
        "split": [splits[i] for i in keep],
    })


def _concatenate(parts: Sequence):
    """The chunks' datasets as one (its Arrow table in several chunks: nothing is copied). Empty ones are left out (a
    dataset made of no rows has no types to concatenate with)."""
    from datasets import concatenate_datasets

    filled = [part for part in parts if len(part)] or list(parts[:1])
    return filled[0] if len(filled) == 1 else concatenate_datasets(filled)


def train_rows_table(rows: pl.DataFrame, rehearsal: pl.DataFrame | None = None) -> pl.DataFrame:
    """A run's rows: its data set's rows (the known columns present) followed by the rehearsal rows (if any)."""
    table = rows.select([c for c in TRAIN_ROW_COLUMNS if c in rows.columns])
    if rehearsal is not None and rehearsal.height:
        table = pl.concat([table, rehearsal], how="diagonal_relaxed")
    return table


def content_conversation_ids(messages: Iterable[Any]) -> list[str]:
    """Ids for rows that have none (standalone CLI data): a hash of the messages, so equal conversations match."""
    return ["msg-" + hashlib.sha256(json.dumps(m, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
            for m in messages]


def conversation_rows(train: Sequence[Sequence[dict]], validation: Sequence[Sequence[dict]] = ()) -> pl.DataFrame:
    """A training table from bare conversations: split train / validation, ids from their content."""
    messages = [list(m) for m in (*train, *validation)]
    return pl.DataFrame({
        "conversation_id": pl.Series(content_conversation_ids(messages), dtype=pl.Utf8),
        "split": [TRAIN_SPLIT] * len(train) + [VALIDATION_SPLIT] * len(validation),
        "messages": messages,
    })
