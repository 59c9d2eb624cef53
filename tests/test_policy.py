"""The gate's policy with fake tiers (test doubles live here, never in deployments/)."""

import asyncio

import pytest

from deployments.config import SamplingDefaults
from deployments.failures import TierUnavailable
from deployments.policy import Cost, Tally, plan_attempts, run_gated
from deployments.protocol import (
    Candidate,
    GenerationResult,
    Overloaded,
    Sampling,
    ServiceUnavailable,
)
from deployments.quality import Calibration, Evidence, score_answer
from deployments.scoring import chosen_by_consensus

# A text-only calibration: a complete sentence scores 0.98, one cut mid-sentence 0.6.
TEXT_ONLY = Calibration(features=["completeness"], mean=[0.5], scale=[0.5], coef=[4.0],
                        intercept=0.0, threshold=0.9)


class Rung:
    """A tier as the policy sees it: a name and sampling defaults."""

    def __init__(self, index: int, temperature: float):
        self.name = f"t{index}"
        self.index = index
        self.defaults = SamplingDefaults(temperature=temperature)

    def sampling(self, requested: Sampling) -> Sampling:
        return requested.with_defaults(self.defaults)


def rungs(*temperatures: float) -> list[Rung]:
    return [Rung(i, t) for i, t in enumerate(temperatures)]


def result(text: str, tier: int, samples: tuple[str, ...] = ()) -> GenerationResult:
    return GenerationResult(
        choices=[Candidate(text=text, finish_reason="stop", completion_tokens=len(text.split()))],
        samples=[Candidate(text=s, finish_reason="stop", completion_tokens=1) for s in samples],
        prompt_tokens=3, model_id="m", tier=f"t{tier}")


class FakeTiers:
    """Each tier answers from a script; 'DOWN' / 'BUSY' raise TierUnavailable."""

    def __init__(self, scripts: dict[int, list[str]]):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: list[tuple[int, float | None]] = []

    async def generate(self, attempt):
        self.calls.append((attempt.tier.index, attempt.sampling.temperature))
        text = self.scripts[attempt.tier.index].pop(0)
        if text in ("DOWN", "BUSY"):
            raise TierUnavailable(attempt.tier.name, busy=text == "BUSY")
        return result(text, attempt.tier.index)


async def score(res: GenerationResult):
    # Text-only scoring: an answer ending mid-sentence or looping fails the 0.9 bar.
    return res, score_answer(Evidence(prompt="q", answer=res.text, finish_reason=res.finish_reason),
                             TEXT_ONLY)


def run(coro):
    return asyncio.run(coro)


def test_plan_retries_with_lower_temperature_then_escalates():
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), attempts_per_tier=2, max_attempts=10,
                         retry_temperature_factor=0.5)
    assert [(a.tier.name, a.sampling.temperature) for a in plan] == [
        ("t0", 0.8), ("t0", 0.4), ("t1", 0.2), ("t1", 0.1)]
    assert plan[1].sampling.seed is not None  # a retry samples with a new seed
    assert plan[0].sampling.top_k == 0  # each attempt carries its tier's defaults, resolved


def test_plan_respects_entry_tier_and_max_attempts_and_greedy():
    plan = plan_attempts(rungs(0.8, 0.2)[1:], Sampling(), 3, 2, 0.5)
    assert [a.tier.name for a in plan] == ["t1", "t1"]
    greedy = plan_attempts(rungs(0.8, 0.2), Sampling(temperature=0), 3, 10, 0.5)
    assert [a.tier.name for a in greedy] == ["t0", "t1"]  # retrying greedy decoding repeats itself
    assert plan_attempts(rungs(0.8), Sampling(seed=7), 2, 10, 0.5)[1].sampling.seed == 8
    zero_default = plan_attempts(rungs(0.0, 0.7), Sampling(), 2, 10, 0.5)  # a greedy tier too
    assert [(a.tier.name, a.sampling.temperature) for a in zero_default] == [
        ("t0", 0.0), ("t1", 0.7), ("t1", 0.35)]


