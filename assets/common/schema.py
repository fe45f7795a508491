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


ROLES = ("system", "user", "assistant")

_ROW, _POS, _SYSTEM, _PROBLEM = "__schema_row", "__schema_pos", "__schema_system", "__schema_problem"
# Per-conversation problems, then per-message ones in the order they are looked for (a message's first is reported).
_NO_MESSAGES, _SYSTEM_ONLY = -2, -1
_NULL_MESSAGE, _BAD_ROLE, _ORDER, _NULL_CONTENT, _BLANK_CONTENT = 1, 2, 3, 4, 5


class SchemaError(ValueError):
    """A table is not a conversation table: the message names the table, the column or the row (index and
    conversation_id) and the field, and what was expected."""


def validate_conversations(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Check that ``df`` is a conversation table and return it; ``source`` names the table (asset, file) in errors.

    Columns: every column of :data:`CONVERSATION_SCHEMA` with its type (stages may add others). Rows: at least one
    message besides a system message; each a ``{role, content}`` struct with a role in :data:`ROLES`, in the order
    optional leading ``system``, then ``user`` and ``assistant`` alternating from ``user``; every content a
    non-blank string. The checks are polars expressions over all rows at once; only the first bad row is turned
    into a message (with the number of bad rows).
    """
    for name, dtype in CONVERSATION_SCHEMA.items():
        if name not in df.columns:
            raise SchemaError(f"{source}: missing column '{name}' (expected type {dtype}); columns are {df.columns}")
        if df.schema[name] != dtype:
            raise SchemaError(f"{source}: column '{name}' has type {df.schema[name]}, expected {dtype}")
    problems = _row_problems(df)
    if problems.height:
        row, position, role, expected, code = problems.row(0)
        conversation_id = df["conversation_id"][row]
        bad_rows = problems[_ROW].n_unique()
        raise SchemaError(f"{source}: row {row} (conversation_id {conversation_id!r}): "
                          f"{_describe(code, position, role, expected)}; {bad_rows} of {df.height} rows fail the "
                          "conversation schema (the first is shown)")
    return df


def _row_problems(df: pl.DataFrame) -> pl.DataFrame:
    """One row per bad message (or conversation without messages): row, message position, role, expected role
    and problem code, in row then message order."""
    indexed = df.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW),
        pl.col("messages"),
        pl.int_ranges(0, pl.col("messages").list.len()).alias(_POS),
        (pl.col("messages").list.first().struct.field("role") == "system").fill_null(False).alias(_SYSTEM),
    )
    length = pl.col("messages").list.len().fill_null(0)
    no_messages = indexed.filter((length == 0) | ((length == 1) & pl.col(_SYSTEM))).select(
        _ROW, pl.lit(None, pl.Int64).alias(_POS), pl.lit(None, pl.Utf8).alias("role"),
        pl.lit(None, pl.Utf8).alias("expected"),
        pl.when(length == 0).then(_NO_MESSAGES).otherwise(_SYSTEM_ONLY).cast(pl.Int64).alias(_PROBLEM))
    role, content = pl.col("messages").struct.field("role"), pl.col("messages").struct.field("content")
    turn = pl.col(_POS) - pl.col(_SYSTEM).cast(pl.Int64)
    expected = (pl.when(turn < 0).then(pl.lit("system")).when(turn % 2 == 0).then(pl.lit("user"))
                .otherwise(pl.lit("assistant")))
    problem = (pl.when(pl.col("messages").is_null()).then(_NULL_MESSAGE)
               .when(~role.is_in(ROLES).fill_null(False)).then(_BAD_ROLE)
               .when(role != expected).then(_ORDER)
               .when(content.is_null()).then(_NULL_CONTENT)
               .when(content.str.strip_chars() == "").then(_BLANK_CONTENT))
    messages = (indexed.explode("messages", _POS).filter(pl.col(_POS).is_not_null())
                .select(_ROW, _POS, role.alias("role"), expected.alias("expected"),
                        problem.cast(pl.Int64).alias(_PROBLEM))
                .filter(pl.col(_PROBLEM).is_not_null()))
    return pl.concat([no_messages, messages]).sort(_ROW, _POS, nulls_last=False, maintain_order=True)


def _describe(code: int, position: int | None, role: str | None, expected: str | None) -> str:
    field = f"messages[{position}]"
    return {
        _NO_MESSAGES: "messages: empty or null (expected at least one {role, content} message)",
        _SYSTEM_ONLY: "messages: only a system message (expected a user message after it)",
        _NULL_MESSAGE: f"{field}: null (expected a {{role, content}} message)",
        _BAD_ROLE: f"{field}.role: {role!r} is not one of {'/'.join(ROLES)}",
        _ORDER: f"{field}.role: {role!r} where {expected!r} is expected (an optional leading system message, then "
                "user and assistant alternating, starting with user)",
        _NULL_CONTENT: f"{field}.content: null (expected a non-empty string)",
        _BLANK_CONTENT: f"{field}.content: empty or blank (expected a non-empty string)",
    }[code]


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
