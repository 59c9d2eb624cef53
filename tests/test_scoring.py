"""Scoring in the router with fake deployments: evidence, the consensus pick, the threshold."""

import asyncio
import time

import numpy as np
import pytest
from ray.serve.exceptions import DeploymentUnavailableError

from deployments.availability import Availability
from deployments.config import EmbedderConfig, LLMConfig, QualityConfig
from deployments.policy import Cost
from deployments.protocol import (
    Candidate,
    GenerationResult,
    Job,
    QualityScoreRequest,
    Sampling,
    TokenLogprob,
)
from deployments.scoring import Scorer, chosen_by_consensus, evidence
from deployments.tier import Downstream, Tier
from tests.support.fakes import FakeHandle


pytestmark = pytest.mark.usefixtures("counted")  # tests/conftest.py


def result(text: str, samples: tuple[str, ...] = ()) -> GenerationResult:
    return GenerationResult(
        choices=[Candidate(text=text, finish_reason="stop", completion_tokens=3,
                           logprobs=[TokenLogprob(token="x", logprob=-0.1)])],
        samples=[Candidate(text=s, finish_reason="stop", completion_tokens=1) for s in samples],
        prompt_tokens=3, model_id="m", tier="fast")


def vectors_by_word(texts):
    """An embedder whose vector says whether the text names Canberra."""
    return np.array([[1.0, 0.0] if "Canberra" in t or "capital" in t else [0.0, 1.0]
                     for t in texts]), np.array([1] * len(texts))


def scorer(quality: QualityConfig | None = None, embed=vectors_by_word) -> Scorer:
    async def embed_for_scoring(texts):
        return embed(texts)

    seen = Availability(["fast", "embedder"])
    embedder = Downstream(EmbedderConfig(), FakeHandle(embed_for_scoring=embed_for_scoring))
    embedder.attach(seen)
    tier = Tier(LLMConfig(name="fast", model_id="m"), FakeHandle())
    tier.attach(seen)
    return Scorer(quality or QualityConfig(), embedder, [tier], 1.0, 1.0)


JOB = Job(request_id="r", model="m", messages=[{"role": "user", "content": "capital of Australia?"}],
          relevance_text="capital of Australia?", sampling=Sampling())


def test_evidence_splits_vectors_and_keeps_missing_as_none():
    tokens = [TokenLogprob(token="a", logprob=-0.5, top=[("a", -0.5), ("b", -1.2)])]
    e = evidence("q", "a", "stop", tokens, ["a", "b"], [[1.0], [2.0], [3.0], [4.0]])
    assert e.prompt_vec == [1.0] and e.answer_vec == [2.0] and e.sample_vecs == [[3.0], [4.0]]
    assert e.logprobs == [-0.5] and e.tops == [[-0.5, -1.2]] and e.cross_tier_logprobs is None
    given = evidence("q", "a", "stop", None, None, None)
    assert given.logprobs is None and given.samples is None and given.answer_vec is None


def test_chosen_by_consensus_swaps_answer_and_sample():
    res = result("A.", ("B.", "C."))
    assert chosen_by_consensus(res, 0) is res
    picked = chosen_by_consensus(res, 2)
    assert picked.text == "C." and [s.text for s in picked.samples] == ["A.", "B."]
    assert picked.tokens_generated == res.tokens_generated



def test_the_threshold_is_the_request_s_else_the_config_s_else_the_calibration_s():
    plain = scorer()
    assert plain.threshold() == plain.calibration.threshold
    configured = scorer(QualityConfig(threshold=0.3))
    assert configured.threshold() == 0.3 and configured.threshold(0.9) == 0.9


def test_the_score_endpoint_uses_the_configured_threshold_as_served_answers_do():
    configured = scorer(QualityConfig(threshold=0.01))
    body = QualityScoreRequest(pairs=[{"prompt": "capital of Australia?",
                                       "answer": "Canberra is the capital."}])
    [report] = asyncio.run(configured.score_pairs(body, None))
    assert report["threshold"] == 0.01
    served = asyncio.run(configured.judge(JOB, result("Canberra is the capital."), configured.ladder[0],
                                          False, Cost()))[1]
    assert served.threshold == report["threshold"]
    assert "scoring_ms" in report["timing"]


def test_a_consensus_pick_serves_the_sample_the_others_agree_with(counted):
    s = scorer()
    picked, report = asyncio.run(s.judge(
        JOB, result("It is Sydney.", ("Canberra.", "Canberra, in the ACT.", "Canberra.")),
        s.ladder[0], True, Cost()))
    assert "Canberra" in picked.text and "Sydney" in [c.text for c in picked.samples][0]
    assert report.tier == "fast" and report.model == "m" and report.timing is None
    assert any(name == "graphserve_quality_score" for name, _ in counted)


def test_an_embedder_that_is_down_degrades_relevance_and_the_cost_adds_up(counted):
    def broken(texts):
        raise DeploymentUnavailableError("embedder")

    s = scorer(embed=broken)
    cost = Cost()
    _, report = asyncio.run(s.judge(JOB, result("Canberra."), s.ladder[0], False, cost))
    assert "relevance" in report.degraded and cost.scoring_ms > 0
    _, canary = asyncio.run(s.judge(JOB, result("Canberra."), s.ladder[0], False, Cost(),
                                    served=False))
    served_counts = [n for n, _ in counted if n == "graphserve_quality_score"]
    assert len(served_counts) == 1  # the unserved answer is not counted as served