def test_first_passing_answer_is_returned():
    tiers = FakeTiers({0: ["Paris is the capital of France."], 1: []})
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score))
    assert out.result.tier == "t0" and out.report.passed and out.report.attempts == 1
    assert len(tiers.calls) == 1


def test_low_score_retries_then_escalates_and_returns_best():
    tiers = FakeTiers({0: ["cut off in the", "again cut off in"],
                       1: ["also cut", "A complete answer."]})
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score))
    assert [c[0] for c in tiers.calls] == [0, 0, 1, 1]
    assert out.result.text == "A complete answer." and out.report.attempts == 4


def test_all_attempts_fail_returns_best_candidate_not_passed():
    tiers = FakeTiers({0: ["no end here", "Ends well."], 1: ["x y z", "nope no"]})
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), 2, 10, 0.5)

    async def strict(res):
        return res, score_answer(Evidence(prompt="q", answer=res.text, finish_reason="stop"),
                                 TEXT_ONLY, threshold=1.0)

    out = run(run_gated(plan, tiers.generate, strict))
    assert not out.report.passed and out.report.attempts == 4
    assert out.result.text == "Ends well."


def test_down_tier_is_skipped_and_next_serves():
    tiers = FakeTiers({0: ["DOWN", "never asked"], 1: ["Served by the next tier."]})
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score))
    assert out.result.tier == "t1" and [c[0] for c in tiers.calls] == [0, 1]


def test_every_tier_down_is_503():
    tiers = FakeTiers({0: ["DOWN"], 1: ["DOWN"]})
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), 2, 10, 0.5)
    with pytest.raises(ServiceUnavailable) as e:
        run(run_gated(plan, tiers.generate, score))
    assert e.value.status == 503 and e.value.retry_after_s


class SlowTiers(FakeTiers):
    """Each answer takes `seconds` on a fake clock."""

    def __init__(self, scripts, seconds: float):
        super().__init__(scripts)
        self.now, self.seconds = 0.0, seconds

    async def generate(self, attempt):
        self.now += self.seconds
        return await super().generate(attempt)


def test_budget_serves_the_best_answer_so_far_instead_of_another_attempt():
    # 20 s per answer, a 50 s budget: the second attempt starts (20 + 20 <= 50), a third would
    # end at 60 s, so the gate stops with the best of two, and says why.
    tiers = SlowTiers({0: ["cut off in the", "Ends well but"], 1: ["A complete answer."]}, 20)
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score, budget_s=50, clock=lambda: tiers.now))
    assert [c[0] for c in tiers.calls] == [0, 0]
    assert out.report.attempts == 2 and out.report.budget_exhausted and not out.report.passed
    # Within the budget the same plan runs on to the passing answer.
    tiers = SlowTiers({0: ["cut off in the", "Ends well but"], 1: ["A complete answer."]}, 20)
    out = run(run_gated(plan, tiers.generate, score, budget_s=100, clock=lambda: tiers.now))
    assert out.report.passed and out.report.attempts == 3 and not out.report.budget_exhausted


def test_budget_never_leaves_a_request_without_an_answer():
    tiers = SlowTiers({0: ["DOWN"], 1: ["Served late but served."]}, 500)
    plan = plan_attempts(rungs(0.8, 0.2), Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score, budget_s=1, clock=lambda: tiers.now))
    assert out.result.text == "Served late but served." and not out.report.budget_exhausted


def test_gate_off_returns_first_answer_unscored():
    tiers = FakeTiers({0: ["cut off in the"]})
    out = run(run_gated(plan_attempts(rungs(0.8), Sampling(), 2, 1, 0.5), tiers.generate, None))
    assert out.report is None and out.result.text == "cut off in the"


