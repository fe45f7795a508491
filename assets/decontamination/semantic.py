"""The semantic detector (no Dagster here): every compared training message against the eval texts of the chosen
fields, by embedding cosine, so a rephrased or translated eval item that shares no n-gram is still found.

Vectors come from :class:`assets.common.text.embeddings.Embedder` through its (model hash, text hash) cache, eval side
and training side, so a shard checked later embeds only its own new texts. Each message's ``top_k`` nearest eval texts
(max-over-chunks cosine) that stand out by the margin and reach the threshold are its candidates; a message and an
eval text in different languages (fastText language ID) reach the model's cross-lingual tier instead when they miss
the first (docs/semantic.md). Without verification every candidate is a
match. With it, each candidate pair goes to the LLM judge (:mod:`.rephrase`) and carries its verdict; a pair judged
"not a rephrasing" is recorded but removes nothing. A message whose ``top_k + 1``-th neighbour is also above the
threshold has candidates the judge did not see: that neighbour is a match with verdict ``unverified``.

Pairs are scored in one function, :func:`neighbours`: another scorer is a change there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.common.data.storage import sha256_text
from assets.common.text.embeddings import CrossLingual, Embedder, EmbeddingConfig, Embeddings, flagged_neighbours
from assets.common.text.language import detect_languages, fasttext_model_hash
from assets.decontamination.config import SemanticConfig
from assets.decontamination.rephrase import NOT_REPHRASING, UNVERIFIED, RephraseJudge

SEMANTIC = "semantic"
CANDIDATE_SCHEMA: dict[str, pl.DataType] = {"msg": pl.Int64, "item": pl.Int64, "similarity": pl.Float64,
                                            "verdict": pl.Utf8}
# the stored verdicts the blocking check reads (one row per judged pair of the table)
VERDICT_SCHEMA: dict[str, pl.DataType] = {
    "message_hash": pl.Utf8,  # SHA-256 of the training message's content
    "eval_hash": pl.Utf8,  # SHA-256 of the eval text
    "benchmark": pl.Utf8, "item_id": pl.Utf8, "field": pl.Utf8,
    "similarity": pl.Float64,
    "verdict": pl.Utf8,  # rephrasing | not_rephrasing | unparsed | unverified
    "judge_model": pl.Utf8, "judge_model_hash": pl.Utf8, "prompt": pl.Utf8, "prompt_hash": pl.Utf8,
}


def neighbours(queries: Embeddings, corpus: Embeddings, k: int, threshold: float, margin: float,
               cross: CrossLingual | None = None) -> pl.DataFrame:
    """The detector's one scorer: among each query's ``k`` best corpus texts (query, item, score), best first, those
    flagged: at ``threshold`` standing out from the rest of the corpus by ``margin``, or a cross-lingual pair at
    ``cross``'s threshold and margin (:func:`flagged_neighbours`, docs/semantic.md)."""
    return flagged_neighbours(queries, corpus, k, threshold, margin, cross)


