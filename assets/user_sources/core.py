"""User SFT sources: files a user brings, read into the conversation table (no Dagster here).

A source is one file or directory: JSONL or Parquet with a ``messages`` column (a list of ``{role, content}``), or
with instruction/response (and optionally system) columns named in its config, or a ``datasets`` dataset saved with
``save_to_disk`` (a directory; either form). Every row is checked: roles system/user/assistant, an optional leading
system message then user and assistant alternating, non-empty string contents, and a final assistant turn. The
first bad row fails the read with ``file:line: field: what is wrong`` (line = the JSONL line, or the row number
from 1 in a Parquet file or dataset). A file that cannot be read as its format (not UTF-8, not JSON lines, not
Parquet, not a saved dataset) or that holds no rows fails naming the file (and the line where there is one).

Rows keep where they came from: ``source`` (the source's name), ``source_id`` (the row's original id: the
``id_column`` value, else the line) and ``source_file``. They enter the graph as the pseudo-shard
:data:`USER_SHARD` (``shard`` = -1, ``row_index`` = the position in the source list's concatenation), with
``conversation_id`` = ``user-<source>-<source_id>``, ``generator_model`` = ``user:<source>`` and
``generator_model_hash`` = the file's content hash, so dedup, decontamination, filtering and tagging treat them as
any other shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from assets.common.data.schema import CONVERSATION_SCHEMA, ROLES
from assets.common.data.storage import sha256_dir, sha256_file
from assets.common.data.user_files import jsonl_objects, located, read_user_parquet

USER_SHARD = -1
SHARD_KEY = "user"  # the table `shard-user` the dedup stage reads beside the generation shards
ENGINE = "user_sft_sources"
EXTRA_SCHEMA: dict[str, pl.DataType] = {"source": pl.Utf8, "source_id": pl.Utf8, "source_file": pl.Utf8}


class UserSourceError(ValueError):
    """A user source file or row is not usable: the message names the file, the line and the field."""


@dataclass(frozen=True)
class UserSourceConfig:
    """One user file. ``format``: "auto" (by suffix: .jsonl/.json, .parquet, a directory = a saved dataset).
    ``instruction_column``/``response_column`` (and ``system_column``) map a two-column table to one exchange;
    unset = a ``messages_column``. ``id_column``: the row's original id (unset: its line)."""

    name: str
    path: str
    format: Literal["auto", "jsonl", "parquet", "datasets"] = "auto"
    messages_column: str = "messages"
    instruction_column: str | None = None
    response_column: str | None = None
    system_column: str | None = None
    id_column: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise UserSourceError(f"user source name {self.name!r}: use letters, digits, '-' and '_' only")
        if self.name == "generated":
            raise UserSourceError("user source name 'generated' is reserved for the generated pool; choose another")
        if (self.instruction_column is None) != (self.response_column is None):
            raise UserSourceError(f"user source {self.name!r}: set both instruction_column and response_column, or "
                                  "neither (then rows need a messages column)")

    def kind(self) -> str:
        path = Path(self.path)
        if self.format != "auto":
            return self.format
        if path.is_dir():
            return "datasets"
        if path.suffix in (".jsonl", ".json"):
            return "jsonl"
        if path.suffix == ".parquet":
            return "parquet"
        raise UserSourceError(f"{path}: cannot tell the format from the name; set format to jsonl, parquet or "
                              "datasets")


def content_hash(source: UserSourceConfig) -> str:
    """SHA-256 of the source's bytes (a dataset directory: every file's name and bytes)."""
    path = Path(source.path)
    if not path.exists():
        raise UserSourceError(f"{path}: user source {source.name!r} does not exist (check its path in the "
                              "user_sft_sources config)")
    return sha256_dir(path) if path.is_dir() else sha256_file(path)


def sources_hash(sources: list[UserSourceConfig]) -> str:
    """One hash of every source's name, mapping and bytes: the asset's data version."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(json.dumps(source.__dict__, sort_keys=True).encode())
        digest.update(content_hash(source).encode())
    return digest.hexdigest()


def _no_rows(source: UserSourceConfig) -> str:
    return (f"{source.path}: user source {source.name!r} has no rows (an empty file, only blank lines, or a table "
            "of 0 rows); fill it, or remove it from the user_sft_sources sources")


def _dataset_rows(source: UserSourceConfig) -> Iterator[Any]:
    """The rows of a dataset saved with ``datasets``' save_to_disk (a DatasetDict: its splits in name order)."""
    import datasets

    path = source.path
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:  # not a saved dataset, or its files are damaged
        raise UserSourceError(f"{path}: not a dataset saved with `datasets`' save_to_disk ({error}); point path at "
                              "the folder save_to_disk wrote, or at a .jsonl/.parquet file") from None
    except IndexError:  # datasets cannot load a saved dataset of 0 rows (it has no data file to concatenate)
        raise UserSourceError(_no_rows(source)) from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.concatenate_datasets([loaded[k] for k in sorted(loaded)])
    yield from loaded