def test_a_full_tier_is_429_not_503():
    tiers = FakeTiers({0: ["BUSY"], 1: ["BUSY"]})
    plan = plan_attempts(rungs(0.7, 0.2), Sampling(), 2, 4, 0.5)
    with pytest.raises(Overloaded) as e:
        run(run_gated(plan, tiers.generate, score))
    assert e.value.status == 429 and e.value.retry_after_s
    mixed = FakeTiers({0: ["DOWN"], 1: ["BUSY"]})  # the tier that is up is only full
    with pytest.raises(Overloaded):
        run(run_gated(plan, mixed.generate, score))


def test_a_down_entry_tier_does_not_use_up_the_attempts():
    plan = plan_attempts(rungs(0.7, 0.2), Sampling(), 2, 4, 0.5)
    tiers = FakeTiers({0: ["DOWN"], 1: ["Paris is the capital of France."]})
    gate_off = run(run_gated(plan, tiers.generate, None, max_attempts=1))
    assert gate_off.result.tier == "t1"
    tiers = FakeTiers({0: ["DOWN"], 1: ["Paris is", "Paris is the capital of France."]})
    one = run(run_gated(plan, tiers.generate, score, max_attempts=1))
    assert one.result.tier == "t1" and one.report.attempts == 1 and not one.report.passed


def test_a_scorer_may_answer_with_another_candidate():
    """A consensus tier's scorer hands back the sample the others agree with: that one is served."""
    tiers = FakeTiers({0: ["The capital is Sydney."]})
    plan = plan_attempts(rungs(0.8), Sampling(), 1, 1, 0.5)

    async def consensus(res):
        res = result(res.text, 0, ("It is Canberra.", "Canberra.", "Canberra, in the ACT."))
        picked = chosen_by_consensus(res, 2)
        return picked, score_answer(Evidence(prompt="q", answer=picked.text, finish_reason="stop"),
                                    TEXT_ONLY)

    out = run(run_gated(plan, tiers.generate, consensus))
    assert out.result.text == "Canberra." and out.report.passed


def test_chosen_by_consensus_swaps_answer_and_sample():
    res = result("A.", 0, ("B.", "C."))
    assert chosen_by_consensus(res, 0) is res
    picked = chosen_by_consensus(res, 2)
    assert picked.text == "C." and [s.text for s in picked.samples] == ["A.", "B."]
    assert picked.tokens_generated == res.tokens_generated




def test_cost_is_stamped_once_over_every_attempt():
    cost = Cost()
    cost.generation_ms += 120.04
    cost.generation_ms += 80.0
    cost.scoring_ms += 5.55
    cost.tokens += 30
    report = score_answer(Evidence(prompt="q", answer="Yes.", finish_reason="stop"), TEXT_ONLY)
    assert report.timing is None
    cost.stamp(report)
    assert report.timing == {"generation_ms": 200.0, "scoring_ms": 5.5, "tokens": 30}
    cost.stamp(None)  # an unscored answer has no report to stamp


def test_a_tally_tells_retries_from_escalations():
    tally = Tally()
    assert [tally.next(t) for t in ("fast", "fast", "careful", "careful")] == [
        None, "retries", "escalations", "retries"]


def test_a_later_attempt_past_the_budget_is_cancelled_and_the_answer_in_hand_served():
    """The pace of a greedy answer says nothing of a consensus tier's 8 samples: an escalation
    still running when the budget ends is cancelled (its engine aborts), not waited on to a 504."""
    cancelled = []

    async def generate(attempt):
        if attempt.tier.index == 0:
            return result("cut off in the", 0)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(attempt.tier.name)
            raise
        return result("A complete answer.", 1)

    plan = plan_attempts(rungs(0.0, 0.2), Sampling(temperature=0), 1, 10, 0.5)
    out = run(run_gated(plan, generate, score, budget_s=0.3))
    assert cancelled == ["t1"] and out.result.text == "cut off in the"
    assert out.report.budget_exhausted and out.report.attempts == 1
    # the first answer is never cut short: without it there is nothing to serve
    slow_first = run(run_gated(plan[:1], lambda a: asyncio.sleep(0.4, result("Late but whole.", 0)),
                               score, budget_s=0.1))
    assert slow_first.result.text == "Late but whole."
