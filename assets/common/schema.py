"""The conversation table every stage reads and writes (no Dagster here).

One row is one generated conversation. ``messages`` is a list of ``{role, content}`` structs in chat-template
order (an optional leading ``system`` message, then alternating ``user``/``assistant``). The provenance
columns say exactly how the row was produced; stages after generation keep every column and may add their own.
"""

from __future__ import annotations

import polars as pl

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})

CONVERSATION_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.Utf8,  # "<shard>-<row_index>", unique across shards
    "messages": pl.List(MESSAGE),
    "finish_reasons": pl.List(pl.Utf8),  # one per generated message (user and assistant): "stop" | "length"
    "num_turns": pl.Int64,  # user/assistant exchanges
    # provenance
    "shard": pl.Int64,
    "row_index": pl.Int64,
    "seed": pl.Int64,
    "generator_model": pl.Utf8,
    "generator_model_hash": pl.Utf8,
    "pre_query_template_hash": pl.Utf8,
    "sampling_params": pl.Utf8,  # JSON: {"instruction": {...}, "response": {...}}
    "engine": pl.Utf8,
    "engine_version": pl.Utf8,
}

REJECTED_REASON = "reason"  # column added to rejected-row tables: why the row was removed
REJECTED_DETAIL = "detail"  # free text: e.g. the duplicate's id, the matched n-gram


class SchemaError(ValueError):
    """A table is missing a column or has one of the wrong type."""


def validate_conversations(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Check ``df`` has every conversation column with its type; ``source`` names the file in errors."""
    for name, dtype in CONVERSATION_SCHEMA.items():
        if name not in df.columns:
            raise SchemaError(f"{source}: missing column '{name}' (expected {dtype}); columns are {df.columns}")
        if df.schema[name] != dtype:
            raise SchemaError(f"{source}: column '{name}' has type {df.schema[name]}, expected {dtype}")
    return df


def empty_conversations() -> pl.DataFrame:
    return pl.DataFrame(schema=CONVERSATION_SCHEMA)


def role_texts(role: str) -> pl.Expr:
    """List of the contents of every message with ``role``, per row."""
    return (
        pl.col("messages")
        .list.eval(pl.element().filter(pl.element().struct.field("role") == role).struct.field("content"))
        .alias(f"{role}_texts")
    )


def conversation_text() -> pl.Expr:
    """The user and assistant turns of a conversation joined by blank lines (system prompts excluded)."""
    return (
        pl.col("messages")
        .list.eval(pl.element().filter(pl.element().struct.field("role") != "system").struct.field("content"))
        .list.join("\n\n")
        .alias("text")
    )
