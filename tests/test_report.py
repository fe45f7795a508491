"""`python -m pipelines.report`'s time table, on a real run in a real instance."""

import time

import dagster as dg
import pytest

from pipelines.report import stage_times, time_table


def test_every_step_of_the_run_is_timed_with_its_rows_and_tokens(tmp_path):
    @dg.asset
    def slow() -> dg.MaterializeResult:
        time.sleep(0.3)
        return dg.MaterializeResult(metadata={"dagster/row_count": 30, "tokens_generated": 600})

    @dg.asset(deps=[slow])
    def quick() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"dagster/row_count": 2})

    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([slow, quick], instance=instance)
        rows = stage_times(instance, result.run_id)
    assert [r["step"] for r in rows] == ["slow", "quick"]
    first = rows[0]
    assert first["seconds"] >= 0.3 and first["rows"] == 30 and first["tokens"] == 600
    assert first["tokens/s"] == pytest.approx(600 / first["seconds"], rel=0.2)  # seconds shown rounded
    assert rows[1]["tokens"] is None and int(first["share"].rstrip("%")) > 50
    table = time_table(rows)
    assert table.splitlines()[0].split() == ["step", "status", "seconds", "share", "rows", "rows/s", "tokens",
                                             "tokens/s", "notes"]
    assert rows[0]["notes"] is None
    assert table.splitlines()[-1].startswith("total (steps)")


def test_the_table_notes_what_the_run_kept_and_wasted(tmp_path):
    """Generation's requested conversations, which message filtering found cut, the mixture's rows per requested
    conversation and training's pre-flight padding, each on its step's line."""

    @dg.asset
    def magpie_conversations() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"dagster/row_count": 95, "attempted": 96})

    @dg.asset(deps=[magpie_conversations])
    def filtered_conversations() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"dagster/row_count": 70, "truncated_by_message": dg.MetadataValue.json(
            {"instruction": 4, "response": 19, "unknown": 0})})

    @dg.asset(deps=[filtered_conversations])
    def sft_mixture() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"dagster/row_count": 64})

    @dg.asset(deps=[sft_mixture])
    def sft_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"preflight": dg.MetadataValue.json({"padding_fraction": 0.0123})})

    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([magpie_conversations, filtered_conversations, sft_mixture, sft_model],
                                instance=instance)
        rows = stage_times(instance, result.run_id)
    assert [r["notes"] for r in rows] == ["96 requested", "truncated: 4 instruction, 19 response",
                                          "66.7% of requested", "padding 1.2%"]
    lines = time_table(rows).splitlines()
    assert lines[0].split()[-1] == "notes" and lines[3].endswith("66.7% of requested")
