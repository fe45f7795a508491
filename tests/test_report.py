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
                                             "tokens/s"]
    assert table.splitlines()[-1].startswith("total (steps)")
