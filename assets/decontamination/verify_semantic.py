"""The blocking check's semantic part (no Dagster here), with its own code: like :mod:`.verify` it imports none of the
removal's modules (an import contract in pyproject.toml); it uses the shared embedding models and their cache
(:mod:`assets.common.text.embeddings`) and scores pairs itself, with numpy.

A kept training message (user or assistant) and an eval text of the checked fields scoring at or above the check's
floor (max-over-chunks cosine) is a leak, unless the removal stored a verdict for that very pair (SHA-256 of both
texts) saying "not a rephrasing", given by the judge model the removal's report names and under the prompt whose file
hashes, today, to the verdict's prompt hash. Before any score:

* the model the removal used must have a floor in this module: :data:`CHECK_SEMANTIC_FLOORS` for the registered
  models, :data:`CHECK_SEMANTIC_FLOORS_BY_HASH` for any other (a local sentence-transformers directory), added in code
  once that model's scores were measured (``benchmarks/embeddings.py``). A cosine means nothing across models (the
  tuned thresholds run from 0.57 to 0.89), so no setting can name one: an unknown model is refused;
* the model's hash today must be the one the removal recorded, and a sample of the cached vectors must be what the
  model computes for those texts now (a cache folder holding another model's vectors is refused).

Parameters are the stricter of the check's and the removal's: the lower of the floor and the removal's threshold,
the lower of the margins, the cross-lingual tier (:data:`CHECK_SEMANTIC_CROSS_LINGUAL`) at the lower of the floors and
of the margins, the union of :data:`CHECK_SEMANTIC_FIELDS` and the removal's eval fields. When the removal ran without
the semantic detector (``semantic.enabled: false``) there is nothing to re-verify: the check says so in its
description.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.common.text.embeddings import Embedder, EmbeddingConfig, load_backend
from assets.common.text.language import UNDETERMINED, detect_languages

# The check's own floors per registered embedding model: today's tuned thresholds (benchmarks/embeddings.py, the planted
# pairs' tune half). tests/decontamination/test_decontam_semantic.py asserts each is at least the model's registered
# threshold, so the removal's defaults always pass their own check.
CHECK_SEMANTIC_FLOORS = {"multilingual-e5-small-q4": 0.903, "all-minilm-l6-v2": 0.694,
                         "wordllama-l2-supercat-256": 0.692}
CHECK_SEMANTIC_FLOORS_BY_HASH: dict[str, float] = {}  # model hash -> floor, for measured unregistered models
# ... and the most a pair must stand out from the rest of the eval texts (the tuned margins; the removal's scoring,
# docs/semantic.md), computed below with the check's own numpy; an unregistered model: 0 (plain cosine)
CHECK_SEMANTIC_MARGINS = {"multilingual-e5-small-q4": 0.02, "all-minilm-l6-v2": 0.05, "wordllama-l2-supercat-256": 0.05}
# ... and the cross-lingual tier (a message and an eval text in different languages, fastText language ID): (floor,
# margin) per model that has one, today's tuned values; the check runs at the lower floor and the lower margin of its
# own and the removal's (a pair counts when it passes either tier: the tier only adds pairs)
CHECK_SEMANTIC_CROSS_LINGUAL = {"multilingual-e5-small-q4": (0.888, 0.03)}
CHECK_SEMANTIC_FIELDS = ("prompt", "instruction", "turn_1", "turn_2", "text")
NOT_REPHRASING = "not_rephrasing"
PROMPTS_DIR = Path(__file__).parent / "prompts"
_SAMPLE = 4  # cached eval vectors recomputed to check the cache holds this model's vectors
_BLOCK = 4096  # message chunks scored at once
_EPS = 1e-6  # float32 dot products summed in another order than the removal's may differ in the last bits


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Leak:
    """A kept message the check found leaked (both parts of the check report leaks this way)."""

    conversation_id: str
    role: str
    benchmark: str
    item_id: str
    evidence: str


@dataclass
class SemanticCheck:
    """What the semantic part found: ``problem`` (it could not check: refused), ``leaks``, its parameters."""

    checked: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    leaks: list[Leak] = field(default_factory=list)
    cleared: int = 0  # pairs above the floor passed by a stored "not a rephrasing" verdict
    problem: str = ""


def check_floor(model: str, model_hash: str) -> float | None:
    return CHECK_SEMANTIC_FLOORS.get(model, CHECK_SEMANTIC_FLOORS_BY_HASH.get(model_hash))


def check_semantic(kept: pl.DataFrame, eval_sets: pl.DataFrame, report: dict, verdicts: pl.DataFrame | None,
                   embedding_cache: str | Path | None, limit: int = 20) -> SemanticCheck:
    """Re-verify ``kept`` against ``eval_sets`` with the floors above (see the module's docstring)."""
    removal = report.get("semantic")
    if not removal:
        return SemanticCheck(checked=False)
    floor = check_floor(removal["model"], removal["model_hash"])
    if floor is None:
        return SemanticCheck(True, problem=(
            f"the removal's embedding model {removal['model']!r} (hash {removal['model_hash'][:12]}) has no floor in "
            "the check (assets/decontamination/verify_semantic.py): refused. Measure it (benchmarks/embeddings.py) and "
            "add its floor to CHECK_SEMANTIC_FLOORS_BY_HASH, or use a registered model."))
    fields = None if removal.get("eval_fields") is None else sorted({*CHECK_SEMANTIC_FIELDS, *removal["eval_fields"]})
    margin = min(CHECK_SEMANTIC_MARGINS.get(removal["model"], 0.0), float(removal.get("margin", 0.0)))
    tiers = [tier for tier in (CHECK_SEMANTIC_CROSS_LINGUAL.get(removal["model"]), removal.get("cross_lingual"))
             if tier]
    tiers = [(float(t["threshold"]), float(t["margin"])) if isinstance(t, dict) else t for t in tiers]
    cross = [min(t for t, _ in tiers), min(g for _, g in tiers)] if tiers else None
    parameters = {"model": removal["model"], "model_hash": removal["model_hash"], "floor": floor,
                  "threshold": min(floor, float(removal["threshold"])), "margin": margin, "cross_lingual": cross,
                  "eval_fields": fields}
    embedder, problem = _cached_embedder(removal, eval_sets, fields, embedding_cache)
    if problem:
        return SemanticCheck(True, parameters, problem=problem)
    return _scan(kept, eval_sets, fields, embedder, parameters, _cleared_pairs(verdicts, removal.get("judge")), limit)


def _eval_texts(eval_sets: pl.DataFrame, fields: list[str] | None) -> pl.DataFrame:
    rows = eval_sets if fields is None else eval_sets.filter(pl.col("field").is_in(fields))
    return rows.select("benchmark", "item_id", "field", "text").sort("benchmark", "item_id", "field")


def _cached_embedder(removal: dict, eval_sets: pl.DataFrame, fields: list[str] | None,
                     embedding_cache: str | Path | None) -> tuple[Embedder | None, str]:
    """The embedder over the cache, once the model's hash is the recorded one and a sample of the cached eval vectors
    is what the model computes now; else (None, the problem)."""
    backend = load_backend(removal["model"])
    if backend.model_hash != removal["model_hash"]:
        return None, (f"embedding model {removal['model']!r} hashes to {backend.model_hash[:12]} but the removal "
                      f"recorded {removal['model_hash'][:12]}: its matches and cached vectors are another model's. "
                      "Refused: re-materialize decontaminated_conversations.")
    config = EmbeddingConfig(model=removal["model"], chunk_tokens=int(removal["chunk_tokens"]))
    cached = Embedder(config, embedding_cache, backend=backend)
    sample = sorted(set(_eval_texts(eval_sets, fields)["text"].to_list()), key=_sha256)[:_SAMPLE]
    try:
        stored = cached.embed(sample)
    except (ValueError, pl.exceptions.PolarsError) as error:
        return None, f"the embedding cache under {removal['model_hash'][:12]} is unreadable for this model: {error}"
    fresh = Embedder(config, None, backend=backend).embed(sample)
    if stored.vectors.shape != fresh.vectors.shape or not np.allclose(stored.vectors, fresh.vectors, atol=1e-5):
        return None, (f"the embedding cache under model hash {removal['model_hash'][:12]} holds vectors that model "
                      "does not compute for the same texts (another model's, or altered): refused. Delete that cache "
                      "folder and re-materialize decontaminated_conversations.")
    return cached, ""


def _cleared_pairs(verdicts: pl.DataFrame | None, judge: dict | None) -> set[tuple[str, str]]:
    """(message hash, eval hash) of the stored "not a rephrasing" verdicts given by the report's judge model under a
    prompt whose file hashes, today, to the verdict's prompt hash."""
    if verdicts is None or verdicts.height == 0 or not judge:
        return set()
    prompt = PROMPTS_DIR / f"{judge['prompt']}.yaml"
    prompt_hash = hashlib.sha256(prompt.read_bytes()).hexdigest() if prompt.is_file() else None
    valid = verdicts.filter((pl.col("verdict") == NOT_REPHRASING) & (pl.col("judge_model") == judge["model"])
                            & (pl.col("judge_model_hash") == judge["model_hash"])
                            & (pl.col("prompt_hash") == prompt_hash) & (pl.col("prompt") == judge["prompt"]))
    return set(valid.select("message_hash", "eval_hash").iter_rows())


def _messages(kept: pl.DataFrame) -> list[tuple[str, str, str]]:
    """(conversation_id, role, content) of every user and assistant message of ``kept``."""
    return [(cid, m["role"], m["content"] or "") for cid, messages in kept.select("conversation_id", "messages")
            .iter_rows() for m in messages or [] if m["role"] in ("user", "assistant")]


def _scan(kept: pl.DataFrame, eval_sets: pl.DataFrame, fields: list[str] | None, embedder: Embedder,
          parameters: dict, cleared: set[tuple[str, str]], limit: int) -> SemanticCheck:
    """Every kept message against every checked eval text, in blocks of message chunks; leaks up to ``limit``."""
    texts = _eval_texts(eval_sets, fields)
    messages = _messages(kept)
    result = SemanticCheck(True, {**parameters, "messages": len(messages), "eval_texts": texts.height})
    if not messages or texts.height == 0:
        return result
    evals, mine = embedder.embed(texts["text"].to_list()), embedder.embed([m[2] for m in messages])
    eval_hashes = [_sha256(t) for t in texts["text"].to_list()]
    bounds = np.searchsorted(mine.owner, np.arange(mine.n_texts + 1))
    eval_starts = np.searchsorted(evals.owner, np.arange(evals.n_texts))
    apart = _not_twins(evals, eval_starts, parameters["threshold"])
    cross = parameters["cross_lingual"]
    languages = (np.array(detect_languages([m[2] for m in messages]), dtype=object),
                 np.array(detect_languages(texts["text"].to_list()), dtype=object)) if cross else None
    first = 0
    while first < mine.n_texts and len(result.leaks) < limit:
        last = max(first + 1, int(np.searchsorted(bounds, bounds[first] + _BLOCK, side="right")) - 1)
        sims = mine.vectors[bounds[first]:bounds[last]] @ evals.vectors.T
        per_chunk = np.maximum.reduceat(sims, eval_starts, axis=1)  # the best chunk of each eval text
        per_message = np.maximum.reduceat(per_chunk, bounds[first:last] - bounds[first], axis=0)
        block_languages = None if languages is None else (languages[0][first:last], languages[1])
        for row, item in zip(*_distinct(per_message, apart, parameters["threshold"], parameters["margin"], cross,
                                        block_languages), strict=True):
            conversation_id, role, content = messages[first + row]
            if (_sha256(content), eval_hashes[item]) in cleared:
                result.cleared += 1
                continue
            benchmark, item_id, name = texts.row(int(item))[:3]
            floor = parameters["threshold"]
            if per_message[row, item] < floor - _EPS:  # passed by the cross-lingual tier
                floor = cross[0]
                name = f"{name} ({block_languages[0][row]} vs {languages[1][item]})"
            result.leaks.append(Leak(conversation_id, role, benchmark, item_id, (
                f"cosine {per_message[row, item]:.3f} >= {floor:.3f} with {name}, no stored "
                "'not a rephrasing' verdict of the report's judge and prompt")))
            if len(result.leaks) >= limit:
                break
        first = last
    return result


def _not_twins(evals, eval_starts: np.ndarray, threshold: float) -> np.ndarray:
    """``apart[i, j]``: eval text ``j`` is another text than ``i`` and not its twin (their max-over-chunks cosine is
    below ``threshold``): the texts a match with ``i`` must stand out from."""
    sims = evals.vectors @ evals.vectors.T
    per_text = np.maximum.reduceat(np.maximum.reduceat(sims, eval_starts, axis=1), eval_starts, axis=0)
    apart = per_text < threshold - _EPS
    np.fill_diagonal(apart, False)
    return apart


def _distinct(per_message: np.ndarray, apart: np.ndarray, threshold: float, margin: float,
              cross: list[float] | None = None, languages: tuple[np.ndarray, np.ndarray] | None = None) -> tuple:
    """(rows, items) of ``per_message`` (messages x eval texts) at or above ``threshold`` that exceed by at least
    ``margin`` the message's best cosine with every eval text apart from the item (-inf when there is none); with
    ``cross`` ([floor, margin]) and ``languages`` (of the messages, of the eval texts), also the pairs of two
    identified, different languages at or above that floor that exceed it by that margin."""
    low = threshold if cross is None else min(threshold, cross[0])
    rows, items = np.nonzero(per_message >= low - _EPS)
    if rows.size == 0:
        return rows, items
    score = per_message[rows, items]
    if margin <= 0 and cross is None:
        return rows, items
    rivals = np.where(apart[items], per_message[rows], -np.inf).max(axis=1)
    lead = score - rivals
    keep = (score >= threshold - _EPS) & ((lead >= margin - _EPS) | (margin <= 0))
    if cross is not None:
        mine, theirs = languages[0][rows], languages[1][items]
        other = (mine != theirs) & (mine != UNDETERMINED) & (theirs != UNDETERMINED)
        keep |= other & (score >= cross[0] - _EPS) & (lead >= cross[1] - _EPS)
    return rows[keep], items[keep]
