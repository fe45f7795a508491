"""Does selecting by the student's difficulty help? (issue 20.5; run by hand, not in CI.) SKELETON: runnable at
small N, not yet run at full size.

    .venv/bin/python benchmarks/selection.py --conversations data/tagged_conversations/data/<hash>.parquet \\
        --base-model data/models/student/<dir> --rows 1000 --prompts 541
    .venv/bin/python benchmarks/selection.py ... --rows 40 --prompts 8 --skip-eval     # a smoke run: losses only

The conversations are a table the pipeline wrote (e.g. `tagged_conversations` of a `dataset_rebuild` run with
`num_conversations: 1000` or more): generated once and content-addressed by the pipeline's storage, so a rerun of
this script never regenerates them. ``--rows`` takes that many by a seeded hash of their id.

1. IFD of every row with the student (``assets.difficulty.core``), cached in ``--out`` by (model hash, table hash).
2. One split for all arms (the mixture's: seeded, stratified by source and task); the same validation rows for all.
3. Three training sets: **top_ifd** (``select: {by: ifd, keep}``, IFD >= 1 dropped, the diversity floor), **random**
   (seeded rows of the train pool up to the same trainable-token budget as top_ifd) and **all** (every train-pool row:
   the reference with the whole budget; its budget is larger, which the table states).
4. The demo student trained on each (``training.run.run_training``, the demo's settings unless ``--set``), its best
   validation loss; then, unless ``--skip-eval``, greedy answers to ``--prompts`` IFEval prompts on vLLM for each
   trained model and the teacher (the line to reach), scored by IFEval's verifiers: prompt-level strict accuracy and
   turn completion, each arm against random with a paired bootstrap 95% interval (``assets.evaluation.report``).

Prints one Markdown table and writes ``--out/selection.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import add_model_arguments, load_average, resolve_model  # noqa: E402

DEMO_TRAINING = {"num_train_epochs": 3, "per_device_train_batch_size": 8, "max_length": 512,
                 "marker_learning_rate": 5.0e-3, "seed": 0, "early_stopping_patience": 2}


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", required=True, help="a conversation table (Parquet) the pipeline wrote")
    parser.add_argument("--base-model", required=True, help="the prepared student directory (base_model's path)")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--embedding-model", default="multilingual-e5-small-q4")
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--prompts", type=int, default=541, help="IFEval prompts (541 = all, for the final table)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--skip-eval", action="store_true", help="validation losses only (no vLLM)")
    parser.add_argument("--set", action="append", default=[], help="a training setting, key=value (JSON value)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "data" / "benchmarks" / "selection"))
    add_model_arguments(parser)  # the teacher (default: embedded SmolLM2-135M-Instruct)
    return parser


def _rows(path: str, n: int, seed: int):
    import polars as pl

    from assets.mixture.split import split_hash

    table = pl.read_parquet(path)
    ranked = table.with_columns(split_hash(table["conversation_id"], seed).alias("__rank")).sort("__rank")
    return ranked.head(n).drop("__rank").sort("conversation_id")


def _scores(rows, model_dir: str, out: Path):
    """IFD of every row, cached by (model content hash, rows' ids and messages)."""
    import polars as pl

    from assets.common.models.integrity import model_content_hash
    from assets.difficulty.core import IFDConfig, load_student, score_rows

    digest = hashlib.sha256(model_content_hash(model_dir).encode())
    digest.update(rows.select("conversation_id", "messages").write_json().encode())
    cached = out / f"ifd-{digest.hexdigest()[:16]}.parquet"
    if cached.exists():
        return pl.read_parquet(cached)
    config = IFDConfig()
    model, tokenizer, template = load_student(model_dir, config)
    scores = score_rows(rows, model, tokenizer, template, config)
    cached.parent.mkdir(parents=True, exist_ok=True)
    scores.write_parquet(cached)
    return scores


def _arms(rows, scores, args, count_tokens):
    """name -> mixture (train + the shared validation rows) of each arm, and the top_ifd arm's token budget."""
    import polars as pl

    from assets.common.data.schema import DIFFICULTY_COLUMNS
    from assets.common.text.embeddings import Embedder, EmbeddingConfig
    from assets.mixture.core import MixtureConfig, build_mixture

    joined = rows.join(scores.select("conversation_id", *DIFFICULTY_COLUMNS), on="conversation_id", how="left")
    base = {"validation_fraction": args.validation_fraction, "seed": args.seed}
    every = build_mixture(joined, MixtureConfig(**base), count_tokens=count_tokens).mixture
    validation, train_pool = every.filter(pl.col("split") == "validation"), every.filter(pl.col("split") == "train")
    embed = Embedder(EmbeddingConfig(model=args.embedding_model), Path(args.out) / "embeddings").embed
    select = {"keep": args.keep, "embedding_model": args.embedding_model}
    top = build_mixture(joined, MixtureConfig(**base, select=select), count_tokens=count_tokens,
                        embed=embed).mixture.filter(pl.col("split") == "train")
    budget = int(top["mix_trainable_tokens"].sum())
    shuffled = train_pool.sample(fraction=1.0, shuffle=True, seed=args.seed)
    within = shuffled["mix_trainable_tokens"].cum_sum() <= budget
    random = shuffled.filter(within | (within.cum_sum() == 0))  # at least one row
    columns = validation.columns
    return {name: pl.concat([train.select(columns), validation]) for name, train in
            (("random", random), ("top_ifd", top), ("all", train_pool))}, budget


def _train(name: str, mixture, base_manifest: dict, settings: dict, out: Path) -> dict:
    from training.config import TrainConfig
    from training.continual import ContinualConfig
    from training.run import run_training

    data_hash = hashlib.sha256(mixture.select("conversation_id", "split").write_json().encode()).hexdigest()
    run = run_training(base_manifest, mixture, TrainConfig.from_dict(settings), ContinualConfig(), out / "models",
                       f"selection-{name}", data_hash=data_hash, log=lambda m: None)
    train = mixture.filter(mixture["split"] == "train")
    return {"model_dir": str(run.result.model_dir), "train_rows": train.height,
            "trainable_tokens": int(train["mix_trainable_tokens"].sum()),
            "validation_loss": run.result.metrics.get("best_eval_loss") or run.result.metrics.get("eval_loss")}


def _evaluate(models: dict[str, str], args) -> dict:
    """IFEval strict and turn completion of every model, each arm against random (paired bootstrap)."""
    from assets.common.models.engine import EngineConfig
    from assets.evaluation.answering import PromptSet, answer_prompt_sets, answers_of, answers_table
    from assets.evaluation.prompts import load_ifeval_items, select_prompts
    from assets.evaluation.report import evaluation_report

    items = select_prompts(load_ifeval_items(), args.prompts, args.seed)
    prompt_set = PromptSet("ifeval", tuple(i.key for i in items), tuple(i.prompt for i in items), args.max_tokens)
    results = [answer_prompt_sets(name, path, [prompt_set], EngineConfig()) for name, path in models.items()]
    table = answers_table(results, [prompt_set])
    answers = {name: answers_of(table, name, "ifeval") for name in models}
    out = {"prompts": len(items), "models": {}, "vs_random": {}}
    for arm in ("top_ifd", "all"):
        report = evaluation_report(items, {k: answers[k] for k in ("random", arm)}, base="random", tuned=arm,
                                   seed=args.seed).data
        out["vs_random"][arm] = report["comparison"]
    report = evaluation_report(items, answers).data
    out["models"] = {name: {"prompt_strict": m["prompt_strict"], "turn_completion": m["turn_completion"]}
                     for name, m in report["models"].items()}
    return out


def _table(trained: dict, evaluation: dict | None, budget: int) -> str:
    lines = ["| arm | train rows | trainable tokens | best validation loss | IFEval prompt strict | turn completion "
             "| strict vs random [95% CI] |", "|---|---|---|---|---|---|---|"]
    for name, t in trained.items():
        m = (evaluation or {}).get("models", {}).get(name, {})
        c = (evaluation or {}).get("vs_random", {}).get(name, {}).get("prompt_strict")
        versus = f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" if c else "-"
        lines.append(f"| {name} | {t['train_rows']} | {t['trainable_tokens']} | {t['validation_loss']} | "
                     f"{m.get('prompt_strict', '-')} | {m.get('turn_completion', '-')} | {versus} |")
    if evaluation:
        teacher = evaluation["models"].get("teacher", {})
        lines.append(f"| teacher (the line to reach) | | | | {teacher.get('prompt_strict')} | "
                     f"{teacher.get('turn_completion')} | |")
    lines.append(f"\nbudget (top_ifd's trainable tokens) {budget}; `all` trains on every train-pool row")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from assets.common.models.integrity import model_content_hash
    from assets.mixture.tokens import student_token_counter

    args = _arguments().parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    rows = _rows(args.conversations, args.rows, args.seed)
    scores = _scores(rows, args.base_model, out)
    arms, budget = _arms(rows, scores, args, student_token_counter(args.base_model))
    settings = {**DEMO_TRAINING, **{k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}}
    base_manifest = {"path": args.base_model, "content_hash": model_content_hash(args.base_model)}
    trained = {name: _train(name, mixture, base_manifest, settings, out) for name, mixture in arms.items()}
    evaluation = None
    if not args.skip_eval:
        models = {name: t["model_dir"] for name, t in trained.items()}
        evaluation = _evaluate({**models, "teacher": str(resolve_model(args).path)}, args)
    result = {"rows": rows.height, "budget": budget, "trained": trained, "evaluation": evaluation,
              "seconds": round(time.perf_counter() - started, 1), "load_average": load_average()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(result, indent=2, default=str))
    print(_table(trained, evaluation, budget))
    print(f"\nrows={rows.height} seconds={result['seconds']} load={result['load_average']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
