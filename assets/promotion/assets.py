"""`promoted_model`: the project's current model, the one continual SFT starts from: a trained model is promoted
only when every check on it (and on the other assets promotion depends on) passed for that very model."""

import dagster as dg

from assets.common.data.report import markdown_table
from assets.common.orchestration.resources import (
    ASSISTANT_EVALUATION,
    CURRENT_MODEL,
    JUDGED_MODEL,
    PROMOTE_NEW_MODELS,
    PROMOTED_MODEL,
    PROMOTION_CHECKS,
    SFT_MODEL,
    DataStorage,
    Materialization,
    job_asset_graph,
    latest_materialization,
    verified_model,
)
from assets.promotion.core import CheckVerdict, check_verdict, decide, promotion_record


@dg.asset(group_name="evaluation", kinds={"huggingface"}, deps=[SFT_MODEL, ASSISTANT_EVALUATION],
          automation_condition=PROMOTE_NEW_MODELS)
def promoted_model(context: dg.AssetExecutionContext, storage: DataStorage) -> dg.MaterializeResult:
    """The model that passed its checks: the post-training checks (`PROMOTION_CHECKS`: forgetting on `sft_model`;
    stopping on the end-of-turn token and not worse than the base on `assistant_evaluation`) and every other asset
    check on an upstream asset must have run on the candidate's materialization (for the evaluation: on an evaluation
    of the candidate) and passed. Otherwise the run fails, the previous current model stays current, and the
    candidate stays on disk with its report."""
    graph = job_asset_graph(context)  # (the parent job's: a run of promoted_model alone sees the upstream checks too)
    candidate = latest_materialization(context.instance, SFT_MODEL)
    checks = {*PROMOTION_CHECKS, *(key for parent in graph.get(context.asset_key).parent_keys
                                  for key in graph.get(parent).check_keys)}
    materializations = {SFT_MODEL: candidate}
    verdicts = []
    for key in sorted(checks):
        if key.asset_key not in materializations:
            materializations[key.asset_key] = latest_materialization(context.instance, key.asset_key)
        verdicts.append(_verdict(context.instance, key, materializations[key.asset_key], candidate.storage_id))
    decision = decide(verdicts, SFT_MODEL.to_user_string())
    model_dir = str(candidate.value("model_dir"))
    table = markdown_table(decision.rows())
    if not decision.promote:
        raise dg.Failure(description=f"{model_dir} not promoted: {decision.reason}",
                         metadata={"candidate": dg.MetadataValue.path(model_dir), "checks": dg.MetadataValue.md(table)})
    verified_model(candidate)  # its directory still holds the model that was checked (re-hashed)
    record = promotion_record(model_dir, candidate.value("content_hash"), candidate.run_id, decision)
    path = storage.write_json(PROMOTED_MODEL, CURRENT_MODEL, record)
    context.log.info(f"promoted {model_dir}: {decision.reason}")
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(model_dir), "model_dir": dg.MetadataValue.path(model_dir),
                  "content_hash": record["content_hash"], "trained_in_run": candidate.run_id,
                  "pointer": dg.MetadataValue.path(str(path)), "checks": dg.MetadataValue.md(table)},
        data_version=dg.DataVersion(record["content_hash"]),
    )


def _verdict(instance: dg.DagsterInstance, key: dg.AssetCheckKey, materialization: Materialization,
             candidate_id: int) -> CheckVerdict:
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
    evaluation = record.evaluation if record is not None else None
    target = evaluation.target_materialization_data if evaluation is not None else None
    judged = materialization.metadata.get(JUDGED_MODEL)
    return check_verdict(key.asset_key.to_user_string(), key.name, evaluation is not None,
                         evaluation.passed if evaluation is not None else None,
                         target.storage_id if target is not None else None, materialization.storage_id,
                         evaluation.description or "" if evaluation is not None else "",
                         judged_model_id=int(judged.value) if judged is not None else None, candidate_id=candidate_id)
