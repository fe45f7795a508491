"""Promotion rules, on their own: every check on the model must have run on that very model and passed."""

import json

import pytest

from assets.promotion.core import FAILED, NOT_RUN, PASSED, STALE, check_verdict, decide, promotion_record


def verdict(check, status, asset="sft_model"):
    return check_verdict(asset, check, evaluated=status != NOT_RUN, passed=status == PASSED,
                         target_id=7 if status != STALE else 3, materialization_id=7)


@pytest.mark.parametrize("status", [FAILED, NOT_RUN, STALE])
def test_one_check_that_did_not_pass_refuses_the_model(status):
    decision = decide([verdict("forgetting", PASSED), verdict("stops", status)], "sft_model")
    assert not decision.promote
    assert f"sft_model:stops ({status})" in decision.reason


def test_all_checks_passed_promotes():
    decision = decide([verdict("stops", PASSED), verdict("forgetting", PASSED)], "sft_model")
    assert decision.promote and decision.reason == "all 2 checks passed"
    assert [row["check"] for row in decision.rows()] == ["forgetting", "stops"]  # sorted, deterministic


def test_a_model_without_checks_is_never_promoted():
    decision = decide([verdict("accuracy", PASSED, asset="evaluation")], "sft_model")
    assert not decision.promote and "no checks on sft_model" in decision.reason


def test_a_check_evaluated_on_an_older_materialization_is_stale():
    stale = check_verdict("sft_model", "stops", True, True, target_id=3, materialization_id=7)
    assert stale.status == STALE and not stale.passed


def test_record_names_the_model_its_base_and_checks(tmp_path):
    (tmp_path / "lineage.json").write_text(json.dumps({"base_model": {"path": "/b", "name": "b", "content_hash": "h",
                                                                      "extra": 1}}))
    decision = decide([verdict("stops", PASSED)], "sft_model")
    record = promotion_record(str(tmp_path), "abc", "run-1", decision)
    assert record["base_model"] == {"path": "/b", "name": "b", "content_hash": "h"}
    assert record["checks"][0]["status"] == PASSED and record["dagster_run_id"] == "run-1"


def test_record_refuses_a_refused_decision_and_a_model_without_lineage(tmp_path):
    with pytest.raises(ValueError, match="not promoted"):
        promotion_record(str(tmp_path), "abc", "run-1", decide([verdict("stops", FAILED)], "sft_model"))
    with pytest.raises(FileNotFoundError, match="lineage.json: missing"):
        promotion_record(str(tmp_path), "abc", "run-1", decide([verdict("stops", PASSED)], "sft_model"))


def test_an_evaluation_of_another_model_does_not_count():
    """The evaluation's checks passed, on its latest materialization, but that evaluation judged an older model."""
    stale = check_verdict("assistant_evaluation", "not_worse_than_base", evaluated=True, passed=True, target_id=5,
                          materialization_id=5, judged_model_id=3, candidate_id=4)
    assert stale.status == STALE and "judged model materialization 3, the candidate is 4" in stale.detail
    same = check_verdict("assistant_evaluation", "not_worse_than_base", evaluated=True, passed=True, target_id=5,
                         materialization_id=5, judged_model_id=4, candidate_id=4)
    assert same.status == PASSED
