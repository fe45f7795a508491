"""Semantic dedup at scale and its threshold (run by hand, not in CI).

    python benchmarks/semantic_dedup.py                       # 10k and 100k rows, WordLlama, threshold 0.82
    python benchmarks/semantic_dedup.py --rows 10000 --skip-planted

Speed: ``--rows`` synthetic instructions (a template, four random words of the bundled eval sets, a sentence count;
every 10th row rewords an earlier one: other verb, reversed words, another count), cut into ``--shards`` shards,
through ``deduplicate_shards`` with the semantic pass (MinHash first, as in the asset; embedding cache cold, in a
temp dir). Reported: rows/s end to end, and the semantic index alone (HNSW search of each block, exact
verification, adds: ``semantic_deduplicate`` on vectors already embedded), rows removed by each detector.

Threshold: the planted pairs (assets/eval_sets/planted_pairs.yaml: eval prompts against hand-written paraphrases,
same-topic hard negatives and random instructions) scored with the model, and a few same-template pairs written
here (``TEMPLATE_PAIRS``: the same request about another subject, which must stay, and rewordings, which should go),
the flag rates at ``--threshold``. The last line is ``key=value`` pairs.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_average  # noqa: E402

# (a, b, should be removed): the same request about another subject must stay; rewordings should go
TEMPLATE_PAIRS = [
    ("Write a poem about the ocean.", "Write a poem about the mountains.", False),
    ("Write a Python function that reverses a string.", "Write a Python function that sorts a list.", False),
    ("Explain how photosynthesis works.", "Explain how vaccines work.", False),
    ("What is the capital of France?", "What is the capital of Germany?", False),
    ("Give me three tips for better sleep.", "Give me three tips for saving money.", False),
    ("Summarize the plot of Hamlet.", "Summarize the plot of Macbeth.", False),
    ("How do I bake sourdough bread?", "What's the process for making sourdough bread at home?", True),
    ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?", True),
    ("Write a poem about the ocean.", "Write a haiku about the sea.", True),
]
VERBS = ["Write", "Explain", "Summarize", "Describe", "List", "Compare", "Create", "Design", "Draft", "Outline"]
FORMS = ["a poem", "an essay", "a short story", "an email", "a summary", "a plan", "a recipe", "a list of tips",
         "a python function", "a speech"]


def synthetic_instructions(n: int, seed: int = 0) -> list[str]:
    from assets.eval_sets.core import load_bundled_eval_sets

    words = sorted({w.lower() for t in load_bundled_eval_sets()["text"] for w in re.findall(r"[A-Za-z]{4,12}", t)})
    rng, parts, out = random.Random(seed), [], []
    for i in range(n):
        if i % 10 == 9 and parts:
            verb, form, topic, count = parts[rng.randrange(len(parts))]
            out.append(f"Please {verb.lower()} {form} on {' '.join(reversed(topic))}; keep it to {count + 1} "
                       "sentences.")
            continue
        parts.append((rng.choice(VERBS), rng.choice(FORMS), rng.sample(words, 4), rng.randint(2, 9)))
        verb, form, topic, count = parts[-1]
        out.append(f"{verb} {form} about {' '.join(topic)}, in {count} sentences.")
    return out


def measure_speed(rows: int, shards: int, model: str, threshold: float) -> dict:
    from assets.common.data.storage import write_parquet_atomic
    from assets.common.text.embeddings import Embedder, EmbeddingConfig
    from assets.common.text.minhash.config import MinHashConfig
    from assets.dedup.incremental import SemanticStage, deduplicate_shards
    from assets.dedup.semantic import SemanticDedupConfig, semantic_deduplicate
    from assets.dedup.semantic_index import SemanticIndex
    from tests.asset_runs import conversation, frame

    texts = synthetic_instructions(rows)
    cfg = SemanticDedupConfig(enabled=True, model=model, threshold=threshold)
    with tempfile.TemporaryDirectory() as tmp:
        paths, per = {}, -(-rows // shards)
        for k in range(shards):
            chunk = texts[k * per:(k + 1) * per]
            paths[f"{k:05d}"] = Path(tmp) / f"shard-{k:05d}.parquet"
            write_parquet_atomic(frame([conversation(k * per + i, t, f"answer {k} {i}", shard=k)
                                        for i, t in enumerate(chunk)]), paths[f"{k:05d}"])
        embedder = Embedder(EmbeddingConfig(model=model, batch_size=256), cache_root=Path(tmp) / "cache")
        embedder.backend  # noqa: B018 (model load, not timed)
        start = time.perf_counter()
        result = deduplicate_shards(paths, Path(tmp) / "state", MinHashConfig(), semantic=SemanticStage(cfg, embedder))
        total = time.perf_counter() - start
        # the index alone: the same rows again, vectors from the cache (embedding time measured apart)
        df = pl.concat([pl.read_parquet(p) for p in paths.values()])
        start = time.perf_counter()
        cached = Embedder(EmbeddingConfig(model=model, batch_size=256), cache_root=Path(tmp) / "cache",
                          backend=embedder.backend)
        semantic_deduplicate(df, SemanticIndex.empty(embedder.backend.dim, {}), cached, cfg)
        index_s = time.perf_counter() - start
    by_reason = dict(result.removed.group_by("reason").len().iter_rows())
    return {"rows": rows, "shards": shards, "rows_per_s": rows / total, "index_and_search_rows_per_s": rows / index_s,
            "removed": by_reason, "index_rows": result.semantic_index_rows, "seconds": total}


def planted_rates(model: str, threshold: float) -> dict:
    from assets.common.text.embeddings import Embedder, EmbeddingConfig, paired_max_cosine
    from assets.eval_sets.planted import planted_pairs

    embedder = Embedder(EmbeddingConfig(model=model), cache_root=None)
    pairs = planted_pairs()
    score = paired_max_cosine(embedder.embed(pairs["text"].to_list()), embedder.embed(pairs["eval_text"].to_list()))
    pairs = pairs.with_columns(pl.Series("score", score))
    rates = {f"{split}_{kind}": f"{int((g['score'] >= threshold).sum())}/{g.height}"
             for (split, kind), g in sorted(pairs.group_by("split", "kind"), key=lambda x: x[0])}
    a = embedder.embed([p[0] for p in TEMPLATE_PAIRS]).vectors
    b = embedder.embed([p[1] for p in TEMPLATE_PAIRS]).vectors  # short texts: one chunk each
    cos = (a * b).sum(axis=1)
    should = np.array([p[2] for p in TEMPLATE_PAIRS])
    rates["template_rewordings_removed"] = f"{int((cos[should] >= threshold).sum())}/{int(should.sum())}"
    rates["template_other_subject_removed"] = f"{int((cos[~should] >= threshold).sum())}/{int((~should).sum())}"
    rates["negatives_max"] = round(float(max(pairs.filter(pl.col("kind").is_in(["hard_negative", "random"]))[
        "score"].max(), cos[~should].max())), 4)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--model", default="wordllama-l2-supercat-256")
    parser.add_argument("--threshold", type=float, default=0.82)
    parser.add_argument("--skip-planted", action="store_true")
    args = parser.parse_args()
    out = {"model": args.model, "threshold": args.threshold, "load_before": load_average()}
    if not args.skip_planted:
        out |= planted_rates(args.model, args.threshold)
        print(out, flush=True)
    for rows in args.rows:
        speed = measure_speed(rows, args.shards, args.model, args.threshold)
        print(speed, flush=True)
        out |= {f"rows_per_s_{rows}": round(speed["rows_per_s"]),
                f"index_rows_per_s_{rows}": round(speed["index_and_search_rows_per_s"]),
                f"removed_{rows}": speed["removed"]}
    out["load_after"] = load_average()
    print(" ".join(f"{k}={v}" for k, v in out.items()).replace(" ", " ").replace(", ", ","))


if __name__ == "__main__":
    main()
