"""User SFT sources: the three forms read into the conversation table, every bad row named by file:line: field,
provenance kept, and a content hash that follows the bytes."""

import json

import polars as pl
import pytest

from assets.common.data.schema import validate_conversations
from assets.user_sources.core import (
    USER_SHARD,
    UserSourceConfig,
    UserSourceError,
    read_source,
    read_sources,
    sources_hash,
)


def exchange(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question number {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_jsonl_messages_rows_keep_source_and_original_id(tmp_path):
    records = [{"id": f"q{i}", "messages": exchange(i)} for i in range(3)]
    records[1]["messages"] = [{"role": "system", "content": "Be brief."}, *records[1]["messages"],
                              {"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}]
    path = write_jsonl(tmp_path / "mine.jsonl", records)
    table = read_sources([UserSourceConfig(name="mine", path=path, id_column="id")])
    validate_conversations(table, "user rows")  # the conversation schema every stage checks
    assert table["conversation_id"].to_list() == ["user-mine-q0", "user-mine-q1", "user-mine-q2"]
    assert table["source"].unique().to_list() == ["mine"] and table["source_id"].to_list() == ["q0", "q1", "q2"]
    assert table["shard"].unique().to_list() == [USER_SHARD] and table["row_index"].to_list() == [0, 1, 2]
    assert table["num_turns"].to_list() == [1, 2, 1] and table["finish_reasons"][1].to_list() == ["stop"] * 4
    assert table["messages"][1].to_list()[0] == {"role": "system", "content": "Be brief."}


def test_instruction_response_columns_parquet_and_a_saved_dataset(tmp_path):
    import datasets

    rows = {"prompt": ["Name a colour.", "Name a fruit."], "answer": ["Blue.", "Pear."], "sys": ["", "Be terse."]}
    pl.DataFrame(rows).write_parquet(tmp_path / "pairs.parquet")
    datasets.Dataset.from_dict({"messages": [exchange(0), exchange(1)]}).save_to_disk(str(tmp_path / "saved"))
    table = read_sources([
        UserSourceConfig(name="pairs", path=str(tmp_path / "pairs.parquet"), instruction_column="prompt",
                         response_column="answer", system_column="sys"),
        UserSourceConfig(name="saved", path=str(tmp_path / "saved")),
    ])
    assert table["source"].to_list() == ["pairs", "pairs", "saved", "saved"]
    assert table["messages"][0].to_list() == [{"role": "user", "content": "Name a colour."},
                                              {"role": "assistant", "content": "Blue."}]
    assert table["messages"][1].to_list()[0] == {"role": "system", "content": "Be terse."}
    assert table["messages"][3].to_list() == exchange(1) and table["source_id"].to_list() == ["1", "2", "1", "2"]


@pytest.mark.parametrize(("bad", "expected"), [
    ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}], "messages[1].role: 'bot' is not one"),
    ([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}],
     "messages[1].role: 'user' where 'assistant' is expected"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}], "messages[1].content: '  '"),
    ([{"role": "user", "content": "Hi"}], "messages[0]: the conversation must end with an assistant turn"),
    ([], "messages: the conversation must end with an assistant turn"),
    ("not a list", "messages: expected a list"),
])
def test_a_bad_row_fails_naming_file_line_and_field(tmp_path, bad, expected):
    records = [{"messages": exchange(0)}, {"messages": exchange(1)}, {"messages": bad}, {"messages": exchange(3)}]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(UserSourceError) as error:
        read_source(UserSourceConfig(name="bad", path=path))
    assert str(error.value).startswith(f"{path}:3: {expected}"), str(error.value)


def test_mapped_column_errors_and_missing_fields_name_the_column(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"q": "Hi", "a": "Hello"}, {"q": "Hi", "a": ""},])
    with pytest.raises(UserSourceError, match=rf"{path}:2: a: ''"):
        read_source(UserSourceConfig(name="p", path=path, instruction_column="q", response_column="a"))
    with pytest.raises(UserSourceError, match=rf"{path}:1: messages: missing"):
        read_source(UserSourceConfig(name="p", path=path))
    (tmp_path / "broken.jsonl").write_text(json.dumps({"messages": exchange(0)}) + '\n{oops\n')
    with pytest.raises(UserSourceError, match=r"broken.jsonl:2: not valid JSON"):
        read_source(UserSourceConfig(name="p", path=str(tmp_path / "broken.jsonl")))


def test_config_errors():
    with pytest.raises(UserSourceError, match="reserved"):
        UserSourceConfig(name="generated", path="x.jsonl")
    with pytest.raises(UserSourceError, match="both"):
        UserSourceConfig(name="a", path="x.jsonl", instruction_column="q")
    with pytest.raises(UserSourceError, match="does not exist"):
        read_source(UserSourceConfig(name="a", path="/nonexistent/x.jsonl"))


def test_the_hash_follows_the_bytes(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"messages": exchange(0)}])
    source = UserSourceConfig(name="mine", path=path)
    first = sources_hash([source])
    assert sources_hash([source]) == first
    write_jsonl(tmp_path / "mine.jsonl", [{"messages": exchange(1)}])
    assert sources_hash([source]) != first
    assert sources_hash([UserSourceConfig(name="other", path=path)]) != sources_hash([source])