def test_a_tier_serving_another_model_or_dtype_than_its_calibration_is_uncalibrated():
    s = scorer()
    tier = s.ladder[0]
    fitted = s.calibration_of(tier).fitted_for
    assert fitted["model"] and fitted["dtype"]  # the shipped file says what it was fitted for
    dtype = fitted["dtype"] if isinstance(fitted["dtype"], str) else fitted["dtype"][0]
    tier.availability.up("fast", {"model": fitted["model"], "dtype": dtype})
    assert s.calibration_view(tier)["matches"]
    _, report = asyncio.run(s.judge(JOB, result("Canberra."), tier, False, Cost()))
    assert "uncalibrated" not in report.degraded
    tier.availability.up("fast", {"model": "llama-3.1-8b-instruct", "dtype": dtype})
    view = s.calibration_view(tier)
    assert not view["matches"] and "llama-3.1-8b-instruct" in view["reason"]
    _, report = asyncio.run(s.judge(JOB, result("Canberra."), tier, False, Cost()))
    assert "uncalibrated" in report.degraded
    tier.availability.up("fast", {"model": fitted["model"], "dtype": "float16"})
    assert "float16" in s.calibration_view(tier)["reason"]


def cascade_scorer(answers: list[str], quality: QualityConfig | None = None):
    """A scorer whose tier draws `answers` as samples (recording each draw's request)."""
    draws = []

    async def generate(request):
        draws.append(request)
        return GenerationResult(
            choices=[Candidate(text=a, finish_reason="stop", completion_tokens=2,
                               logprobs=[TokenLogprob(token="x", logprob=-0.2)])
                     for a in answers[:request.sampling.n]],
            prompt_tokens=3, model_id="m", tier="fast")

    s = scorer(quality)
    s.ladder[0].handle.methods["generate"] = generate
    return s, draws


def test_an_answer_sure_without_samples_draws_none():
    s, draws = cascade_scorer(["Canberra."] * 4)
    cost = Cost()
    served, report = asyncio.run(s.judge(JOB, result("Canberra is the capital."), s.ladder[0],
                                         True, cost, draw=4, sample_below=0.0))
    assert draws == [] and report.samples == 0 and served.text == "Canberra is the capital."
    # scored by the calibration's fit without sample signals, at that fit's own threshold
    assert report.threshold == s.calibration.free.threshold
    assert not {"agreement", "overlap", "consistency"} & set(report.components)


def test_an_answer_in_doubt_draws_capped_samples_and_the_vote_serves_the_majority():
    s, draws = cascade_scorer(["Canberra.", "Canberra, in the ACT.", "Canberra.", "Perth."],
                              QualityConfig(sample_max_tokens=16))
    cost = Cost()
    served, report = asyncio.run(s.judge(JOB, result("It is Sydney."), s.ladder[0], True, cost,
                                         draw=4, sample_below=1.0))
    [draw] = draws
    assert draw.sampling.n == 4 and draw.sampling.max_tokens == 16
    assert draw.sampling.temperature == QualityConfig().sample_temperature
    assert "Canberra" in served.text and report.samples == 4
    assert "agreement" in report.components and report.threshold == s.calibration.threshold
    assert cost.tokens == 8 and cost.generation_ms >= 0  # the samples' tokens are counted


def test_samples_that_cannot_be_drawn_leave_the_sample_free_score():
    s, _ = cascade_scorer([])

    async def down(request):
        raise DeploymentUnavailableError("fast")

    s.ladder[0].handle.methods["generate"] = down
    served, report = asyncio.run(s.judge(JOB, result("It is Sydney."), s.ladder[0], True, Cost(),
                                         draw=4, sample_below=1.0))
    assert served.text == "It is Sydney." and report.samples == 0
    assert report.threshold == s.calibration.free.threshold


def test_samples_are_drawn_only_within_the_gate_s_budget():
    """The cascade draws samples only when they would end by the deadline at the answer's own
    pace, and drops those still running at it: an answer, never a 504 for samples."""
    async def scenario():
        s, draws = cascade_scorer(["Canberra."] * 4)
        tier, now = s.ladder[0], time.monotonic()
        # the answer took 10 s and 5 s are left: no samples started
        _, report = await s.judge(JOB, result("It is Sydney."), tier, True,
                                  Cost(generation_ms=10_000), draw=4, sample_below=1.0,
                                  deadline=now + 5)
        assert draws == [] and report.samples == 0 and report.budget_exhausted
        # time enough: drawn as before
        _, report = await s.judge(JOB, result("It is Sydney."), tier, True, Cost(), draw=4,
                                  sample_below=1.0, deadline=now + 60)
        assert len(draws) == 1 and report.samples == 4 and not report.budget_exhausted
        # samples still running at the deadline are cancelled; the sample-free score is served
        cancelled = asyncio.Event()

        async def slow(request):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        tier.handle.methods["generate"] = slow
        served, report = await s.judge(JOB, result("It is Sydney."), tier, True, Cost(), draw=4,
                                       sample_below=1.0, deadline=time.monotonic() + 0.2)
        await asyncio.wait_for(cancelled.wait(), 1)
        assert served.text == "It is Sydney." and report.samples == 0 and report.budget_exhausted
        assert report.threshold == s.calibration.free.threshold

    asyncio.run(scenario())
