"""The persistent LSH index of deduplication: signatures, band hashes and ids of every row kept so far, saved
as one ``.npz`` file (no pickles) with an atomic write."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from assets.common.data.storage import write_bytes_atomic
from assets.common.text.minhash.config import MinHashConfig
from assets.common.text.minhash.lsh import sorted_bands
from assets.common.text.normalize import NORMALIZATION_VERSION, utf8_buffer

INDEX_FORMAT_VERSION = 1


@dataclass(eq=False)
class LSHIndex:
    """Signatures, band hashes and ids of every row kept so far (row ``k`` = the ``k``-th kept row)."""

    config: MinHashConfig
    ids: pl.Series
    signatures: np.ndarray
    band_hashes: np.ndarray
    _sorted: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.ids = self.ids.cast(pl.Utf8).alias("id")
        n_bands, _ = self.config.params
        m = self.ids.len()
        if self.signatures.shape != (m, self.config.num_perm) or self.signatures.dtype != np.uint32:
            raise ValueError(
                f"signatures must be uint32 ({m}, {self.config.num_perm}), got "
                f"{self.signatures.dtype} {self.signatures.shape}"
            )
        if self.band_hashes.shape != (m, n_bands) or self.band_hashes.dtype != np.uint64:
            raise ValueError(
                f"band_hashes must be uint64 ({m}, {n_bands}), got "
                f"{self.band_hashes.dtype} {self.band_hashes.shape}"
            )

    @classmethod
    def empty(cls, cfg: MinHashConfig) -> LSHIndex:
        return cls(
            cfg,
            pl.Series("id", [], dtype=pl.Utf8),
            np.empty((0, cfg.num_perm), np.uint32),
            np.empty((0, cfg.params[0]), np.uint64),
        )

    def __len__(self) -> int:
        return self.ids.len()

    def sorted_bands(self) -> tuple[np.ndarray, np.ndarray]:
        """Per band, the sorted band hashes and the index row of each (computed once, cached)."""
        if self._sorted is None:
            self._sorted = sorted_bands(self.band_hashes)
        return self._sorted

    def extended(self, ids: pl.Series, signatures: np.ndarray, bands: np.ndarray) -> LSHIndex:
        """A new index with rows appended (this one is not modified)."""
        return LSHIndex(
            self.config,
            pl.concat([self.ids, ids.cast(pl.Utf8).alias("id")]),
            np.concatenate([self.signatures, signatures]),
            np.concatenate([self.band_hashes, bands]),
        )

    def check_compatible(self, cfg: MinHashConfig) -> None:
        if cfg != self.config or cfg.params != self.config.params:
            raise ValueError(
                f"LSH index was built with {self.config} (bands/rows {self.config.params}); "
                f"cannot use it with {cfg} (bands/rows {cfg.params}). Rebuild the index."
            )

    def save(self, path: str | os.PathLike) -> str:
        """Write the index as one uncompressed ``.npz`` (no object arrays) atomically; return its SHA-256."""
        meta = {
            "format_version": INDEX_FORMAT_VERSION,
            "normalization_version": NORMALIZATION_VERSION,
            "config": self.config.to_json(),
            "params": list(self.config.params),
            "rows": len(self),
        }
        id_data, id_offsets = utf8_buffer(self.ids)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
            signatures=self.signatures,
            band_hashes=self.band_hashes,
            id_data=id_data,
            id_offsets=id_offsets,
        )
        return write_bytes_atomic(buffer.getvalue(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LSHIndex:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no LSH index here (the first deduplication run creates it)")
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
            if meta["format_version"] != INDEX_FORMAT_VERSION:
                raise ValueError(
                    f"{path}: index format {meta['format_version']}, expected {INDEX_FORMAT_VERSION}"
                )
            if meta["normalization_version"] != NORMALIZATION_VERSION:
                raise ValueError(
                    f"{path}: built with text normalization v{meta['normalization_version']}, this code is "
                    f"v{NORMALIZATION_VERSION}; rebuild the index"
                )
            cfg = MinHashConfig.from_json(meta["config"])
            if list(cfg.params) != meta["params"]:
                raise ValueError(f"{path}: stored bands/rows {meta['params']} differ from {cfg.params}")
            ids = _ids_from_buffer(npz["id_data"], npz["id_offsets"])
            return cls(cfg, ids, npz["signatures"], npz["band_hashes"])


def _ids_from_buffer(data: np.ndarray, offsets: np.ndarray) -> pl.Series:
    import pyarrow as pa

    array = pa.LargeStringArray.from_buffers(
        len(offsets) - 1, pa.py_buffer(offsets.astype(np.int64).tobytes()), pa.py_buffer(data.tobytes())
    )
    return pl.Series("id", pl.from_arrow(array), dtype=pl.Utf8)
