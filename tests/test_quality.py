"""Scoring components on plain data: milliseconds, no Ray, no models."""

import math

import pytest

from deployments.config import QualityConfig, QualityWeights
from deployments.quality import (
    best,
    completeness,
    confidence,
    cosine,
    relevance,
    repetition,
    score_answer,
)


def test_cosine_and_relevance_ramp():
    assert cosine([1, 0], [1, 0]) == pytest.approx(1)
    assert cosine([1, 0], [0, 1]) == pytest.approx(0)
    assert cosine([0, 0], [1, 0]) == 0
    assert relevance([1, 0], [1, 0], 0.05, 0.45) == 1
    assert relevance([1, 0], [0, 1], 0.05, 0.45) == 0
    mid = [math.cos(math.acos(0.25)), math.sin(math.acos(0.25))]  # cosine 0.25: half-way
    assert relevance([1, 0], mid, 0.05, 0.45) == pytest.approx(0.5)


def test_confidence_is_geometric_mean_probability():
    assert confidence([math.log(0.5)] * 4) == pytest.approx(0.5)
    assert confidence([]) == 0
    assert confidence([0.0, float("-inf")]) == pytest.approx(1.0)  # non-finite ignored


def test_repetition_catches_loops_not_prose():
    prose = "Paris is the capital of France. It lies on the Seine and is known for the Louvre."
    assert repetition(prose) == 1
    loop = "I am a robot. " * 12
    assert repetition(loop) < 0.2
    lines = "\n".join(["- buy milk"] * 5 + ["- buy eggs"])
    assert repetition(lines) < 0.5
    assert repetition("the " * 30) < 0.1


def test_completeness():
    assert completeness("", "stop") == 0
    assert completeness("   ...  ", "stop") == 0
    assert completeness("Paris is the capital.", "stop") == 1
    assert completeness("Paris is the capital and", "stop") == pytest.approx(0.6)
    assert completeness("Paris is the capital and", "length") == pytest.approx(0.1)


def test_score_weights_degraded_and_threshold():
    cfg = QualityConfig(threshold=0.6)
    good = score_answer(answer="Paris is the capital of France.", finish_reason="stop", config=cfg,
                        prompt_vec=[1, 0], answer_vec=[1, 0], token_logprobs=[-0.1, -0.2])
    assert good.passed and good.score > 0.9 and good.degraded == []
    assert set(good.components) == {"relevance", "confidence", "repetition", "completeness"}
    off_topic = score_answer(answer="Bananas are rich in potassium.", finish_reason="stop",
                             config=cfg, prompt_vec=[1, 0], answer_vec=[0, 1],
                             token_logprobs=[-0.1])
    assert off_topic.score < good.score
    no_embedder = score_answer(answer="Paris.", finish_reason="stop", config=cfg,
                               token_logprobs=[-0.1])
    assert no_embedder.degraded == ["relevance"] and "relevance" not in no_embedder.components
    assert 0 <= no_embedder.score <= 1
    empty = score_answer(answer="", finish_reason="stop", config=cfg, token_logprobs=[])
    assert empty.score == 0 and not empty.passed
    strict = score_answer(answer="Paris.", finish_reason="stop", config=cfg, threshold=0.999,
                          prompt_vec=[1, 0], answer_vec=[0.9, 0.1], token_logprobs=[-1.0])
    assert strict.threshold == 0.999 and not strict.passed


def test_weights_are_renormalised_over_available_components():
    only_text = QualityConfig(weights=QualityWeights(relevance=0, confidence=0, repetition=1,
                                                     completeness=1))
    r = score_answer(answer="A complete sentence.", finish_reason="stop", config=only_text)
    assert r.score == pytest.approx(1.0)
    with pytest.raises(ValueError):
        QualityWeights(relevance=0, confidence=0, repetition=0, completeness=0)


def test_best_prefers_higher_score_then_cheaper():
    cfg = QualityConfig()
    a = score_answer(answer="x y", finish_reason="length", config=cfg)
    b = score_answer(answer="A fine answer.", finish_reason="stop", config=cfg)
    c = score_answer(answer="A fine answer.", finish_reason="stop", config=cfg)
    assert best([a, b, c]) == 1
