"""`assistant_evaluation`: did the fine-tune make a better assistant? IFEval and turn completion for the base model,
the tuned model and the teacher, each served once on vLLM with its own chat template and stop tokens; P(end-of-turn)
at answer ends; the blocking checks promotion waits for (the model stops on its end-of-turn token, and is not worse
than the base)."""

import dagster as dg
import polars as pl

from assets.common.data.report import markdown_table
from assets.common.data.storage import sha256_file
from assets.common.orchestration.resources import (
    ASSISTANT_EVALUATION,
    BASE_MODEL,
    ENGINE_RETRY,
    EVALUATE_NEW_MODELS,
    GPU_POOL,
    JUDGED_MODEL,
    MODEL_MANIFEST,
    SFT_MIXTURE,
    SFT_MODEL,
    TEACHER_MODEL,
    DataStorage,
    Materialization,
    VLLMEngine,
    latest_materialization,
    verified_model,
)
from assets.evaluation.answering import (
    ANSWER_DESCRIPTIONS,
    ModelAnswers,
    PromptSet,
    answer_prompt_sets,
    answers_of,
    answers_table,
)
from assets.evaluation.base import BaseModelError, lineage_base
from assets.evaluation.prompts import IFEvalItem
from assets.evaluation.report import evaluation_report
from assets.evaluation.stopping import FIXED_PROMPTS, MIN_STOPPED, StopVerdict, stop_verdict
from assets.evaluation.summary import (
    BASE,
    IFEVAL,
    STOP_CHECK,
    TEACHER,
    TUNED,
    choose_prompts,
    difference_text,
    end_of_turn_line,
    end_of_turn_probabilities,
    new_runaways,
    not_worse_verdict,
    side_by_side,
    source_versions,
)


class EvaluationConfig(dg.Config):
    """What is evaluated and how strictly. The defaults are the production run (all of IFEval, answers up to 1280
    tokens, the teacher too); the demo profile evaluates a seeded subset of short-answer prompts."""

    num_prompts: int = 541
    """At most this many IFEval prompts, a seeded sample of the eligible ones (541 = the whole set)."""
    seed: int = 0
    """Seeds the prompt sample and the paired bootstrap."""
    short_answers_only: bool = False
    """Only prompts whose every instruction a short answer can meet (`DEFAULT_INSTRUCTION_RULES` in
    assets/evaluation/prompts.py, count bounds included): for a bounded `max_tokens` such as the demo's."""
    instruction_types: list[str] = []
    """IFEval instruction ids or fnmatch patterns (e.g. `change_case:*`): when set, only prompts whose every
    instruction matches one. Empty: every type."""
    max_tokens: int = 1280
    """Answer budget per IFEval prompt (greedy). An answer that reaches it did not complete its turn."""
    stop_check_max_tokens: int = 256
    """Answer budget for the stop check's fixed prompts (`assets/evaluation/stopping.py`)."""
    include_teacher: bool = True
    """Also evaluate the teacher (the `teacher_model` asset's model), when it has a manifest in storage."""
    tolerance_points: float = 2.0
    """`not_worse_than_base` fails when tuned - base prompt-level strict accuracy is below -tolerance_points
    (percentage points). Negative values require an improvement."""
    bootstrap_resamples: int = 2000
    """Paired bootstrap resamples for the 95% interval of tuned - base."""
    end_of_turn_conversations: int = 32
    """Validation conversations of `sft_mixture` whose answer ends give P(end-of-turn); 0 skips it."""
    side_by_side: int = 5
    """IFEval answers shown side by side (base, tuned, teacher) in the metadata."""

    def validate_values(self) -> None:
        for name in ("num_prompts", "max_tokens", "stop_check_max_tokens", "bootstrap_resamples"):
            if getattr(self, name) < 1:
                raise dg.Failure(description=f"assistant_evaluation config: {name} must be >= 1, got "
                                             f"{getattr(self, name)}")
        for name in ("end_of_turn_conversations", "side_by_side"):
            if getattr(self, name) < 0:
                raise dg.Failure(description=f"assistant_evaluation config: {name} must be >= 0, got "
                                             f"{getattr(self, name)}")


