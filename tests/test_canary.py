"""The quality canary's pure parts: what counts as a right answer, a round's summary, and the
shipped questions, checked against what the packaged model really answered."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments import canary
from deployments.config import DEFAULT_CANARY, CanaryConfig, RouterConfig

ANSWERS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "answers_templated.jsonl"  # noqa: E501


def test_an_answer_is_right_when_it_names_an_expected_answer_as_a_whole_word():
    assert canary.correct("The capital of France is Paris.", ["Paris"])
    assert canary.correct("PARÍS, of course", ["Paris"])  # case and accents do not matter
    assert canary.correct("It is Kyiv.", ["Kiev", "Kyiv"])
    assert not canary.correct("The capital", ["Paris"])  # cut off before the answer
    assert not canary.correct("Parisian food is good", ["Paris"])  # not the word itself
    assert not canary.correct("", ["Paris"])


def test_a_round_fails_below_the_share_of_right_answers():
    def round_of(rights: list[bool]) -> dict:
        checks = [canary.Check(prompt="q", answer="a", correct=r, score=0.5 + r / 4) for r in rights]
        return canary.summary(checks, 0.75, started=0)

    healthy, one_wrong, broken = round_of([True] * 4), round_of([True] * 3 + [False]), round_of(
        [True, False, False, False])
    assert (healthy["share"], healthy["failing"]) == (1.0, False)
    assert (one_wrong["share"], one_wrong["failing"]) == (0.75, False)
    assert (broken["share"], broken["failing"], broken["correct"]) == (0.25, True, 1)
    assert broken["mean_score"] == pytest.approx((0.75 + 0.5 * 3) / 4)
    assert len(broken["answers"]) == 4 and broken["answers"][0]["correct"] is True


def test_the_shipped_questions_are_ones_the_packaged_model_answers_right():
    """Each default check was answered right by SmolLM2-135M at temperature 0 in the labelled
    set, and the canary's own judge agrees with the label."""
    rows = {r["prompt"]: r for r in map(json.loads, ANSWERS.read_text().splitlines())}
    for check in DEFAULT_CANARY:
        row = rows[check.prompt]
        assert row["right"] and canary.correct(row["answer"], check.expect), check.prompt


def test_the_canary_config_is_validated():
    assert RouterConfig().canary.interval_s == 60 and len(RouterConfig().canary.checks) == 4
    assert CanaryConfig(interval_s=0).interval_s == 0  # off
    with pytest.raises(ValidationError):
        CanaryConfig(checks=[])
    with pytest.raises(ValidationError):
        CanaryConfig(checks=[{"prompt": "q", "expect": []}])
    with pytest.raises(ValidationError):
        CanaryConfig(min_correct_share=1.5)
