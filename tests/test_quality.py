"""Signals and the calibrated score on plain data: milliseconds, no Ray, no models."""

import dataclasses
import json
import math

import pytest

from deployments.quality import (
    CALIBRATION_FILE,
    Calibration,
    Evidence,
    best,
    completeness,
    consensus,
    consistency_signals,
    content_words,
    cosine,
    normalised_answer,
    repetition,
    score_answer,
    score_signals,
    signals,
    structure_check,
    token_signals,
)
from deployments.quality import answer_signals


def test_cosine():
    assert cosine([1, 0], [1, 0]) == pytest.approx(1)
    assert cosine([1, 0], [0, 1]) == pytest.approx(0)
    assert cosine([0, 0], [1, 0]) == 0


def test_token_signals_see_one_unsure_token_the_mean_hides():
    steady = token_signals([math.log(0.9)] * 10)
    one_guess = token_signals([math.log(0.99)] * 9 + [math.log(0.05)])
    assert steady["mean_logprob"] == pytest.approx(math.log(0.9))
    # The geometric mean barely moves, the minimum and the low quantile do.
    assert one_guess["min_logprob"] == pytest.approx(math.log(0.05))
    assert one_guess["min_logprob"] < steady["min_logprob"]
    assert one_guess["p10_logprob"] == pytest.approx(math.log(0.05))
    assert token_signals([]) == {} and token_signals([float("-inf")]) == {}


def test_entropy_over_the_top_candidates():
    sure = token_signals([-0.01], [[-0.01, -6.0, -7.0]])
    torn = token_signals([-1.1], [[-1.1, -1.1, -1.1]])
    assert sure["mean_entropy"] < 0.1
    assert torn["mean_entropy"] == pytest.approx(math.log(3))
    assert "mean_entropy" not in token_signals([-0.5])  # no candidates returned


def test_normalised_answer_is_what_a_short_answer_asserts():
    q = "What is the capital of Australia?"
    assert normalised_answer("The capital of Australia is Canberra.", q) == "canberra"
    assert normalised_answer("Sydney is the capital of Australia.", q) == "sydney"
    assert normalised_answer("15 + 27 = 42", "What is 15 plus 27?") == "42"
    assert normalised_answer("It is 3,000 meters.", "How many meters in 3 km?") == "3000"
    assert normalised_answer("The capital city is Canberra.", q) == "canberra"
    assert content_words("The the of", "q") == [] and normalised_answer("", q) == ""


def test_consistency_counts_agreeing_samples():
    q = "What is the capital of Australia?"
    out = consistency_signals("The capital of Australia is Canberra.",
                              ["Canberra.", "It is Canberra, in the ACT.", "Sydney."], q,
                              answer_vec=[1, 0], sample_vecs=[[1, 0], [1, 0], [0, 1]])
    assert out["agreement"] == pytest.approx(2 / 3)
    assert out["consistency"] == pytest.approx(2 / 3)
    assert 0 < out["overlap"] < 1
    assert consistency_signals("x", [], q) == {}
    assert "consistency" not in consistency_signals("Canberra.", ["Canberra."], q)  # no vectors


def test_consensus_picks_the_answer_most_samples_share():
    q = "What is 15 plus 27?"
    texts = ["15 + 27 = 32.", "The sum is 42.", "It is 42.", "42", "15 + 27 = 52"]
    assert consensus(texts, q) == 1  # the first of the three that say 42
    assert consensus(["A cat.", "A dog."], "q", [[1, 0], [0.9, 0.1]]) == 0  # tie: the first
    # No shared answer: the one closest to the others in embedding space.
    assert consensus(["a", "b", "c"], "q", [[0, 1], [1, 0], [0.9, 0.1]]) == 2


def test_repetition_catches_loops_not_prose():
    prose = "Paris is the capital of France. It lies on the Seine and is known for the Louvre."
    assert repetition(prose) == 1
    assert repetition("I am a robot. " * 12) < 0.2
    assert repetition("\n".join(["- buy milk"] * 5 + ["- buy eggs"])) < 0.5
    assert repetition("the " * 30) < 0.1


def test_completeness():
    assert completeness("", "stop") == 0
    assert completeness("   ...  ", "stop") == 0
    assert completeness("Paris is the capital.", "stop") == 1
    assert completeness("Paris is the capital and", "stop") == pytest.approx(0.6)
    assert completeness("Paris is the capital and", "length") == pytest.approx(0.1)


