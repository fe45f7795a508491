"""`python -m pipelines.report`: where the latest trained model and its lineage are, and how its evaluation went
(base → tuned), read from the instance."""

from __future__ import annotations

import sys

import dagster as dg

from assets.common.orchestration.resources import (
    ASSISTANT_EVALUATION,
    JUDGED_MODEL,
    PROMOTION_CHECKS,
    SFT_MIXTURE,
    SFT_MODEL,
)


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey):
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    return records[0] if records else None


def latest_model(instance: dg.DagsterInstance) -> dict[str, str] | None:
    record = _latest(instance, SFT_MODEL)
    if record is None:
        return None
    metadata = record.asset_materialization.metadata
    return {key: str(metadata[key].value) for key in ("model_dir", "lineage_path", "adapter_dir", "train_rows_path")
            if key in metadata and metadata[key] is not None} | {"run_id": record.run_id}


def latest_evaluation(instance: dg.DagsterInstance) -> list[str] | None:
    """The lines that describe the latest `assistant_evaluation`: which model it judged, the base → tuned table,
    tuned - base with its interval, and its checks."""
    record = _latest(instance, ASSISTANT_EVALUATION)
    if record is None:
        return None
    values = {name: entry.value for name, entry in record.asset_materialization.metadata.items()
              if entry is not None}
    value = values.get
    model = _latest(instance, SFT_MODEL)
    lines = [f"Evaluation (assistant_evaluation, run {record.run_id}): {value('prompts')} IFEval prompts, "
             f"seed {value('seed')}, max_tokens {value('max_tokens')}; report: {value('report')}"]
    if model is not None and value(JUDGED_MODEL) != model.storage_id:
        lines.append(f"  (it judged an earlier sft_model materialization ({value(JUDGED_MODEL)}), not the latest "
                     f"({model.storage_id}): materialize assistant_evaluation again)")
    lines += ["", str(value("summary")), "", f"tuned - base, prompt-level strict: {value('tuned_minus_base')}"]
    keys = [key for key in PROMOTION_CHECKS if key.asset_key == ASSISTANT_EVALUATION]
    executions = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    verdicts = []
    for key in keys:
        evaluation = executions[key].evaluation if key in executions else None
        verdicts.append(f"{key.name} " + ("not run" if evaluation is None
                                          else "passed" if evaluation.passed else "FAILED"))
    lines.append("checks: " + ", ".join(verdicts))
    return lines


TOKEN_METADATA = ("tokens_generated", "tokens_trained", "tokens")  # the first present counts a step's tokens


def _requested(written: dict[str, dict]) -> int | None:
    """Conversations the run asked the teacher for: the `attempted` of its generation steps (one per shard)."""
    counts = [m["attempted"] for m in written.values() if isinstance(m.get("attempted"), int)]
    return sum(counts) if counts else None


def step_note(step: str, metadata: dict, requested: int | None) -> str | None:
    """What a step kept or wasted, from its metadata: conversations requested (generation), which message hit the
    token limit in truncated rows (filtering), rows reaching the mixture per requested conversation, and the share
    of the trained batches that was padding (the pre-flight `padding_fraction` of training)."""
    if isinstance(metadata.get("attempted"), int):
        return f"{metadata['attempted']} requested"
    if isinstance(metadata.get("truncated_by_message"), dict):
        cut = metadata["truncated_by_message"]
        return (f"truncated: {cut.get('instruction', 0)} instruction, {cut.get('response', 0)} response"
                + (f", {cut['unknown']} other" if cut.get("unknown") else ""))
    if step.split("[")[0] == SFT_MIXTURE.to_user_string() and requested and metadata.get("dagster/row_count"):
        return f"{metadata['dagster/row_count'] / requested:.1%} of requested"
    preflight = metadata.get("preflight")
    if isinstance(preflight, dict) and "padding_fraction" in preflight:
        return f"padding {preflight['padding_fraction']:.1%}"
    return None


def stage_times(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """Each step of a run (assets and checks): wall seconds, share of the steps' total, rows and tokens written, and
    their rates, in the order the steps started; ``notes``: what the step kept or wasted (:func:`step_note`)."""
    stats = [s for s in instance.get_run_step_stats(run_id) if s.start_time and s.end_time]
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    written = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        metadata = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items() if v is not None}
        written[event.step_key] = metadata
    total = sum(s.end_time - s.start_time for s in stats) or 1.0
    requested = _requested(written)
    rows = []
    for step in sorted(stats, key=lambda s: s.start_time):
        seconds = step.end_time - step.start_time
        metadata = written.get(step.step_key, {})
        count = metadata.get("dagster/row_count")
        tokens = next((metadata[k] for k in TOKEN_METADATA if isinstance(metadata.get(k), int | float)), None)
        rows.append({"step": step.step_key, "status": step.status.value if step.status else "?",
                     "seconds": round(seconds, 1), "share": f"{seconds / total:.0%}",
                     "rows": count, "rows/s": round(count / seconds, 1) if count and seconds else None,
                     "tokens": tokens, "tokens/s": round(tokens / seconds, 1) if tokens and seconds else None,
                     "notes": step_note(step.step_key, metadata, requested)})
    return rows


def time_table(rows: list[dict]) -> str:
    """The stage-time table as aligned plain text (what `make demo` prints last)."""
    header = ["step", "status", "seconds", "share", "rows", "rows/s", "tokens", "tokens/s", "notes"]
    cells = [[str(r[h]) if r.get(h) is not None else "" if h == "notes" else "-" for h in header] for r in rows]
    total = sum(r["seconds"] for r in rows)
    cells.append(["total (steps)", "", f"{total:.1f}", "100%", "", "", "", "", ""])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    line = lambda values: "  ".join(v.ljust(w) if i in (0, len(header) - 1) else v.rjust(w)  # noqa: E731
                                    for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()
    return "\n".join([line(header), *(line(c) for c in cells)])


def main() -> int:
    with dg.DagsterInstance.get() as instance:
        model = latest_model(instance)
        evaluation = latest_evaluation(instance)
    if model is None:
        print("no sft_model materialization in this Dagster instance yet", file=sys.stderr)
        return 1
    for key, value in model.items():
        print(f"  {key}: {value}")
    print(f"Trained model: {model['model_dir']}  lineage: {model['lineage_path']}")
    print()
    print("\n".join(evaluation) if evaluation else "no assistant_evaluation materialization in this instance yet")
    with dg.DagsterInstance.get() as instance:
        times = stage_times(instance, model["run_id"])
    print(f"\nWhere the time went (run {model['run_id']}):")
    print(time_table(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
