"""Every bad input named: a corpus of malformed user files, built here, read through each reader of user files (SFT
sources, eval files, profiles, model directories). Each must fail with the reader's own error, naming the file and,
where the case has one, the line: the message starts with ``<file>:<line>: `` (or ``<file>: ``)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from assets.common.models.chat_template import TemplateError, read_chat_template
from assets.common.models.directories import ModelDirectoryError, validate_model_dir
from assets.common.models.templates import TemplateChoiceError, choose_template, read_chat_markers
from assets.eval_sets.core import EvalSetError, load_user_eval_file
from assets.user_sources.core import UserSourceConfig, UserSourceError, read_source
from pipelines.profiles import ProfileError, load_profile

EXCHANGE = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
GOOD_LINE = json.dumps({"messages": EXCHANGE}) + "\n"


def jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def parquet_bytes(frame: pl.DataFrame, tmp_path: Path) -> bytes:
    frame.write_parquet(tmp_path / "scratch.parquet")
    return (tmp_path / "scratch.parquet").read_bytes()


def good_parquet(tmp_path: Path) -> bytes:
    return parquet_bytes(pl.DataFrame({"messages": [EXCHANGE] * 40, "text": [f"eval text {i}" for i in range(40)]}),
                         tmp_path)


def write(path: Path, content: bytes | Callable[[Path], bytes]) -> Path:
    path.write_bytes(content(path.parent) if callable(content) else content)
    return path


# (name, file name, content, where the message must start after the path)
SFT_CORPUS = [
    ("invalid_utf8", "latin.jsonl", GOOD_LINE.encode() + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
     ":2: not valid UTF-8 (byte 0xe9 at column 47)"),
    ("utf16", "wide.jsonl", (GOOD_LINE * 2).encode("utf-16"), ":1: not valid UTF-8 (it is UTF-16"),
    ("cut_mid_line", "cut.jsonl", (GOOD_LINE * 2).encode()[:-20], ":2: not valid JSON"),
    ("truncated_parquet", "cut.parquet", lambda d: good_parquet(d)[:300], ": cannot read as Parquet"),
    ("content_a_number", "number.jsonl", jsonl({"messages": [EXCHANGE[0], {"role": "assistant", "content": 5}]}),
     ":1: messages[1].content: 5 (expected a non-empty string)"),
    ("messages_not_a_list", "flat.jsonl", jsonl({"messages": EXCHANGE}, {"messages": {"role": "user"}}),
     ":2: messages: expected a list"),
    ("role_bot", "bot.jsonl", jsonl({"messages": [EXCHANGE[0], {"role": "bot", "content": "Blue."}]}),
     ":1: messages[1].role: 'bot' is not one of"),
    ("starts_with_assistant", "backwards.jsonl", jsonl({"messages": EXCHANGE[::-1]}),
     ":1: messages[0].role: 'assistant' where 'user' is expected"),
    ("zero_bytes", "empty.jsonl", b"", ": user source 'bad' has no rows"),
    ("whitespace_only", "blank.jsonl", b"\n  \n\t\n", ": user source 'bad' has no rows"),
    ("parquet_zero_rows", "none.parquet", lambda d: parquet_bytes(pl.DataFrame({"messages": [EXCHANGE]}).head(0), d),
     ": user source 'bad' has no rows"),
    ("csv_named_jsonl", "table.jsonl", b"role,content\nuser,hi\n", ":1: not valid JSON"),
    ("json_array_named_json", "array.json", json.dumps([{"messages": EXCHANGE}], indent=None).encode(),
     ":1: a JSON array, expected an object (a JSON array file is not JSONL"),
    ("json_named_parquet", "text.parquet", jsonl({"messages": EXCHANGE}), ": cannot read as Parquet"),
]


@pytest.mark.parametrize(("name", "file", "content", "expected"), SFT_CORPUS, ids=[c[0] for c in SFT_CORPUS])
def test_a_malformed_sft_source_is_named(tmp_path, name, file, content, expected):
    path = write(tmp_path / file, content)
    with pytest.raises(UserSourceError) as error:
        read_source(UserSourceConfig(name="bad", path=str(path)))
    assert str(error.value).startswith(f"{path}{expected}"), str(error.value)


def test_a_directory_that_is_not_a_saved_dataset_is_named(tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "rows.jsonl").write_text(GOOD_LINE)
    with pytest.raises(UserSourceError) as error:
        read_source(UserSourceConfig(name="bad", path=str(folder)))
    assert str(error.value).startswith(f"{folder}: not a dataset saved with `datasets`' save_to_disk")
    assert "point path at the folder save_to_disk wrote" in str(error.value)


def test_an_empty_saved_dataset_is_an_error(tmp_path):
    import datasets

    empty = datasets.Dataset.from_dict({"messages": []}, features=datasets.Features({"messages": [
        {"role": datasets.Value("string"), "content": datasets.Value("string")}]}))
    empty.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserSourceError, match="has no rows"):
        read_source(UserSourceConfig(name="bad", path=str(tmp_path / "saved")))


EVAL_CORPUS = [
    ("invalid_utf8", "latin.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', ":2: not valid UTF-8"),
    ("utf16", "wide.jsonl", '{"text": "ok"}\n'.encode("utf-16"), ":1: not valid UTF-8 (it is UTF-16"),
    ("cut_mid_line", "cut.jsonl", b'{"text": "ok"}\n{"text": "o', ":2: not valid JSON"),
    ("truncated_parquet", "cut.parquet", lambda d: good_parquet(d)[:300], ": cannot read as Parquet"),
    ("text_a_number", "number.jsonl", b'{"text": "ok"}\n{"text": 7}\n', ":2: text field 'text' is a JSON number"),
    ("zero_bytes", "empty.jsonl", b"", ": no rows found"),
    ("whitespace_only", "blank.jsonl", b"\n \n", ": no rows found"),
    ("parquet_zero_rows", "none.parquet", lambda d: parquet_bytes(pl.DataFrame({"text": ["x"]}).head(0), d),
     ": no rows found"),
    ("csv_named_jsonl", "table.jsonl", b"text\nhello\n", ":1: not valid JSON"),
    ("json_named_parquet", "text.parquet", b'{"text": "ok"}\n', ": cannot read as Parquet"),
]


@pytest.mark.parametrize(("name", "file", "content", "expected"), EVAL_CORPUS, ids=[c[0] for c in EVAL_CORPUS])
def test_a_malformed_eval_file_is_named(tmp_path, name, file, content, expected):
    path = write(tmp_path / file, content)
    with pytest.raises(EvalSetError) as error:
        load_user_eval_file(path)
    assert str(error.value).startswith(f"{path}{expected}"), str(error.value)


PROFILE_CORPUS = [
    ("bad_yaml", b"ops:\n  eval_sets:\n    config: {benchmarks: [humaneval}\n",
     ":3: not valid YAML (expected ',' or ']'"),
    ("tab_indent", b"ops:\n\teval_sets: {}\n", ":2: not valid YAML (found character '\\t'"),
    ("invalid_utf8", b"ops:\n  base_model:\n    config: {path: /mod\xe8les/gemma}\n", ":3: not valid UTF-8"),
    ("utf16", "ops: {}\n".encode("utf-16"), ":1: not valid UTF-8 (it is UTF-16"),
    ("not_run_config", b"- eval_sets\n- sft_model\n", ": a profile is run config"),
]


@pytest.mark.parametrize(("name", "content", "expected"), PROFILE_CORPUS, ids=[c[0] for c in PROFILE_CORPUS])
def test_a_malformed_profile_is_named(tmp_path, name, content, expected):
    path = write(tmp_path / f"{name}.yaml", content)
    with pytest.raises(ProfileError) as error:
        load_profile(str(path))
    assert str(error.value).startswith(f"{path}{expected}"), str(error.value)


MODEL_DIR_CORPUS = [
    ("config_not_json", "config.json", lambda b: b"{\n  'model_type': 'llama'\n}\n",
     r":2: not valid JSON \(Expecting property name"),
    ("config_a_list", "config.json", lambda b: b"[]", r": a JSON array, expected an object"),
    ("template_invalid_utf8", "chat_template.jinja", lambda b: b"{# r\xe9sum\xe9 #}\n" + b, r":1: not valid UTF-8"),
    ("tokenizer_config_cut", "tokenizer_config.json", lambda b: b[: len(b) // 2], r":\d+: not valid JSON"),
    ("tokenizer_cut", "tokenizer.json", lambda b: b[: len(b) // 2], r":\d+: not valid JSON"),
    ("weights_cut", "model.safetensors", lambda b: b[:64], r": not a readable safetensors file"),
]


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.mark.parametrize(("name", "file", "damage", "expected"), MODEL_DIR_CORPUS,
                         ids=[c[0] for c in MODEL_DIR_CORPUS])
def test_a_damaged_model_directory_file_is_named(model_copy, name, file, damage, expected):
    path = model_copy / file
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ModelDirectoryError) as error:
        validate_model_dir(model_copy)
    assert re.match(rf"{re.escape(str(path))}{expected}", str(error.value)), str(error.value)


def test_template_and_marker_readers_name_the_file(model_copy, tmp_path):
    """The readers that may see a directory validate_model_dir has not (a previous model, a prepared student) and a
    template file chosen by path."""
    template = model_copy / "chat_template.jinja"
    template.write_bytes(b"{{ bos_token }}\n{# caf\xe9 #}")
    with pytest.raises(TemplateError, match=rf"^{template}:2: not valid UTF-8"):
        read_chat_template(model_copy)
    with pytest.raises(TemplateChoiceError, match=rf"^{template}:2: not valid UTF-8"):
        choose_template(str(template), model_copy)
    markers = model_copy / "chat_markers.json"
    markers.write_text('{"template_name": "chatml",\n "markers": [}')
    with pytest.raises(TemplateError, match=rf"^{markers}:2: not valid JSON"):
        read_chat_markers(model_copy)
    markers.write_text('{"template_name": "chatml"}')
    with pytest.raises(TemplateError, match=rf"^{markers}: not a chat-markers record"):
        read_chat_markers(model_copy)


def test_the_training_command_line_names_its_files(tmp_path):
    """`python -m training`: a --config that is not JSON and --data that is not Parquet end the command naming them."""
    from training.__main__ import main

    config = write(tmp_path / "train.json", b'{"lora_r": 16,\n "epochs": }\n')
    data = write(tmp_path / "rows.parquet", GOOD_LINE.encode())
    common = ["--model", str(tmp_path / "model"), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=rf"^{config}:2: not valid JSON"):
        main([*common, "--data", str(data), "--config", str(config)])
    with pytest.raises(SystemExit, match=rf"^{data}: cannot read as Parquet"):
        main([*common, "--data", str(data)])
    assert not (tmp_path / "out").exists()