CAL = Calibration(features=["mean_logprob", "agreement"], mean=[-0.5, 0.5], scale=[0.5, 0.5],
                  coef=[1.0, 2.0], intercept=0.0, threshold=0.6)


def test_calibrated_probability_and_missing_signals():
    assert CAL.probability({"mean_logprob": -0.5, "agreement": 0.5}) == (0.5, [])
    high, _ = CAL.probability({"mean_logprob": -0.1, "agreement": 1.0})
    low, _ = CAL.probability({"mean_logprob": -1.5, "agreement": 0.0})
    assert high > 0.9 and low < 0.1
    # A missing signal sits at its fit mean: it neither raises nor lowers the score.
    p, missing = CAL.probability({"mean_logprob": -0.5})
    assert p == 0.5 and missing == ["agreement"]


def test_score_answer_gates_and_floors_degenerate_output():
    q = "What is the capital of Australia?"
    right = Evidence(prompt=q, answer="Canberra.", finish_reason="stop", logprobs=[-0.1, -0.1],
                     samples=["Canberra.", "It is Canberra."])
    wrong = Evidence(prompt=q, answer="Sydney.", finish_reason="stop", logprobs=[-1.5, -1.2],
                     samples=["Canberra.", "Melbourne."])
    r, w = score_answer(right, CAL), score_answer(wrong, CAL)
    assert r.passed and not w.passed and r.score > w.score and r.threshold == 0.6
    assert r.degraded == [] and {"agreement", "mean_logprob", "completeness"} <= set(r.components)
    no_samples = score_answer(Evidence(prompt=q, answer="Canberra.", finish_reason="stop",
                                       logprobs=[-0.1]), CAL)
    assert no_samples.degraded == ["agreement"]
    loop = Evidence(prompt=q, answer="Canberra Canberra Canberra " * 10, finish_reason="length",
                    logprobs=[-0.01] * 30, samples=["Canberra"] * 2)
    assert score_answer(loop, CAL).score == 0
    empty = Evidence(prompt=q, answer="", finish_reason="stop", logprobs=[], samples=["x"])
    assert score_answer(empty, CAL).score == 0
    assert not score_signals(r.components, CAL, threshold=0.999).passed
    assert (score_answer(loop, CAL).guard, score_answer(empty, CAL).guard, r.guard) == (
        "loop", "empty", None)
    assert "guard" not in r.to_dict() and score_answer(loop, CAL).to_dict()["guard"] == "loop"


def test_an_answer_to_another_question_fails_whatever_its_confidence():
    guarded = dataclasses.replace(CAL, relevance_floor=0.4)
    sure = {"mean_logprob": -0.01, "agreement": 1.0, "repetition": 1.0, "completeness": 1.0}
    on_topic = score_signals({**sure, "relevance": 0.7}, guarded)
    off_topic = score_signals({**sure, "relevance": 0.39}, guarded)
    assert on_topic.passed and on_topic.guard is None
    assert off_topic.score == 0 and not off_topic.passed and off_topic.guard == "off_topic"
    # no guard without a floor, nor without relevance (the embedder down: degraded, not off-topic)
    assert score_signals({**sure, "relevance": 0.1}, CAL).passed
    assert score_signals(sure, guarded).passed


def test_signals_include_relevance_and_cross_tier_when_given():
    e = Evidence(prompt="q", answer="An answer.", finish_reason="stop", prompt_vec=[1, 0],
                 answer_vec=[0.6, 0.8], cross_tier_logprobs=[-0.2, -0.4])
    out = signals(e)
    assert out["relevance"] == pytest.approx(0.6)
    assert out["cross_tier_logprob"] == pytest.approx(-0.3)
    assert "mean_logprob" not in out and "agreement" not in out


def test_shipped_calibration_loads_and_names_known_signals():
    cal = Calibration.load()
    data = json.loads(CALIBRATION_FILE.read_text())
    assert len(cal.features) == len(cal.mean) == len(cal.scale) == len(cal.coef) >= 3
    assert 0 < cal.threshold < 1 and data["answers"] >= 800
    known = set(signals(Evidence(prompt="q", answer="An answer.", finish_reason="stop",
                                 logprobs=[-0.1] * 3, tops=[[-0.1, -3]] * 3,
                                 tokens=["An", " answer", "."], samples=["An answer."],
                                 prompt_vec=[1], answer_vec=[1], sample_vecs=[[1]])))
    assert set(cal.features) <= known