@dataclass(eq=False)
class SemanticIndex:
    """The eval side of the semantic detector: the eval rows it compares with (``rows``: positions in the
    :class:`~.index.EvalIndex` items), their vectors, the embedder (model and cache) and the judge, if any."""

    config: SemanticConfig
    embedder: Embedder
    rows: np.ndarray
    texts: list[str]
    vectors: Embeddings
    judge: RephraseJudge | None
    languages: list[str] | None = None  # of ``texts``, when the model has a cross-lingual tier
    embedded: int = 0  # messages this index embedded (not found in the cache)

    @classmethod
    def build(cls, items: pl.DataFrame, cfg: SemanticConfig, cache_root: str | Path | None = None,
              judge: RephraseJudge | None = None) -> SemanticIndex:
        """``items``: the eval index's rows (benchmark, item_id, field, text), in its order."""
        if cfg.judge is not None and judge is None:
            raise ValueError("semantic verify is on but no judge was given: pass a RephraseJudge (the asset starts "
                             "one on the judge model) or turn verify off")
        selected = items["field"].is_in(list(cfg.eval_fields)) if cfg.eval_fields is not None else pl.repeat(
            True, items.height, eager=True)
        rows = np.flatnonzero(selected.to_numpy()).astype(np.int64)
        texts = items["text"].gather(rows).to_list()
        embedder = Embedder(EmbeddingConfig(model=cfg.model, batch_size=cfg.batch_size), cache_root)
        languages = detect_languages(texts) if cfg.cross_lingual is not None else None
        return cls(cfg, embedder, rows, texts, embedder.embed(texts), judge, languages)

    def fingerprint(self) -> dict[str, Any]:
        """What semantic matches depend on besides the config and the eval texts: the model's bytes (its hash),
        the chunk length, the judge's model and prompt, and the language-ID model (cross-lingual tier)."""
        return {"model_hash": self.vectors.model_hash, "chunk_tokens": self.embedder.chunk_tokens,
                "judge": self.judge.provenance() if self.judge is not None else None,
                "language_id_hash": fasttext_model_hash() if self.languages is not None else None}

    def describe(self) -> dict[str, Any]:
        """The detector as the report states it (nothing that depends on what a run found in its cache)."""
        cross = self.config.cross_lingual
        return {"model": self.config.model, "threshold": self.config.cosine_threshold, "margin": self.config.margin,
                "cross_lingual": None if cross is None else {"threshold": cross[0], "margin": cross[1],
                                                             "language_id": "fasttext lid.176"},
                "top_k": self.config.top_k,
                "eval_fields": list(self.config.eval_fields) if self.config.eval_fields is not None else None,
                "eval_texts": int(self.rows.size), **self.fingerprint()}

    def candidates(self, content: pl.Series) -> pl.DataFrame:
        """(msg, item, similarity, verdict) of the messages ``content`` (position = msg): :data:`CANDIDATE_SCHEMA`,
        ``item`` a row of the eval index."""
        if content.len() == 0 or self.rows.size == 0:
            return pl.DataFrame(schema=CANDIDATE_SCHEMA)
        texts = content.fill_null("").cast(pl.Utf8).to_list()
        k = self.config.top_k + (1 if self.judge is not None else 0)
        vectors = self.embedder.embed(texts)
        self.embedded += vectors.computed
        cross = self.config.cross_lingual
        tier = None if cross is None else CrossLingual(cross[0], cross[1], detect_languages(texts), self.languages)
        found = neighbours(vectors, self.vectors, k, self.config.cosine_threshold, self.config.margin, tier)
        if self.judge is not None:
            found = found.with_columns(pl.int_range(pl.len()).over("query").alias("rank"))
        else:
            found = found.with_columns(pl.lit(0).alias("rank"))
        judged = found.filter(pl.col("rank") < self.config.top_k)
        verdicts: list[str | None] = [None] * judged.height
        if self.judge is not None and judged.height:
            verdicts = self.judge.verdicts([texts[q] for q in judged["query"].to_list()],
                                           [self.texts[i] for i in judged["item"].to_list()])
        beyond = found.filter(pl.col("rank") >= self.config.top_k).with_columns(pl.lit(UNVERIFIED).alias("verdict"))
        out = pl.concat([judged.with_columns(pl.Series("verdict", verdicts, dtype=pl.Utf8)), beyond])
        return out.select(pl.col("query").alias("msg"), pl.Series("item", self.rows[out["item"].to_numpy()]),
                          pl.col("score").cast(pl.Float64).alias("similarity"), "verdict").cast(CANDIDATE_SCHEMA)


def counting(matches: pl.DataFrame) -> pl.Expr:
    """The matches that remove their row: every match but a semantic pair judged "not a rephrasing"."""
    return pl.col("verdict").is_null() | (pl.col("verdict") != NOT_REPHRASING)


def verdict_table(df: pl.DataFrame, items: pl.DataFrame, matches: pl.DataFrame,
                  judge: dict[str, Any] | None) -> pl.DataFrame:
    """The judged semantic pairs of ``matches`` (rows of ``df``, eval rows of ``items``) with the hashes of both
    texts and the judge that gave each verdict: :data:`VERDICT_SCHEMA`, in the matches' order."""
    judged = matches.filter((pl.col("detector") == SEMANTIC) & pl.col("verdict").is_not_null())
    if judge is None or judged.height == 0:
        return pl.DataFrame(schema=VERDICT_SCHEMA)
    messages = df["messages"].gather(judged["row"]).to_list()
    contents = [m[i]["content"] or "" for m, i in zip(messages, judged["message_index"].to_list(), strict=True)]
    return judged.select(
        pl.Series("message_hash", [sha256_text(t) for t in contents]),
        pl.Series("eval_hash", [sha256_text(t) for t in items["text"].gather(judged["item"]).to_list()]),
        "benchmark", "item_id", "field", "similarity", "verdict",
        pl.lit(judge["model"]).alias("judge_model"), pl.lit(judge["model_hash"]).alias("judge_model_hash"),
        pl.lit(judge["prompt"]).alias("prompt"), pl.lit(judge["prompt_hash"]).alias("prompt_hash"),
    ).cast(VERDICT_SCHEMA)
