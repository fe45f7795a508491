"""The two tokenization paths of a build, the per-row version against the batched one, in one run (by hand, not in
CI): the mixture's token counts (``unit: tokens``) and the training tokenization (``training.dataset.tokenize_rows``,
what ``sft_model`` runs before it trains).

    nice -n 10 .venv/bin/python benchmarks/tokenization.py --model DIR [--model DIR2] --rows 20000
    .venv/bin/python benchmarks/tokenization.py --model DIR --rows 2000 --old-ref HEAD~1
    nice -n 10 .venv/bin/python benchmarks/tokenization.py --model DIR --rows 10000 --cache

``DIR``: a model directory with a tokenizer and a chat template, e.g. the demo's prepared student
(``data/models/student/gemma-3-270m-<key>``, gemma template) or the embedded teacher
(``data/models/embedded/SmolLM2-135M-Instruct``, ChatML); only the tokenizer files are read. The rows are the scale
benchmark's synthetic ones (``benchmarks/scale_data.py``, shards 0, 1, ...: 1-3 turns, 20% with a system prompt,
nine languages, ~2 KB a row; the eval leaks get placeholder texts), 5% of them validation rows.

The old version is ``git show <old-ref>:training/masking.py`` (and ``training/dataset.py``, bound to that masking)
loaded as modules. Per model and path: wall and CPU seconds (CPU of every thread: the fast tokenizer encodes a batch
on all cores), rows/s, CPU ms a row, and the ratios old/new; then the equality checks, which must hold: every row's
counts (tokens, trained tokens), end-of-turn positions and assistant character spans; the rows table with its
``num_tokens`` and ``tokens_sha256`` (every row's ids and masks); the checkpoint fingerprint of the datasets. The last
line is ``key=value`` pairs.

``--cache``: the token cache instead (``assets/common/models/token_cache.py``): the mixture's counts without the
cache (``StudentTokenCounter.many``) and with a cold one (``CachedTokenCounts.table``, which now also keeps every
row's ids, masks and digest: the cost of keeping them), then ``tokenize_rows`` cold (no cache) and warm (every row
kept by that count), checking the same rows table, examples and fingerprint; and the cache's bytes on disk.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from benchmarks.common import load_average  # noqa: E402
from benchmarks.scale_data import SHARD_ROWS, Generator  # noqa: E402
from training.checkpoints import run_fingerprint  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.dataset import TOKENIZE_CHUNK_ROWS, tokenize_rows  # noqa: E402
from training.masking import assistant_end_of_turn, tokenize_conversations  # noqa: E402


def _load(ref: str, path: str, name: str):
    source = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def old_modules(ref: str):
    """``training/masking.py`` and ``training/dataset.py`` at ``ref``, the latter importing the former."""
    masking = _load(ref, "training/masking.py", "masking_old")
    current = sys.modules["training.masking"]
    sys.modules["training.masking"] = masking
    try:
        dataset = _load(ref, "training/dataset.py", "dataset_old")
    finally:
        sys.modules["training.masking"] = current
    return masking, dataset


def synthetic_rows(n: int) -> pl.DataFrame:
    generator = Generator([" ".join(f"eval{i}w{j}" for j in range(30)) for i in range(50)])
    shards = [generator.shard(k, min(SHARD_ROWS, n - k * SHARD_ROWS))[0] for k in range(-(-n // SHARD_ROWS))]
    table = pl.concat(shards).select("conversation_id", "messages")
    return table.with_columns(split=pl.when(pl.int_range(pl.len()) % 20 == 19).then(pl.lit("validation"))
                              .otherwise(pl.lit("train")))


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def counts_old(masking, tokenizer, template, end_of_turn, conversations):
    """The mixture's counter before: one conversation at a time (plus what the equality check compares)."""
    out = []
    for messages in conversations:
        t = masking.tokenize_conversation(tokenizer, list(messages), template, end_of_turn)
        out.append((len(t.input_ids), sum(t.assistant_masks), t.end_of_turn_token_positions, t.assistant_char_spans))
    return out


def counts_new(tokenizer, template, end_of_turn, conversations):
    """The mixture's counter now (``StudentTokenCounter.many``: chunks of 2,000), recording the same."""
    out = []
    for start in range(0, len(conversations), TOKENIZE_CHUNK_ROWS):
        for t in tokenize_conversations(tokenizer, conversations[start:start + TOKENIZE_CHUNK_ROWS], template,
                                        end_of_turn):
            out.append((len(t.input_ids), sum(t.assistant_masks), t.end_of_turn_token_positions,
                        t.assistant_char_spans))
    return out