def _records(source: UserSourceConfig) -> Iterator[tuple[int, Any]]:
    """(line, record) of every row: the JSONL line (blank lines skipped) or the row number from 1. A file that is
    not UTF-8, not JSON lines, not Parquet or not a saved dataset fails naming it (and the line)."""
    path, kind = Path(source.path), source.kind()
    if kind == "jsonl":
        yield from jsonl_objects(path, UserSourceError)
    elif kind == "parquet":
        yield from enumerate(read_user_parquet(path, UserSourceError).iter_rows(named=True), start=1)
    elif kind == "datasets":
        yield from enumerate(_dataset_rows(source), start=1)
    else:
        raise UserSourceError(f"{path}: unknown format {kind!r}; expected jsonl, parquet or datasets")


def _field(record: Any, column: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise UserSourceError(f"{where}: expected an object with named fields, got {type(record).__name__}")
    if column not in record:
        raise UserSourceError(f"{where}: {column}: missing (fields are {sorted(record)}); map the source's columns "
                              "with messages_column or instruction_column/response_column")
    return record[column]


def _messages(source: UserSourceConfig, record: Any, where: str) -> list[dict]:
    """The row's messages, from a messages column or the mapped instruction/response (and system) columns."""
    if source.instruction_column is None:
        messages = _field(record, source.messages_column, where)
        if not isinstance(messages, list):
            raise UserSourceError(f"{where}: {source.messages_column}: expected a list of {{role, content}} "
                                  f"messages, got {type(messages).__name__}")
        return messages
    mapped = []
    if source.system_column is not None and _field(record, source.system_column, where) not in (None, ""):
        mapped.append({"role": "system", "content": record[source.system_column], "_field": source.system_column})
    mapped.append({"role": "user", "content": _field(record, source.instruction_column, where),
                   "_field": source.instruction_column})
    mapped.append({"role": "assistant", "content": _field(record, source.response_column, where),
                   "_field": source.response_column})
    return mapped


def check_messages(messages: list, where: str, column: str = "messages") -> list[dict[str, str]]:
    """The messages as {role, content} dicts, or :class:`UserSourceError` naming the first bad field."""
    out = []
    system = bool(messages) and isinstance(messages[0], dict) and messages[0].get("role") == "system"
    for i, message in enumerate(messages):
        name = message.get("_field") if isinstance(message, dict) and "_field" in message else f"{column}[{i}]"
        if not isinstance(message, dict):
            raise UserSourceError(f"{where}: {name}: expected a {{role, content}} object, got {message!r}")
        role, content = message.get("role"), message.get("content")
        expected = "system" if system and i == 0 else ("user" if (i - system) % 2 == 0 else "assistant")
        if role not in ROLES:
            raise UserSourceError(f"{where}: {name}.role: {role!r} is not one of {'/'.join(ROLES)}")
        if role != expected:
            raise UserSourceError(f"{where}: {name}.role: {role!r} where {expected!r} is expected (an optional "
                                  "leading system message, then user and assistant alternating, starting with user)")
        if not isinstance(content, str) or not content.strip():
            label = name if "_field" in message else f"{name}.content"
            raise UserSourceError(f"{where}: {label}: {content!r} (expected a non-empty string)")
        out.append({"role": role, "content": content})
    if not out or out[-1]["role"] != "assistant":
        last = f"{column}[{len(out) - 1}]" if out else column
        raise UserSourceError(f"{where}: {last}: the conversation must end with an assistant turn (the turn that is "
                              "trained); got " + (f"{out[-1]['role']!r}" if out else "no messages"))
    return out


def read_source(source: UserSourceConfig) -> pl.DataFrame:
    """Every row of ``source`` checked and converted to the conversation table plus ``source``, ``source_id`` and
    ``source_file`` (``shard`` and ``row_index`` are set by :func:`read_sources`)."""
    file_hash = content_hash(source)
    rows = []
    for line, record in _records(source):
        where = located(source.path, line)
        messages = check_messages(_messages(source, record, where), where, source.messages_column)
        original = str(_field(record, source.id_column, where)) if source.id_column else str(line)
        rows.append({
            "conversation_id": f"user-{source.name}-{original}", "messages": messages,
            "finish_reasons": ["stop"] * sum(m["role"] != "system" for m in messages),
            "num_turns": sum(m["role"] == "user" for m in messages), "shard": USER_SHARD, "row_index": 0,
            "seed": 0, "generator_model": f"user:{source.name}", "generator_model_hash": file_hash,
            "pre_query_template_hash": "", "sampling_params": "{}", "engine": ENGINE, "engine_version": "",
            "source": source.name, "source_id": original, "source_file": str(source.path),
        })
    if not rows:
        raise UserSourceError(_no_rows(source))
    return pl.DataFrame(rows, schema={**CONVERSATION_SCHEMA, **EXTRA_SCHEMA})


def read_sources(sources: list[UserSourceConfig]) -> pl.DataFrame:
    """Every source read (:func:`read_source`), in config order, as one pseudo-shard: ``row_index`` numbers the
    rows. Source names and conversation ids must be unique."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UserSourceError(f"user source names must be unique, got {names}")
    frames = [read_source(s) for s in sources]
    table = pl.concat(frames) if frames else pl.DataFrame(schema={**CONVERSATION_SCHEMA, **EXTRA_SCHEMA})
    duplicated = table.filter(pl.col("conversation_id").is_duplicated())["conversation_id"].unique().sort()
    if duplicated.len():
        raise UserSourceError(f"user sources: original ids repeat within a source: {duplicated.head(3).to_list()} "
                              "(set id_column to a unique column, or leave it unset to use the line)")
    return table.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("row_index"))
