"""`user_sft_sources`: SFT conversations a user brings (JSONL, Parquet, a saved `datasets` dataset), checked row by
row, as a pseudo-shard the dedup stage reads beside the generation shards."""

from typing import Literal

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.data.storage import sha256_file
from assets.common.orchestration.resources import (
    REBUILD_ON_UPSTREAM_CHANGE,
    USER_SFT_FILES,
    USER_SFT_SOURCES,
    DataStorage,
    observed_external_inputs,
)
from assets.user_sources.core import SHARD_KEY, UserSourceConfig, read_sources, sources_hash


class UserSourceSettings(dg.Config):
    name: str
    """The source's name: the mixture's `source_shares` key, and `source` on every row."""
    path: str
    """A .jsonl/.parquet file, or a directory written by `datasets`' save_to_disk."""
    format: Literal["auto", "jsonl", "parquet", "datasets"] = "auto"
    messages_column: str = "messages"
    instruction_column: str | None = None
    """With response_column: a two-column source mapped to one user/assistant exchange."""
    response_column: str | None = None
    system_column: str | None = None
    id_column: str | None = None
    """The row's original id (unset: its line)."""

    def to_core(self) -> UserSourceConfig:
        return UserSourceConfig(**self.model_dump())


class UserSourcesSettings(dg.Config):
    sources: list[UserSourceSettings] = []
    """User SFT files to mix in; empty (the default) = only generated data."""


user_sft_files = observed_external_inputs(
    USER_SFT_FILES, "user_sft_files", lambda inputs: inputs.user_sft_files, "none", group="data", kinds={"parquet"},
    description="The user's SFT files the profile names (`user_sft_sources.sources`), observed: their data version "
    "is the hash of their contents (`none` when there are none), so a changed file rebuilds `user_sft_sources`.")


@dg.asset(group_name="data", kinds={"polars", "parquet"}, deps=[USER_SFT_FILES],
          automation_condition=REBUILD_ON_UPSTREAM_CHANGE)
def user_sft_sources(
    context: dg.AssetExecutionContext, config: UserSourcesSettings, storage: DataStorage
) -> dg.MaterializeResult:
    """The user's SFT files, every row checked (roles, alternation, non-empty content, a final assistant turn; a bad
    row fails naming file:line: field) and kept with its `source` and original id, written as the pseudo-shard
    `shard-user` that deduplication reads beside the generation shards: dedup, decontamination (and its blocking
    check), filtering and tagging cover user rows exactly as generated ones. Its data version is the content hash of
    the files and their mapping: a changed file is a new version. With no sources configured (the default) no shard
    is written, unless an earlier one must be emptied."""
    sources = [s.to_core() for s in config.sources]
    table = read_sources(sources)
    version = sources_hash(sources)
    per_source = [{"source": s.name, "path": s.path, "format": s.kind(),
                   "rows": int((table["source"] == s.name).sum())} for s in sources]
    report_path = storage.write_json(USER_SFT_SOURCES, "report", {"sources": per_source, "rows": table.height,
                                                                  "sources_hash": version})
    shard = f"shard-{SHARD_KEY}"
    if sources or storage.has(USER_SFT_SOURCES, shard):  # an earlier shard is emptied when the sources go
        located = storage.write_table(USER_SFT_SOURCES, table, name=shard).metadata()
    else:  # none configured, none before: no shard for dedup to read (the default; the report is the record)
        located = {"path": dg.MetadataValue.path(str(report_path)), "dagster/row_count": 0,
                   "content_hash": sha256_file(report_path)}
    context.log.info(f"{table.height} user rows from {len(sources)} source(s)")
    return dg.MaterializeResult(
        metadata={**located, "sources_hash": version,
                  "sources": dg.MetadataValue.md(markdown_table(per_source) if per_source else "(none configured)")},
        data_version=dg.DataVersion(version),
    )
