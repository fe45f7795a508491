"""Throughput of MinHash dedup and decontamination vs datasketch (run by hand, not in CI).

    python benchmarks/dedup.py                 # 100k synthetic conversations of ~1k characters
    python benchmarks/dedup.py --docs 5000     # quick run

Measures, on the same synthetic corpus (planted near-duplicates: case / whitespace / punctuation / one-word
edits of earlier documents):

* ours, numba with ``--processes`` threads after a JIT warm-up (reported separately): signatures + LSH banding
  from raw text (normalization, signatures, band hashes, candidate pairs verified on signatures, clusters: the
  goal's scope and the same work as datasketch's path below), then ``deduplicate`` end to end (+ id checks, keep
  order, kept / removed output frames);
* datasketch ``MinHash.bulk`` (sha1, default affine32 scheme) over the same normalized shingles in
  ``--processes`` worker processes, then ``MinHashLSH`` greedy keep/drop in the parent (query; drop if a
  kept candidate has jaccard >= threshold; else insert);
* datasketch's per-document ``MinHash().update(shingle)`` loop in the same worker processes;
* agreement of keep/drop decisions between ours (default xxh64 hash) and datasketch;
* 13-gram decontamination throughput (``find_contamination``: n-gram detector only, then with the MinHash
  detector) against a synthetic eval set with items planted verbatim in some responses, compared with the dedup
  signatures + LSH banding above: ``--repeat`` rounds, each timing dedup, then both decontamination settings back to
  back (ratios within a round; the medians are reported, as the machine's load varies);
* incremental decontamination: the corpus cut into ``--shards`` shards, the state built with all but the last, then
  the last shard added (``decontaminate_shards`` on the whole table, outputs included) against checking that shard
  alone (``decontaminate`` of the shard), again per round, and checked equal to a full check byte for byte.

The last line is ``key=value`` pairs: ``ratio_vs_bulk`` (ours / datasketch bulk+LSH docs/s) and ``docs_per_s`` for
signatures + LSH banding, ``decontam_vs_dedup`` and ``decontam_both_vs_dedup`` (n-gram detector, both detectors:
docs/s over the dedup docs/s of the same round), ``decontam_incremental_vs_shard`` (a new shard's incremental cost
over checking it alone), ``decontam_incremental_check_vs_shard`` (the same without the table-wide parts: content
hashes of every shard, outputs for the whole table) and the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.common.data.schema import MESSAGE, conversation_text  # noqa: E402
from assets.common.text.minhash.config import MinHashConfig  # noqa: E402
from assets.common.text.minhash.lsh import band_hashes, within_pairs  # noqa: E402
from assets.common.text.minhash.signatures import compute_signatures, equal_counts  # noqa: E402
from assets.common.text.normalize import normalize, shingles  # noqa: E402
from assets.decontamination.config import DecontamConfig  # noqa: E402
from assets.decontamination.incremental import decontaminate_shards  # noqa: E402
from assets.decontamination.index import EvalIndex  # noqa: E402
from assets.decontamination.matching import find_contamination  # noqa: E402
from assets.decontamination.removal import decontaminate  # noqa: E402
from assets.dedup.clusters import connected_components  # noqa: E402
from assets.dedup.near_duplicates import deduplicate  # noqa: E402
from benchmarks.common import load_average  # noqa: E402

# --------------------------------------------------------------------------------------------------------
# synthetic data


def make_vocab(rng: np.random.Generator, size: int) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 11, size * 2)
    words = {"".join(rng.choice(letters, k)) for k in lengths}
    return np.array(sorted(words)[:size])


def make_corpus(n_docs: int, dup_frac: float, seed: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Conversations of ~1k characters; ``dup_frac`` of them are light edits of an earlier one.
    Returns the frame, the vocabulary and per row the planted edit ("" = original)."""
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng, 20000)
    ranks = np.minimum(rng.zipf(1.15, size=(n_docs, 175)) - 1, vocab.size - 1)
    user_len = rng.integers(12, 30, n_docs)
    total_len = rng.integers(140, 175, n_docs)
    users, assistants = [], []
    for i in range(n_docs):
        words = vocab[ranks[i, : total_len[i]]]
        users.append(" ".join(words[: user_len[i]]).capitalize() + "?")
        body = words[user_len[i] :]
        sentences = [" ".join(body[k : k + 14]).capitalize() + "." for k in range(0, body.size, 14)]
        assistants.append(" ".join(sentences))
    edits = np.array([""] * n_docs, dtype=object)
    n_dup = int(n_docs * dup_frac)
    targets = np.sort(rng.choice(np.arange(n_docs // 10, n_docs), n_dup, replace=False))  # sources first
    kinds = ["case", "whitespace", "punctuation", "one_word"]
    for t in targets:
        src = int(rng.integers(0, t))
        kind = kinds[int(rng.integers(len(kinds)))]
        u, a = users[src], assistants[src]
        if kind == "case":
            u, a = u.upper(), a.lower()
        elif kind == "whitespace":
            a = a.replace(" ", "  ").replace(". ", ".\n\n")
        elif kind == "punctuation":
            a = a.replace(".", "!").replace(" ", ", ", 5)
        else:
            words = a.split(" ")
            words[int(rng.integers(len(words)))] = str(vocab[int(rng.integers(vocab.size))])
            a = " ".join(words)
        users[t], assistants[t] = u, a
        edits[t] = kind
    df = pl.DataFrame(
        {
            "conversation_id": [f"0-{i}" for i in range(n_docs)],
            "messages": [
                [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
                for u, a in zip(users, assistants, strict=True)
            ],
            "shard": np.zeros(n_docs, dtype=np.int64),
            "row_index": np.arange(n_docs, dtype=np.int64),
        },
        schema={
            "conversation_id": pl.Utf8,
            "messages": pl.List(MESSAGE),
            "shard": pl.Int64,
            "row_index": pl.Int64,
        },
    )
    return df, vocab, edits


def make_eval(vocab: np.ndarray, n_items: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    texts = [" ".join(vocab[rng.integers(0, vocab.size, int(rng.integers(15, 80)))]) for _ in range(n_items)]
    return pl.DataFrame(
        {
            "benchmark": [f"bench{i % 4}" for i in range(n_items)],
            "item_id": [str(i) for i in range(n_items)],
            "field": ["question"] * n_items,
            "text": texts,
        }
    )


def plant_contamination(
    df: pl.DataFrame, eval_df: pl.DataFrame, frac: float, seed: int
) -> tuple[pl.DataFrame, set]:
    """Embed a random eval item verbatim in the middle of ``frac`` of the responses."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(df.height, int(df.height * frac), replace=False)
    items = rng.integers(0, eval_df.height, rows.size)
    messages = df["messages"].to_list()
    for r, it in zip(rows, items, strict=True):
        content = messages[r][1]["content"]
        cut = len(content) // 2
        messages[r][1]["content"] = f"{content[:cut]} {eval_df['text'][int(it)]} {content[cut:]}"
    out = df.with_columns(pl.Series("messages", messages, dtype=pl.List(MESSAGE)))
    return out, {f"0-{r}" for r in rows}


# --------------------------------------------------------------------------------------------------------
# datasketch workers (top-level so they pickle)


def _ds_bulk(args: tuple[list[str], int, int]) -> np.ndarray:
    from datasketch import MinHash

    texts, num_perm, seed = args
    sets = [[s.encode("utf-8") for s in shingles(t, "word", 5)] for t in texts]
    return np.stack([m.hashvalues for m in MinHash.bulk(sets, num_perm=num_perm, seed=seed)])


def _ds_update(args: tuple[list[str], int, int]) -> np.ndarray:
    from datasketch import MinHash

    texts, num_perm, seed = args
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for i, t in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=seed)
        for s in shingles(t, "word", 5):
            m.update(s.encode("utf-8"))
        out[i] = m.hashvalues
    return out


def _parallel(fn, texts: list[str], processes: int, cfg: MinHashConfig) -> tuple[np.ndarray, float]:
    chunks = np.array_split(np.arange(len(texts)), processes * 4)
    work = [([texts[i] for i in c], cfg.num_perm, cfg.seed) for c in chunks if c.size]
    ctx = mp.get_context("fork")
    with ctx.Pool(processes) as pool:
        start = time.perf_counter()
        parts = pool.map(fn, work)
        elapsed = time.perf_counter() - start
    return np.concatenate(parts), elapsed


def _datasketch_greedy(sigs: np.ndarray, cfg: MinHashConfig) -> tuple[np.ndarray, float]:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    perms = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).permutations
    minhashes = [
        MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashvalues=s, permutations=perms, scheme="affine32")
        for s in sigs
    ]
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    keep = np.zeros(len(minhashes), dtype=bool)
    for i, m in enumerate(minhashes):
        if not any(m.jaccard(minhashes[c]) >= cfg.threshold for c in lsh.query(m)):
            lsh.insert(i, m)
            keep[i] = True
    return keep, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dup-frac", type=float, default=0.1)
    parser.add_argument("--processes", type=int, default=2, help="numba threads and datasketch processes")
    parser.add_argument("--update-docs", type=int, default=None, help="docs for the slow update loop (all)")
    parser.add_argument("--eval-items", type=int, default=5000)
    parser.add_argument("--contam-frac", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the decontamination and incremental timings")
    parser.add_argument("--shards", type=int, default=10, help="shards of the incremental measurement")
    parser.add_argument("--skip-datasketch", action="store_true", help="leave out the (slow) datasketch comparison")
    args = parser.parse_args()

    import numba

    numba.set_num_threads(min(args.processes, numba.config.NUMBA_NUM_THREADS))
    cfg = MinHashConfig()
    print(
        f"cpus={os.cpu_count()} numba_threads={numba.get_num_threads()} datasketch_processes={args.processes} "
        f"load={load_average()}"
    )
    print(f"config: {cfg} bands x rows = {cfg.params}")

    t0 = time.perf_counter()
    df, vocab, edits = make_corpus(args.docs, args.dup_frac, args.seed)
    chars = df.select(conversation_text().str.len_chars().mean()).item()
    print(
        f"corpus: {df.height} docs, mean {chars:.0f} chars, {int((edits != '').sum())} planted near-dups "
        f"(built in {time.perf_counter() - t0:.1f}s)"
    )

    # JIT warm-up (numba compiles on first call, or loads its on-disk cache)
    t0 = time.perf_counter()
    head = df.head(200)
    copies = head.head(20).with_columns(pl.col("row_index") + 1000, pl.format("w-{}", "conversation_id"))
    deduplicate(pl.concat([head, copies]), cfg)  # with duplicates, so every kernel runs
    eval_df = make_eval(vocab, args.eval_items, args.seed + 1)
    find_contamination(df.head(200), eval_df.head(50))
    print(f"jit warm-up: {time.perf_counter() - t0:.1f}s")

    # ours: the goal's scope (signatures + LSH banding, the same work as datasketch's bulk + MinHashLSH below,
    # but from raw text: normalization included), then the whole deduplicate() with its output tables
    texts = df.select(conversation_text()).to_series()
    t0 = time.perf_counter()
    sigs = compute_signatures(texts, cfg)
    sig_s = time.perf_counter() - t0
    wi, wj = within_pairs(band_hashes(sigs, cfg))
    ok = equal_counts(sigs, wi, sigs, wj) / cfg.num_perm >= cfg.threshold
    roots = connected_components(sigs.shape[0], wi[ok], wj[ok])
    core_s = time.perf_counter() - t0
    ours_rate = df.height / core_s
    t0 = time.perf_counter()
    result = deduplicate(df, cfg)
    e2e_s = time.perf_counter() - t0
    print(
        f"ours signatures + LSH banding (from raw text; candidates verified, clustered): {core_s:.2f}s = "
        f"{ours_rate:,.0f} docs/s (normalize + signatures {sig_s:.2f}s = {df.height / sig_s:,.0f} docs/s); "
        f"removed {int((roots != np.arange(roots.size)).sum())}"
    )
    print(
        f"ours deduplicate() end to end (+ id checks, keep order, output tables): {e2e_s:.2f}s = "
        f"{df.height / e2e_s:,.0f} docs/s; removed {result.stats['rows_removed']}"
    )

    ds_rate = None if args.skip_datasketch else _datasketch(df, texts, edits, result, cfg, args)

    # decontamination, and dedup again in the same rounds
    contaminated, truth = plant_contamination(df, eval_df, args.contam_frac, args.seed + 2)
    ratios = _decontamination_rounds(contaminated, truth, eval_df, texts, cfg, args.repeat)
    incremental, check_only = _incremental_rounds(contaminated, eval_df, args.shards, args.repeat)

    bulk = f"{ours_rate / ds_rate:.1f}" if ds_rate else "skipped"
    pairs = {"ratio_vs_bulk": bulk, "docs_per_s": f"{ours_rate:.0f}",
             "decontam_vs_dedup": f"{ratios[0]:.2f}", "decontam_both_vs_dedup": f"{ratios[1]:.2f}",
             "decontam_incremental_vs_shard": f"{incremental:.2f}",
             "decontam_incremental_check_vs_shard": f"{check_only:.2f}", "load": load_average()}
    print(" ".join(f"{k}={v}" for k, v in pairs.items()))


def _datasketch(df: pl.DataFrame, texts: pl.Series, edits: np.ndarray, result, cfg: MinHashConfig,
                args: argparse.Namespace) -> float:
    """datasketch bulk + LSH, its update loop, and its agreement with ours; returns its docs/s (bulk + LSH)."""
    normalized = normalize(texts).to_list()
    ds_sigs, bulk_s = _parallel(_ds_bulk, normalized, args.processes, cfg)
    ds_keep, lsh_s = _datasketch_greedy(ds_sigs, cfg)
    ds_rate = df.height / (bulk_s + lsh_s)
    print(
        f"datasketch MinHash.bulk x{args.processes} procs: {bulk_s:.2f}s = {df.height / bulk_s:,.0f} docs/s; "
        f"+ MinHashLSH greedy {lsh_s:.2f}s -> {ds_rate:,.0f} docs/s"
    )
    sha1_sigs = compute_signatures(texts, MinHashConfig(hash="sha1"))
    print(f"sha1 signatures identical to datasketch: {bool(np.array_equal(sha1_sigs, ds_sigs))}")

    # datasketch per-doc update loop
    n_upd = min(args.update_docs or df.height, df.height)
    _, upd_s = _parallel(_ds_update, normalized[:n_upd], args.processes, cfg)
    print(
        f"datasketch update loop x{args.processes} procs: {n_upd} docs in {upd_s:.2f}s "
        f"= {n_upd / upd_s:,.0f} docs/s"
    )

    # agreement
    ours_keep = np.zeros(df.height, dtype=bool)
    ours_keep[result.kept["row_index"].to_numpy()] = True
    planted = edits != ""
    print(
        f"decision agreement ours(xxh64) vs datasketch(sha1): {(ours_keep == ds_keep).mean():.4%} "
        f"({int((ours_keep != ds_keep).sum())} rows differ); planted near-dups removed: ours "
        f"{(~ours_keep[planted]).mean():.2%}, datasketch {(~ds_keep[planted]).mean():.2%}; "
        f"originals removed: ours {int((~ours_keep[~planted]).sum())}, "
        f"datasketch {int((~ds_keep[~planted]).sum())}"
    )
    return ds_rate


def _dedup_core(texts: pl.Series, cfg: MinHashConfig) -> float:
    """Seconds of the dedup core measured above: signatures + LSH banding from raw text, verified, clustered."""
    t0 = time.perf_counter()
    sigs = compute_signatures(texts, cfg)
    wi, wj = within_pairs(band_hashes(sigs, cfg))
    ok = equal_counts(sigs, wi, sigs, wj) / cfg.num_perm >= cfg.threshold
    connected_components(sigs.shape[0], wi[ok], wj[ok])
    return time.perf_counter() - t0


def _decontamination_rounds(contaminated: pl.DataFrame, truth: set, eval_df: pl.DataFrame, texts: pl.Series,
                            cfg: MinHashConfig, repeat: int) -> tuple[float, float]:
    """Per round: dedup core, then find_contamination with the n-gram detector, then with both detectors; returns
    the median ratios (decontamination docs/s over dedup docs/s)."""
    settings = [("13-gram only", DecontamConfig(minhash=None)), ("13-gram + minhash", DecontamConfig())]
    indexes = {}
    for name, dcfg in settings:
        t0 = time.perf_counter()
        indexes[name] = EvalIndex.build(eval_df, dcfg)
        print(f"decontam {name}: eval index {eval_df.height} items in {time.perf_counter() - t0:.2f}s")
    ratios: list[list[float]] = [[], []]
    n = contaminated.height
    for round_ in range(repeat):
        dedup_s = _dedup_core(texts, cfg)
        line = [f"round {round_ + 1}: dedup {n / dedup_s:,.0f} docs/s"]
        for k, (name, _dcfg) in enumerate(settings):
            t0 = time.perf_counter()
            matches = find_contamination(contaminated, indexes[name])
            seconds = time.perf_counter() - t0
            found = set(matches["conversation_id"].to_list())
            ratios[k].append(dedup_s / seconds)
            line.append(f"{name} {n / seconds:,.0f} docs/s ({dedup_s / seconds:.2f}x; planted {len(truth)}, caught "
                        f"{len(truth & found)}, extra {len(found - truth)})")
        print("; ".join(line) + f"; load {load_average()}", flush=True)
    return statistics.median(ratios[0]), statistics.median(ratios[1])


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _incremental_rounds(contaminated: pl.DataFrame, eval_df: pl.DataFrame, shards: int,
                        repeat: int) -> tuple[float, float]:
    """The last of ``shards`` shards added to a state holding the others (both detectors, outputs for the whole
    table included) against decontaminating that shard alone; returns the median ratios of the whole call and of
    its check (state read, new shard checked, earlier rows re-checked, state written: without the content hashes of
    every shard and the outputs for the whole table)."""
    index = EvalIndex.build(eval_df, DecontamConfig())
    size = -(-contaminated.height // shards)
    ratios, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # the table as the asset gets it: read from Parquet (its strings then sit in a few large buffers)
        contaminated.with_columns((pl.col("row_index") // size).alias("shard")).write_parquet(Path(tmp) / "t.parquet")
        table = pl.read_parquet(Path(tmp) / "t.parquet")
        last = table.filter(pl.col("shard") == shards - 1)
        built = Path(tmp) / "built"
        decontaminate_shards(table.filter(pl.col("shard") < shards - 1), index, built)
        for round_ in range(repeat):
            state = Path(tmp) / f"state-{round_}"
            shutil.copytree(built, state)
            t0 = time.perf_counter()
            result = decontaminate_shards(table, index, state)
            incremental_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            decontaminate(last, index)
            alone_s = time.perf_counter() - t0
            ratios.append(incremental_s / alone_s)
            checks.append((result.seconds["check"] + result.seconds["save"]) / alone_s)
            phases = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.seconds.items())
            print(f"incremental round {round_ + 1}: new shard of {last.height} rows into a table of {table.height}: "
                  f"{incremental_s * 1000:.0f} ms ({phases}; new {result.new_shards}, re-checked "
                  f"{result.rechecked_rows} rows) vs the shard alone {alone_s * 1000:.0f} ms: "
                  f"{incremental_s / alone_s:.2f}x; load {load_average()}", flush=True)
    kept, rejected, report = decontaminate(table, index)
    same = (_parquet_bytes(result.kept) == _parquet_bytes(kept)
            and _parquet_bytes(result.rejected) == _parquet_bytes(rejected)
            and json.dumps(result.report) == json.dumps(report))
    print(f"incremental outputs equal a full check byte for byte: {same}")
    return statistics.median(ratios), statistics.median(checks)


if __name__ == "__main__":
    main()
