"""The persistent nearest-neighbour index of semantic deduplication: a FAISS HNSW graph (inner product on unit
vectors = cosine) over the instruction vector of every row kept so far, and the ids of those rows (row ``k`` of the
graph = the ``k``-th kept row). Saved as one ``.npz`` (no pickles) named by its content, written atomically.

Determinism. HNSW draws each new node's level from a generator that the index file does not hold, so a graph
continued in the same process differs from one saved, loaded and continued. Every shard therefore starts from an
index read back from its bytes (:meth:`SemanticIndex.round_trip`), whether the previous shard was processed in this
run or an earlier one: a full rebuild and an incremental run build the same graph, byte for byte. Nodes are added
on one thread, in rank order; searches (read-only, one query independent of the others) may use several.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from assets.common.data.storage import write_bytes_atomic
from assets.common.text.normalize import utf8_buffer
from assets.dedup.index import _ids_from_buffer

FORMAT_VERSION = 1
CONNECTIVITY = 16  # HNSW M: neighbours per node
EF_CONSTRUCTION = 64  # candidates considered when a node is linked
EF_SEARCH = 64  # candidates kept while searching (not stored in the file: set after every load)


@contextmanager
def _one_thread():
    """FAISS's OpenMP threads set to one for the block (adds in a fixed order), restored after."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(eq=False)
class SemanticIndex:
    """``graph``: FAISS ``IndexHNSWFlat`` of unit vectors; ``ids``: the conversation id of each of its rows;
    ``identity``: what the vectors depend on (model, model hash, what is embedded); a mismatch means rebuild."""

    graph: faiss.IndexHNSWFlat
    ids: pl.Series
    identity: dict

    def __post_init__(self) -> None:
        self.ids = self.ids.cast(pl.Utf8).alias("id")
        if self.graph.ntotal != self.ids.len():
            raise ValueError(f"semantic index: {self.graph.ntotal} vectors but {self.ids.len()} ids")
        self.graph.hnsw.efSearch = EF_SEARCH

    @classmethod
    def empty(cls, dim: int, identity: dict) -> SemanticIndex:
        graph = faiss.IndexHNSWFlat(dim, CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = EF_CONSTRUCTION
        return cls(graph, pl.Series("id", [], dtype=pl.Utf8), dict(identity))

    def __len__(self) -> int:
        return self.ids.len()

    @property
    def dim(self) -> int:
        return int(self.graph.d)

    def search(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """(len(vectors), k) index rows of approximate nearest neighbours (-1: none); candidates only, the caller
        verifies them with exact cosine (:meth:`vectors`)."""
        if len(self) == 0 or len(vectors) == 0:
            return np.full((len(vectors), k), -1, np.int64)
        _, rows = self.graph.search(np.ascontiguousarray(vectors, np.float32), min(k, len(self)))
        return rows.astype(np.int64)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of index ``rows`` (exact copies of what was added)."""
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.graph.storage.reconstruct_batch(rows)

    def add(self, ids: pl.Series, vectors: np.ndarray) -> None:
        """Append rows in the given order, on one thread (the graph depends on the order only)."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids):
            with _one_thread():
                self.graph.add(np.ascontiguousarray(vectors, np.float32))
            self.ids = pl.concat([self.ids, ids.cast(pl.Utf8).alias("id")])

    def to_bytes(self) -> bytes:
        meta = {"format_version": FORMAT_VERSION, "identity": self.identity, "rows": len(self),
                "connectivity": CONNECTIVITY, "ef_construction": EF_CONSTRUCTION}
        id_data, id_offsets = utf8_buffer(self.ids)
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
                 graph=faiss.serialize_index(self.graph), id_data=id_data, id_offsets=id_offsets)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "semantic index") -> SemanticIndex:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            if meta["format_version"] != FORMAT_VERSION:
                raise ValueError(f"{where}: format {meta['format_version']}, expected {FORMAT_VERSION}; rebuild it")
            graph = faiss.deserialize_index(npz["graph"])
            ids = _ids_from_buffer(npz["id_data"], npz["id_offsets"])
        return cls(graph, ids, meta["identity"])

    def round_trip(self) -> tuple[SemanticIndex, bytes]:
        """This index read back from its bytes (see the module's note on determinism), and the bytes."""
        data = self.to_bytes()
        return SemanticIndex.from_bytes(data), data

    @classmethod
    def load(cls, path: str | os.PathLike) -> SemanticIndex:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no semantic index here (the first deduplication run creates it)")
        return cls.from_bytes(path.read_bytes(), str(path))


def save_content_addressed(data: bytes, folder: Path, prefix: str = "semantic_index") -> str:
    """Write ``data`` as ``<folder>/<prefix>-<sha256[:16]>.npz`` (atomically; an existing file of that name already
    holds these bytes and is kept) and return the file name."""
    import hashlib

    name = f"{prefix}-{hashlib.sha256(data).hexdigest()[:16]}.npz"
    if not (folder / name).exists():
        write_bytes_atomic(data, folder / name)
    return name