@dg.asset(
    group_name="evaluation",
    kinds={"vllm", "parquet"},
    deps=[BASE_MODEL, SFT_MIXTURE, SFT_MODEL],
    pool=GPU_POOL,
    automation_condition=EVALUATE_NEW_MODELS,
    retry_policy=ENGINE_RETRY,
    check_specs=[
        dg.AssetCheckSpec("answers_stop_on_eos", asset="assistant_evaluation", blocking=True, description=(
            "The tuned model ends its greedy answers to a fixed prompt set on its end-of-turn token: no prompt runs "
            "to max_tokens that the base model answers within it (a regression; the EOS-not-trained bug makes every "
            f"answer run away), and at least {MIN_STOPPED} of the {len(FIXED_PROMPTS)} answers end on the "
            "end-of-turn token (a stop on another EOS does not count). Base and tuned answers side by side.")),
        dg.AssetCheckSpec("not_worse_than_base", asset="assistant_evaluation", blocking=True, description=(
            "IFEval prompt-level strict accuracy: tuned - base >= -tolerance_points (config), with the paired "
            "bootstrap 95% interval reported.")),
    ],
)
def assistant_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, storage: DataStorage,
                         engine: VLLMEngine) -> dg.MaterializeResult:
    """Did the fine-tune make a better assistant? The candidate (the latest `sft_model`), the base model it was
    trained from (the one its lineage.json records, re-hashed; under its chosen chat template) and the teacher answer
    IFEval prompts and the stop check's fixed prompts, greedy, each model served once by vLLM with its own template
    and stop tokens. Scored offline by IFEval's verifiers (if-verifiable): prompt- and instruction-level strict and
    loose accuracy, per instruction type; turn completion (answers ending on the end-of-turn token within
    max_tokens; a stop on another EOS is counted apart); tuned - base with a paired bootstrap 95% interval;
    P(end-of-turn) at answer ends on validation conversations. Writes the answers (Parquet) and the report (JSON);
    its blocking checks gate promotion."""
    config.validate_values()
    candidate = latest_materialization(context.instance, SFT_MODEL)
    verified_model(candidate)  # its directory still holds the model trained (re-hashed)
    models, skipped = _models_to_evaluate(context, config, storage, candidate)
    items = _prompts(config)
    prompt_sets = [
        PromptSet(IFEVAL, tuple(i.key for i in items), tuple(i.prompt for i in items), config.max_tokens),
        PromptSet(STOP_CHECK, tuple(range(len(FIXED_PROMPTS))), FIXED_PROMPTS, config.stop_check_max_tokens),
    ]
    names = ", ".join(f"{name} ({model['model_dir']})" for name, model in models.items())
    context.log.info(f"evaluating {names} on "
                     f"{len(items)} IFEval prompts (seed {config.seed}) + {len(FIXED_PROMPTS)} stop-check prompts")

    results: dict[str, ModelAnswers] = {}
    for name, model in models.items():  # one engine start per model
        results[name] = answer_prompt_sets(name, model["model_dir"], prompt_sets, engine.engine_config())
        row = results[name].engine_row()
        context.log.info(f"{name}: engine start {row['startup_s']} s, {row['completion_tokens']} tokens in "
                         f"{row['generation_s']} s ({row['tok_per_s']} tok/s)")
    table = answers_table(list(results.values()), prompt_sets)
    stored = storage.write_table(ASSISTANT_EVALUATION, table, "answers", descriptions=ANSWER_DESCRIPTIONS)

    end_of_turn = _end_of_turn_probabilities(context, config, storage, models)
    report = evaluation_report(
        items, {name: answers_of(table, name, IFEVAL) for name in results}, base=BASE, tuned=TUNED,
        n_resamples=config.bootstrap_resamples, seed=config.seed,
        end_of_turn_probability={n: v["mean"] for n, v in end_of_turn["models"].items() if v.get("mean") is not None})
    stops = stop_verdict(FIXED_PROMPTS, results[BASE].answers[STOP_CHECK], results[TUNED].answers[STOP_CHECK])
    comparison = report.data["comparison"]["prompt_strict"]
    not_worse = not_worse_verdict(comparison, config.tolerance_points)
    ifeval_runaways = new_runaways(table)

    document = {
        "config": config.model_dump(),
        "candidate": {"sft_model_storage_id": candidate.storage_id, "dagster_run_id": candidate.run_id,
                      "model_dir": models[TUNED]["model_dir"], "content_hash": models[TUNED]["content_hash"]},
        "models": {name: {**model, "stop_tokens": list(results[name].stop_tokens)} for name, model in models.items()},
        "skipped_models": skipped,
        "answers": stored.to_dict(),
        "ifeval": report.data,  # accuracies per model, per instruction type, tuned - base (assets/evaluation/report.py)
        "end_of_turn_probability": end_of_turn,
        "stop_check": {"passed": stops.passed, "max_tokens": config.stop_check_max_tokens,
                       "new_runaways": stops.new_runaways, "inherited_runaways": stops.inherited_runaways,
                       "stopped": stops.stopped, "min_stopped": stops.min_stopped,
                       "stopped_on_other_eos": stops.other_eos, "prompts": len(stops.rows),
                       "ifeval_new_runaways": ifeval_runaways},
        "not_worse_than_base": not_worse,
        "sources": source_versions(results),
    }
    report_path = storage.write_json(ASSISTANT_EVALUATION, "report", document)
    summary = report.markdown + "\n\n" + end_of_turn_line(end_of_turn)
    context.log.info(f"evaluation written to {report_path}; prompt strict tuned - base "
                     f"{100 * comparison['difference']:+.1f} points [{100 * comparison['low']:+.1f}, "
                     f"{100 * comparison['high']:+.1f}]")
    return dg.MaterializeResult(
        metadata={
            **stored.metadata(),
            "report": dg.MetadataValue.path(str(report_path)),
            "report_content_hash": sha256_file(report_path),
            "summary": dg.MetadataValue.md(summary),
            "tuned_minus_base": difference_text(comparison),
            "prompt_strict_base": comparison["base"],
            "prompt_strict_tuned": comparison["tuned"],
            "prompt_strict_difference": comparison["difference"],
            "prompt_strict_ci95_low": comparison["low"],
            "prompt_strict_ci95_high": comparison["high"],
            "per_instruction_type": dg.MetadataValue.md(report.per_instruction_markdown),
            "side_by_side": dg.MetadataValue.md(side_by_side(table, list(results), config.side_by_side)),
            "engine": dg.MetadataValue.md(markdown_table([r.engine_row() for r in results.values()])),
            "engine_seconds": sum(r.startup_seconds + r.generation_seconds for r in results.values()),
            "prompts": len(items),
            "seed": config.seed,
            "max_tokens": config.max_tokens,
            "models": dg.MetadataValue.json({n: m["model_dir"] for n, m in models.items()}),
            "skipped_models": dg.MetadataValue.json(skipped),
            JUDGED_MODEL: candidate.storage_id,  # the candidate evaluated (promotion compares it)
            "tuned_model_dir": dg.MetadataValue.path(models[TUNED]["model_dir"]),
            "sources": dg.MetadataValue.json(document["sources"]),
        },
        check_results=[
            dg.AssetCheckResult(check_name="answers_stop_on_eos", passed=stops.passed,
                                description=stops.description(),
                                metadata=_stop_metadata(stops, config, ifeval_runaways)),
            dg.AssetCheckResult(check_name="not_worse_than_base", passed=not_worse["passed"],
                                description=not_worse["detail"],
                                metadata={k: v for k, v in not_worse.items() if k not in ("passed", "detail")}),
        ],
        data_version=dg.DataVersion(stored.content_hash),
    )


