"""The post-training stop check's rule: a tuned model may not run away where the base model stops."""

from assets.common.engine import Completion
from assets.evaluation.stopping import stop_verdict

PROMPTS = ["capital of France?", "haiku", "hash table"]


def _answers(*finishes: str) -> list[Completion]:
    return [Completion(text=f"answer {i}", token_ids=(1, 2), finish_reason=f) for i, f in enumerate(finishes)]


def test_all_answers_stop():
    verdict = stop_verdict(PROMPTS, _answers("stop", "stop", "stop"), _answers("stop", "stop", "stop"))
    assert verdict.passed and verdict.stopped == 3 and not verdict.new_runaways


def test_runaway_the_base_model_does_not_have_fails():
    verdict = stop_verdict(PROMPTS, _answers("stop", "stop", "stop"), _answers("stop", "length", "stop"))
    assert not verdict.passed and verdict.new_runaways == ["haiku"]


def test_runaway_inherited_from_the_base_model_is_reported_not_failed():
    verdict = stop_verdict(PROMPTS, _answers("stop", "length", "stop"), _answers("stop", "length", "stop"))
    assert verdict.passed and verdict.inherited_runaways == ["haiku"] and not verdict.new_runaways
    assert [r["base_finish"] for r in verdict.rows] == ["stop", "length", "stop"]


def test_a_model_that_never_stops_fails_even_if_the_base_never_does():
    # the EOS-not-trained bug: every answer runs to max_tokens
    verdict = stop_verdict(PROMPTS, _answers("length", "length", "length"), _answers("length", "length", "length"))
    assert not verdict.passed and verdict.stopped == 0