def compare(model: str, rows: pl.DataFrame, masking, dataset) -> dict:
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import read_chat_template

    tokenizer, template = AutoTokenizer.from_pretrained(model), read_chat_template(model)
    end_of_turn = assistant_end_of_turn(tokenizer, template)
    conversations, n = rows["messages"].to_list(), rows.height
    name = Path(model).name.split("-")[0].lower()
    figures = {}
    old, wall_old, cpu_old = timed(counts_old, masking, tokenizer, template, end_of_turn, conversations)
    new, wall_new, cpu_new = timed(counts_new, tokenizer, template, end_of_turn, conversations)
    assert old == new, "token counts, end-of-turn positions or spans differ"
    figures["counts"] = (wall_old, cpu_old, wall_new, cpu_new)
    tokens = sum(c[0] for c in new)
    del old, new
    max_length = TrainConfig().max_length
    old, wall_old, cpu_old = timed(dataset.tokenize_rows, tokenizer, rows, template, max_length)
    new, wall_new, cpu_new = timed(tokenize_rows, tokenizer, rows, template, max_length)
    assert old.rows.equals(new.rows), "rows table (num_tokens, tokens_sha256) differs"
    prints = [run_fingerprint(Path("m"), TrainConfig(), "h", d.train, d.validation) for d in (old, new)]
    assert prints[0] == prints[1], "checkpoint fingerprint differs"
    figures["tokenize_rows"] = (wall_old, cpu_old, wall_new, cpu_new)
    print(f"\n{model} ({name}): {n} rows, {tokens / n:.0f} tokens a row, end of turn {end_of_turn!r}; equal: counts, "
          f"end-of-turn positions, spans, rows table with tokens_sha256, fingerprint {prints[1][:12]}", flush=True)
    print("| path | old rows/s | old CPU ms/row | new rows/s | new CPU ms/row | ratio wall | ratio CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    out = {}
    for path, (wo, co, wn, cn) in figures.items():
        print(f"| {path} | {n / wo:,.0f} | {co / n * 1e3:.3f} | {n / wn:,.0f} | {cn / n * 1e3:.3f} | "
              f"{wo / wn:.2f} | {co / cn:.2f} |", flush=True)
        out |= {f"{name}_{path}_rows_per_s": round(n / wn), f"{name}_{path}_cpu_ms": round(cn / n * 1e3, 3),
                f"{name}_{path}_ratio_wall": round(wo / wn, 2), f"{name}_{path}_ratio_cpu": round(co / cn, 2)}
    return out


def cache_figures(model: str, rows: pl.DataFrame) -> dict:
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import read_chat_template
    from assets.common.models.token_cache import TokenizedRowsCache
    from assets.mixture.tokens import CachedTokenCounts, StudentTokenCounter

    tokenizer, template, n = AutoTokenizer.from_pretrained(model), read_chat_template(model), rows.height
    name, root = Path(model).name.split("-")[0].lower(), Path(tempfile.mkdtemp()) / "token_counts"
    conversations = rows["messages"].to_list()
    counter = StudentTokenCounter(model)
    plain, *counts = timed(counter.many, conversations)
    keeper = CachedTokenCounts(model, root)
    keeper._count  # noqa: B018 (its tokenizer loaded before the clock starts, as the plain counter's was)
    cached, *kept = timed(keeper.table, rows["messages"])
    assert [c[0] for c in plain] == cached["tokens"].to_list(), "cached counts differ"
    max_length = TrainConfig().max_length
    cold, *tokenized = timed(tokenize_rows, tokenizer, rows, template, max_length)
    warm, *read = timed(tokenize_rows, tokenizer, rows, template, max_length, TOKENIZE_CHUNK_ROWS,
                        TokenizedRowsCache(model, root))
    assert warm.rows_from_cache == n and warm.rows.equals(cold.rows), "rows table differs"
    assert all(getattr(warm, s).data.table.equals(getattr(cold, s).data.table) for s in ("train", "validation"))
    prints = [run_fingerprint(Path("m"), TrainConfig(), "h", d.train, d.validation) for d in (cold, warm)]
    assert prints[0] == prints[1], "checkpoint fingerprint differs"
    size = sum(f.stat().st_size for f in root.rglob("*.parquet"))
    print(f"\n{model} ({name}): {n} rows; equal: counts, rows table, examples, fingerprint {prints[1][:12]}; "
          f"cache {size / 1e6:.1f} MB ({size / n:,.0f} B a row)", flush=True)
    print("| step | wall s | CPU s | rows/s |\n|---|---:|---:|---:|")
    steps = {"counts_no_cache": counts, "counts_cold_cache": kept, "tokenize_rows_cold": tokenized,
             "tokenize_rows_warm": read}
    for step, (wall, cpu) in steps.items():
        print(f"| {step} | {wall:.1f} | {cpu:.1f} | {n / wall:,.0f} |", flush=True)
    return {**{f"{name}_{step}_rows_per_s": round(n / wall) for step, (wall, _) in steps.items()},
            f"{name}_warm_speedup": round(tokenized[0] / read[0], 2), f"{name}_cache_bytes_per_row": round(size / n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a model directory (repeatable)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--old-ref", default="main", help="git revision of the per-row version")
    parser.add_argument("--cache", action="store_true", help="time the token cache (cold vs warm) instead")
    args = parser.parse_args()
    masking, dataset = (None, None) if args.cache else old_modules(args.old_ref)
    start = time.perf_counter()
    rows = synthetic_rows(args.rows)
    print(f"{rows.height} synthetic rows in {time.perf_counter() - start:.1f} s; {os.cpu_count()} cores; "
          f"load average {load_average()}; old: {'-' if args.cache else args.old_ref}", flush=True)
    figures = {"rows": rows.height}
    for model in args.model:
        figures |= cache_figures(model, rows) if args.cache else compare(model, rows, masking, dataset)
    figures["load"] = load_average()
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
