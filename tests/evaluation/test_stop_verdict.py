"""The post-training stop check's rule on the 5 fixed prompts: a tuned model may not run away where the base model
stops, and at least 4 of its 5 answers must end on the end-of-turn token (a stop on another EOS does not count)."""

import pytest

from assets.common.models.engine import Completion
from assets.evaluation.stopping import FIXED_PROMPTS, MIN_STOPPED, stop_verdict

PROMPTS = list(FIXED_PROMPTS)


def _answers(*finishes: str) -> list[Completion]:
    return [Completion(text=f"answer {i}", token_ids=(1, 2), finish_reason=f) for i, f in enumerate(finishes)]


def test_all_answers_stop():
    verdict = stop_verdict(PROMPTS, _answers(*["stop"] * 5), _answers(*["stop"] * 5))
    assert verdict.passed and verdict.stopped == 5 and not verdict.new_runaways
    assert verdict.description().startswith("5/5 tuned answers ended on the end-of-turn token (at least 4 required)")


def test_runaway_the_base_model_does_not_have_fails():
    verdict = stop_verdict(PROMPTS, _answers(*["stop"] * 5), _answers("stop", "length", "stop", "stop", "stop"))
    assert not verdict.passed and verdict.new_runaways == [PROMPTS[1]]
    assert f"ran to max_tokens where the base stops: {[PROMPTS[1]]}" in verdict.description()


def test_runaway_inherited_from_the_base_model_is_reported_not_failed():
    verdict = stop_verdict(PROMPTS, _answers("stop", "length", "stop", "stop", "stop"),
                           _answers("stop", "length", "stop", "stop", "stop"))
    assert verdict.passed and verdict.inherited_runaways == [PROMPTS[1]] and not verdict.new_runaways
    assert [r["base_finish"] for r in verdict.rows] == ["stop", "length", "stop", "stop", "stop"]


def test_a_model_that_never_stops_fails_even_if_the_base_never_does():
    # the EOS-not-trained bug: every answer runs to max_tokens
    verdict = stop_verdict(PROMPTS, _answers(*["length"] * 5), _answers(*["length"] * 5))
    assert not verdict.passed and verdict.stopped == 0


@pytest.mark.parametrize(("tuned", "passed"), [
    (("stop", "length", "length", "length", "length"), False),  # 1 of 5: passed before, when the base never stops
    (("stop", "stop", "stop", "length", "length"), False),
    (("stop", "stop", "stop", "stop", "length"), True),  # 4 of 5: enough
])
def test_at_least_four_of_the_five_answers_must_stop_when_the_base_never_does(tuned, passed):
    verdict = stop_verdict(PROMPTS, _answers(*["length"] * 5), _answers(*tuned))
    assert MIN_STOPPED == 4 and verdict.passed is passed
    assert not verdict.new_runaways  # every runaway is inherited: only the count decides
    assert verdict.description().startswith(f"{tuned.count('stop')}/5 tuned answers ended on the end-of-turn token")


def test_answers_that_stop_on_another_eos_do_not_count_as_stopped():
    """A prepared Gemma stops on its original <eos> too (generation_config); such an answer did not end its turn."""
    verdict = stop_verdict(PROMPTS, _answers(*["stop"] * 5), _answers("stop", "stop", "stop", "eos", "eos"))
    assert not verdict.passed and verdict.stopped == 3 and not verdict.new_runaways
    assert verdict.other_eos == PROMPTS[3:]
    assert "2 stopped on another stop token instead (not a completed turn)" in verdict.description()
