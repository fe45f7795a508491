"""Token counts with the student's tokenizer and chat template (no Dagster here): what a row costs in training
(every token of the rendered conversation) and what is trained (assistant tokens and their end-of-turn token), as
``training`` masks them.

Counting is the mixture's one slow step (rows are tokenized in batches, on all cores: see
:func:`~training.masking.tokenize_conversations`), so :class:`CachedTokenCounts` keeps every row it tokenizes in a
:class:`~assets.common.models.token_cache.TokenizedRowsCache`: keyed by the row's content under a folder named by
the tokenizer's identity (:func:`tokenizer_identity`), its counts and also its token ids, assistant masks and token
digest, which training reads instead of tokenizing the row again (:func:`training.dataset.tokenize_rows`). A
rebuild counts only rows it has not seen; the counts are the same as counting every row (a 64-bit collision between
two different rows' messages, odds about 3e-8 at a million rows, would give one row the other's count; training
matches rows on 128 bits). Each build names its tokenizer's folder in ``<cache_root>/IN_USE.json``: retention
(``--caches``) removes the other tokenizers' folders (:mod:`~assets.common.data.caches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import polars as pl

from assets.common.data.caches import record_in_use
from assets.common.models.chat_template import read_chat_template
from assets.common.models.token_cache import PART_ROWS, SCHEMA, TokenizedRowsCache, row_keys, tokenizer_identity
from training.masking import TokenizedConversation, assistant_end_of_turn, token_digest, tokenize_conversations

__all__ = ["COUNT_CHUNK_ROWS", "CachedTokenCounts", "StudentTokenCounter", "student_token_counter",
           "tokenizer_identity"]


COUNT_CHUNK_ROWS = 2_000  # conversations tokenized together (their token lists held at once)


class StudentTokenCounter:
    """messages -> (tokens, trainable tokens) under a model directory's tokenizer and chat template; :meth:`many`
    counts a list of conversations in batches (:func:`~training.masking.tokenize_conversations`), with the counts
    of one by one."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.template = read_chat_template(model_dir)
        self.end_of_turn = assistant_end_of_turn(self.tokenizer, self.template)

    def __call__(self, messages: Sequence[dict]) -> tuple[int, int]:
        return self.many([messages])[0]

    def many(self, conversations: Sequence[Sequence[dict]]) -> list[tuple[int, int]]:
        return [(len(t.input_ids), sum(t.assistant_masks)) for start in range(0, len(conversations), COUNT_CHUNK_ROWS)
                for t in self.tokenize(conversations[start:start + COUNT_CHUNK_ROWS])]

    def tokenize(self, conversations: Sequence[Sequence[dict]]) -> list[TokenizedConversation]:
        """One batch of conversations tokenized (:func:`~training.masking.tokenize_conversations`), in order."""
        return tokenize_conversations(self.tokenizer, conversations, self.template, self.end_of_turn)


def student_token_counter(model_dir: str | Path) -> StudentTokenCounter:
    """messages -> (tokens, trainable tokens) under the model directory's tokenizer and chat template."""
    return StudentTokenCounter(model_dir)


class CachedTokenCounts:
    """A student token counter (per row, as :func:`student_token_counter`) with :meth:`table`: the counts of a whole
    ``messages`` column, reusing every row kept under ``cache_root`` for this tokenizer and keeping the new ones
    (counts, token ids, masks and digests). The tokenizer is loaded only when a row has to be tokenized."""

    def __init__(self, model_dir: str | Path, cache_root: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.cache = TokenizedRowsCache(model_dir, cache_root)
        self.folder = self.cache.folder
        self.rows_counted = 0
        self.rows_reused = 0

    @cached_property
    def _count(self) -> StudentTokenCounter:
        return student_token_counter(self.model_dir)

    def __call__(self, messages: Sequence[dict]) -> tuple[int, int]:
        return self._count(messages)

    def table(self, messages: pl.Series) -> pl.DataFrame:
        """``tokens`` and ``trainable`` (Int64) of every row of ``messages``, in order."""
        record_in_use(self.folder.parent, [self.folder.name])  # retention keeps this tokenizer's rows, not others'
        keys = row_keys(messages)
        known = self.cache.counts()
        found = keys.join(known, on="row_hash", how="left", maintain_order="left")
        todo = (found.with_row_index("position").filter(pl.col("tokens").is_null())
                .unique("row_hash", keep="first", maintain_order=True))
        if todo.height:
            new = self._tokenize(messages.gather(todo["position"]), todo)
            found = keys.join(pl.concat([known, new]), on="row_hash", how="left", maintain_order="left")
        self.rows_counted += todo.height
        self.rows_reused += messages.len() - todo.height
        return found.select("tokens", "trainable")

    def _tokenize(self, messages: pl.Series, keys: pl.DataFrame) -> pl.DataFrame:
        """Tokenize ``messages`` (keys: their ``row_keys``), keep every row in parts of :data:`PART_ROWS` rows
        (only a part's tokens are held at once), and return their counts."""
        counts, part, held, done = [], [], 0, 0
        for start in range(0, messages.len(), COUNT_CHUNK_ROWS):  # a chunk's messages as Python objects at a time
            tokenized = self._count.tokenize(messages.slice(start, COUNT_CHUNK_ROWS).to_list())
            rows = pl.DataFrame({
                "row_hash": keys["row_hash"].slice(done, len(tokenized)),
                "messages_hash": keys["messages_hash"].slice(done, len(tokenized)),
                "tokens": [len(t.input_ids) for t in tokenized],
                "trainable": [sum(t.assistant_masks) for t in tokenized],
                "input_ids": [t.input_ids for t in tokenized],
                "assistant_masks": [t.assistant_masks for t in tokenized],
                "tokens_sha256": [token_digest(t.input_ids, t.assistant_masks) for t in tokenized],
            }, schema=SCHEMA)
            done += len(tokenized)
            counts.append(rows.select("row_hash", "tokens", "trainable"))
            part.append(rows)
            held += rows.height
            if held >= PART_ROWS or done == messages.len():
                self.cache.keep(pl.concat(part))
                part, held = [], 0
        return pl.concat(counts)