def test_best_prefers_higher_score_then_cheaper():
    text_only = Calibration(features=["completeness"], mean=[0.5], scale=[0.5], coef=[4.0],
                            intercept=0.0, threshold=0.9)
    e = Evidence(prompt="q", answer="A fine answer.", finish_reason="stop")
    cut = Evidence(prompt="q", answer="x y", finish_reason="length")
    a, b, c = (score_answer(x, text_only) for x in (cut, e, e))
    assert best([a, b, c]) == 1


def test_structure_check_says_whether_a_json_answer_parses_and_matches_its_schema():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert structure_check('{"city": "Paris"}', {"json": schema}) == {"valid": True, "error": None}
    wrong = structure_check('{"town": "Paris"}', {"json": schema})
    assert not wrong["valid"] and "schema" in wrong["error"]
    cut = structure_check('{"city": "Par', {"json": schema})  # finish_reason "length"
    assert not cut["valid"] and "not JSON" in cut["error"]
    assert structure_check('{"a": 1}', {"json_object": True})["valid"]
    assert not structure_check("[1, 2]", {"json_object": True})["valid"]
    assert structure_check("Paris.", None) is None  # no JSON asked, nothing to say


def test_head_signals_read_the_first_sentence_only():
    from deployments.quality import HEAD_TOKENS, head_signals

    tokens = ["Orwell", " wrote", " it", ".", " Later", " he", " moved"]
    logprobs = [-0.1, -0.2, -0.1, -0.2, -3.0, -4.0, -5.0]
    head = head_signals(tokens, logprobs, [[lp, -5.0] for lp in logprobs])
    assert head["head_mean_logprob"] == pytest.approx(-0.15)
    assert head["head_min_logprob"] == pytest.approx(-0.2)
    no_end = head_signals(["a"] * 40, [-1.0] * HEAD_TOKENS + [-9.0] * 16)
    assert no_end["head_mean_logprob"] == pytest.approx(-1.0)  # capped at HEAD_TOKENS
    e = Evidence(prompt="q", answer="Orwell wrote it. Later he moved", finish_reason="stop",
                 logprobs=logprobs, tokens=tokens)
    assert "head_mean_logprob" in signals(e)
    assert "head_mean_logprob" not in signals(Evidence(prompt="q", answer="x", finish_reason="stop",
                                                       logprobs=[-0.1]))


def test_answer_signals_read_where_the_answer_first_says_what_it_asserts():
    """key_*: the tokens of the first "42" (where the model committed), not its confident
    restatement; content_*: the words the prompt does not already hold."""
    prompt = "What is 40 plus 2?"
    tokens = ["40", " plus", " 2", " is", " 4", "2", ".", " So", " 42", "."]
    logprobs = [-0.1, -0.1, -0.1, -0.2, -1.5, -0.5, -0.1, -0.3, -0.05, -0.1]
    tops = [[lp, lp - 1.0] for lp in logprobs]
    out = answer_signals(tokens, logprobs, tops, prompt)
    assert out["key_logprob"] == pytest.approx(-2.0)  # " 4" + "2": the first 42, both tokens
    assert out["key_min_logprob"] == pytest.approx(-1.5)
    assert out["key_margin"] == pytest.approx(1.0)  # top-1 minus top-2 at the key's first token
    # content words: "42" twice; "40", "plus", "2", "is" are the prompt's, "So" a function word
    assert out["content_mean_logprob"] == pytest.approx((-1.5 - 0.5 - 0.05) / 3)
    assert "key_entropy" in out and "content_mean_entropy" in out
    for none in ([], [[]] * len(tokens)):  # no candidates asked for (signal_top_k 0)
        assert "key_entropy" not in answer_signals(tokens, logprobs, none, prompt)
    # nothing new asserted: the first word stands in, and every word is content
    echo = answer_signals(["Yes", "."], [-0.7, -0.1], [], "Is it?")
    assert echo["key_logprob"] == pytest.approx(-0.7)
    assert answer_signals([], [], [], prompt) == {}
    e = Evidence(prompt=prompt, answer="".join(tokens), finish_reason="stop", logprobs=logprobs,
                 tops=tops, tokens=tokens)
    assert signals(e)["key_logprob"] == pytest.approx(-2.0)