def _models_to_evaluate(context: dg.AssetExecutionContext, config: EvaluationConfig, storage: DataStorage,
                        candidate: Materialization) -> tuple[dict[str, dict], dict[str, str]]:
    """The models evaluated, name -> {model_dir, content_hash, source}: the base the candidate was trained from, as
    its lineage.json records it (`assets/evaluation/base.py`: re-hashed, a mismatch fails; its directory carries the
    chat template chosen for it), the candidate (TUNED, the latest `sft_model`) and, when configured and its
    `MODEL_MANIFEST` is in storage, the teacher; and the skipped models with the reason."""
    tuned_dir = str(candidate.value("model_dir"))
    current = storage.read_json(BASE_MODEL, MODEL_MANIFEST) if storage.has(BASE_MODEL, MODEL_MANIFEST) else None
    try:
        models: dict[str, dict] = {BASE: lineage_base(tuned_dir, current)}
    except BaseModelError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    if models[BASE]["current_base_model"] not in ("same", "none"):
        context.log.warning(f"base model: {models[BASE]['current_base_model']}")
    models[TUNED] = {"model_dir": tuned_dir, "content_hash": candidate.value("content_hash"),
                     "source": f"{SFT_MODEL.to_user_string()} (run {candidate.run_id})"}
    skipped: dict[str, str] = {}
    if not config.include_teacher:
        skipped[TEACHER] = "include_teacher is off"
    elif not storage.has(TEACHER_MODEL, MODEL_MANIFEST):
        skipped[TEACHER] = (f"no {TEACHER_MODEL.to_user_string()} manifest in storage "
                            f"({storage.asset_dir(TEACHER_MODEL)}): that asset is not in this code location or was "
                            "never materialized")
    else:
        manifest = storage.read_json(TEACHER_MODEL, MODEL_MANIFEST)
        models[TEACHER] = {"model_dir": str(manifest["path"]), "content_hash": manifest.get("content_hash"),
                           "source": TEACHER_MODEL.to_user_string()}
    for name, reason in skipped.items():
        context.log.info(f"not evaluating the {name} model: {reason}")
    return models, skipped


