"""Reading a file a user supplies, or raising an error that names it (no Dagster here).

Every reader of user files (SFT sources, eval files, profiles, model directories, the training command line) reads
through these helpers, so a file that is not UTF-8, not JSON, not Parquet or unreadable fails with the reader's own
error type (passed as ``error``: a ``ValueError`` subclass such as ``UserSourceError``, or ``SystemExit`` for a
command line) and a message of the form ``<file>:<line>: what is wrong; what to do`` (``<file>: ...`` when there is
no line). Nothing here writes.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SAVE_AS_UTF8 = "save the file as UTF-8 (most editors: 'Save with encoding' -> UTF-8)"


def located(path: str | os.PathLike, line: int | None = None) -> str:
    """``path:line``, the form every message here starts with (``path`` alone when there is no line)."""
    return f"{path}:{line}" if line is not None else str(path)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def decode_utf8(data: bytes, path: str | os.PathLike, error: type[Exception], first_line: int = 1) -> str:
    """``data`` (a whole file, or one line of it starting at ``first_line``) decoded as UTF-8; a leading byte-order
    mark is dropped. Otherwise ``error`` naming the file, the line and the column of the first bad byte."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        if first_line == 1 and data.startswith(_UTF16_BOMS):
            kind = "it is UTF-16 (it starts with a UTF-16 byte-order mark)"
        elif b"\x00" in data[:4096]:
            kind = "it holds NUL bytes: UTF-16 or a binary file"
        else:
            kind = f"byte 0x{data[exc.start]:02x} at column {column}"
        raise error(f"{located(path, line)}: not valid UTF-8 ({kind}); {_SAVE_AS_UTF8}") from None


def _read_bytes(path: Path, error: type[Exception]) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc}); check the path and its permissions") from None


def read_user_text(path: str | os.PathLike, error: type[Exception]) -> str:
    """The whole file as text (UTF-8), or ``error`` naming the file (and the line of a bad byte)."""
    return decode_utf8(_read_bytes(Path(path), error), path, error)


def parse_json(text: str, path: str | os.PathLike, error: type[Exception], line: int | None = None) -> Any:
    """``text`` (a file, or line ``line`` of one) parsed as JSON, or ``error`` naming the file, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = located(path, line if line is not None else exc.lineno)
        raise error(f"{at}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    + ("each line must hold one complete JSON object" if line is not None
                       else "restore the file (it may be cut short or edited by hand)")) from None


def read_user_json(path: str | os.PathLike, error: type[Exception]) -> Any:
    """A JSON file (UTF-8), or ``error`` naming the file and the line at fault."""
    return parse_json(read_user_text(path, error), path, error)


def jsonl_objects(path: str | os.PathLike, error: type[Exception]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` of every non-blank line of a JSONL file (``.gz``: gzip-compressed), line numbers from 1;
    a line that is not UTF-8, not JSON or not a JSON object raises ``error`` naming ``path:line``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                text = decode_utf8(raw, path, error, first_line=line_no)
                if not text.strip():
                    continue
                obj = parse_json(text, path, error, line=line_no)
                if not isinstance(obj, dict):
                    hint = " (a JSON array file is not JSONL: write one object per line)" if line_no == 1 else ""
                    raise error(f"{located(path, line_no)}: a JSON {json_type(obj)}, expected an object{hint}")
                yield line_no, obj
    except (OSError, EOFError) as exc:  # unreadable, or a gzip file cut short
        raise error(f"{path}: cannot read ({exc}); check the path, or restore the file if it was cut short") \
            from None


def read_user_parquet(path: str | os.PathLike, error: type[Exception]) -> pl.DataFrame:
    """A Parquet file, or ``error`` naming it (not Parquet, cut short, unreadable)."""
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError, pl.exceptions.PanicException) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{path}: cannot read as Parquet ({detail}); write it with a Parquet writer (e.g. polars "
                    "write_parquet or pandas to_parquet), or give it the suffix of its real format") from None