def _prompts(config: EvaluationConfig) -> list[IFEvalItem]:
    try:
        return choose_prompts(config.num_prompts, config.seed, config.short_answers_only, config.instruction_types)
    except ValueError as error:
        raise dg.Failure(description=f"assistant_evaluation config: {error}") from error


def _end_of_turn_probabilities(context: dg.AssetExecutionContext, config: EvaluationConfig, storage: DataStorage,
                               models: dict[str, dict]) -> dict:
    """P(end-of-turn) at the answer ends of the first `end_of_turn_conversations` validation rows of `sft_mixture`."""
    mixture = storage.read_table(SFT_MIXTURE).filter(pl.col("split") == "validation")
    conversations = mixture["messages"].head(config.end_of_turn_conversations).to_list()
    reason = ("end_of_turn_conversations is 0" if config.end_of_turn_conversations == 0
              else "sft_mixture has no validation rows")
    return end_of_turn_probabilities(conversations, models[BASE]["model_dir"], models[TUNED]["model_dir"],
                                     f"{SFT_MIXTURE.to_user_string()} validation rows", reason, context.log.info)


def _stop_metadata(stops: StopVerdict, config: EvaluationConfig, ifeval_runaways: list[int]) -> dict:
    return {"runaway_prompts": dg.MetadataValue.json(stops.new_runaways),
            "runaway_in_base_too": dg.MetadataValue.json(stops.inherited_runaways),
            "stopped_on_eos": f"{stops.stopped}/{len(stops.rows)}", "min_stopped": stops.min_stopped,
            "stopped_on_other_eos": dg.MetadataValue.json(stops.other_eos), "max_tokens": config.stop_check_max_tokens,
            "ifeval_runaways_not_in_base": dg.MetadataValue.json(ifeval_runaways),
            "base_vs_tuned": dg.MetadataValue.md(markdown_table(stops.rows))}


