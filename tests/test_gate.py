"""The gate's policy with fake tiers (test doubles live here, never in deployments/)."""

import asyncio

import pytest
from ray.serve.exceptions import DeploymentUnavailableError

from deployments.gate import (
    TierUnavailable,
    chosen_by_consensus,
    plan_attempts,
    run_gated,
)
from deployments.protocol import (
    Candidate,
    GenerationResult,
    Job,
    Sampling,
    ServiceUnavailable,
)
from deployments.quality import Calibration, Evidence, score_answer

# A text-only calibration: a complete sentence scores 0.98, one cut mid-sentence 0.6.
TEXT_ONLY = Calibration(features=["completeness"], mean=[0.5], scale=[0.5], coef=[4.0],
                        intercept=0.0, threshold=0.9)


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
        self.calls.append((attempt.tier, attempt.sampling.temperature))
        text = self.scripts[attempt.tier].pop(0)
        if text in ("DOWN", "BUSY"):
            raise TierUnavailable(f"t{attempt.tier}", busy=text == "BUSY")
        return result(text, attempt.tier)


async def score(res: GenerationResult):
    # Text-only scoring: an answer ending mid-sentence or looping fails the 0.9 bar.
    return res, score_answer(Evidence(prompt="q", answer=res.text, finish_reason=res.finish_reason),
                             TEXT_ONLY)


def run(coro):
    return asyncio.run(coro)


def test_plan_retries_with_lower_temperature_then_escalates():
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), attempts_per_tier=2, max_attempts=10,
                         retry_temperature_factor=0.5)
    assert [(a.tier, a.sampling.temperature) for a in plan] == [
        (0, None), (0, 0.4), (1, None), (1, 0.1)]
    assert plan[1].sampling.seed is not None  # a retry samples with a new seed


def test_plan_respects_entry_tier_and_max_attempts_and_greedy():
    plan = plan_attempts(1, [0.8, 0.2], Sampling(), 3, 2, 0.5)
    assert [a.tier for a in plan] == [1, 1]
    greedy = plan_attempts(0, [0.8, 0.2], Sampling(temperature=0), 3, 10, 0.5)
    assert [a.tier for a in greedy] == [0, 1]  # retrying greedy decoding repeats itself
    assert plan_attempts(0, [0.8], Sampling(seed=7), 2, 10, 0.5)[1].sampling.seed == 8


def test_first_passing_answer_is_returned():
    tiers = FakeTiers({0: ["Paris is the capital of France."], 1: []})
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score))
    assert out.result.tier == "t0" and out.report.passed and out.report.attempts == 1
    assert len(tiers.calls) == 1


def test_low_score_retries_then_escalates_and_returns_best():
    tiers = FakeTiers({0: ["cut off in the", "again cut off in"],
                       1: ["also cut", "A complete answer."]})
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score))
    assert [c[0] for c in tiers.calls] == [0, 0, 1, 1]
    assert out.result.text == "A complete answer." and out.report.attempts == 4


def test_all_attempts_fail_returns_best_candidate_not_passed():
    tiers = FakeTiers({0: ["no end here", "Ends well."], 1: ["x y z", "nope no"]})
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), 2, 10, 0.5)

    async def strict(res):
        return res, score_answer(Evidence(prompt="q", answer=res.text, finish_reason="stop"),
                                 TEXT_ONLY, threshold=1.0)

    out = run(run_gated(plan, tiers.generate, strict))
    assert not out.report.passed and out.report.attempts == 4
    assert out.result.text == "Ends well."


def test_down_tier_is_skipped_and_next_serves():
    tiers = FakeTiers({0: ["DOWN", "never asked"], 1: ["Served by the next tier."]})
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score))
    assert out.result.tier == "t1" and [c[0] for c in tiers.calls] == [0, 1]


def test_every_tier_down_is_503():
    tiers = FakeTiers({0: ["DOWN"], 1: ["DOWN"]})
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), 2, 10, 0.5)
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
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score, budget_s=50, clock=lambda: tiers.now))
    assert [c[0] for c in tiers.calls] == [0, 0]
    assert out.report.attempts == 2 and out.report.budget_exhausted and not out.report.passed
    # Within the budget the same plan runs on to the passing answer.
    tiers = SlowTiers({0: ["cut off in the", "Ends well but"], 1: ["A complete answer."]}, 20)
    out = run(run_gated(plan, tiers.generate, score, budget_s=100, clock=lambda: tiers.now))
    assert out.report.passed and out.report.attempts == 3 and not out.report.budget_exhausted


def test_budget_never_leaves_a_request_without_an_answer():
    tiers = SlowTiers({0: ["DOWN"], 1: ["Served late but served."]}, 500)
    plan = plan_attempts(0, [0.8, 0.2], Sampling(), 2, 10, 0.5)
    out = run(run_gated(plan, tiers.generate, score, budget_s=1, clock=lambda: tiers.now))
    assert out.result.text == "Served late but served." and not out.report.budget_exhausted


def test_gate_off_returns_first_answer_unscored():
    tiers = FakeTiers({0: ["cut off in the"]})
    out = run(run_gated(plan_attempts(0, [0.8], Sampling(), 2, 1, 0.5), tiers.generate, None))
    assert out.report is None and out.result.text == "cut off in the"


def test_availability_marks_down_until_a_probe_answers():
    from deployments.gate import Availability

    seen = Availability(["fast", "embedder"])
    assert not seen.is_down("fast") and seen.state["fast"]["status"] == "starting"
    seen.down("fast", asyncio.TimeoutError())  # still loading its model: starting, not down
    assert not seen.is_down("fast")
    seen.down("fast", ConnectionError("gone"))  # an explicit failure: down
    assert seen.is_down("fast") and seen.state["fast"]["error"] == "ConnectionError"
    seen.up("fast", {"model": "m", "load_seconds": 1.0})
    assert not seen.is_down("fast") and seen.state["fast"] == {
        "status": "ok", "model": "m", "load_seconds": 1.0}
    seen.down("fast", asyncio.TimeoutError())  # answered before, slow now (a burst): not down
    assert not seen.is_down("fast") and seen.state["fast"]["status"] == "slow"
    seen.down("fast", DeploymentUnavailableError("fast"))
    assert seen.is_down("fast") and not seen.is_down("embedder")


def test_a_silent_engine_is_routed_around_and_its_waiting_calls_are_told():
    """A probe that finds an engine core silent past `stall_after_s` marks the tier stalled,
    down while another tier can answer: a call already waiting on it ends at once with a 503
    instead of at its timeout; the tier is back, with a fresh signal, when its core answers."""
    from deployments.gate import Availability, Gate

    async def scenario():
        gate = Gate.__new__(Gate)  # only the availability is needed: no Ray
        gate.availability = seen = Availability(["fast", "careful", "embedder"], stall_after_s=5,
                                                tiers=["fast", "careful"])
        seen.up("fast", {"engine_silent_s": 0.8})
        seen.up("careful", {"engine_silent_s": 0.0})
        assert not seen.is_down("fast")
        assert await gate._unless_down("fast", asyncio.sleep(0, "answer"), 1) == "answer"
        with pytest.raises(asyncio.TimeoutError):  # a slow call still times out
            await gate._unless_down("fast", asyncio.sleep(10), 0.05)

        never = asyncio.get_running_loop().create_future()  # an engine that will not answer
        waiting = asyncio.ensure_future(gate._unless_down("fast", never, 60))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        seen.up("fast", {"engine_silent_s": 6.2})
        with pytest.raises(ServiceUnavailable, match="stalled"):
            await asyncio.wait_for(waiting, 1)
        assert never.cancelled()  # the call itself is cancelled: its engine aborts it
        assert seen.is_down("fast") and seen.state["fast"]["status"] == "stalled"

        seen.up("fast", {"engine_silent_s": 0.0})
        assert not seen.is_down("fast") and not seen.fell("fast").is_set()
        assert await gate._unless_down("fast", asyncio.sleep(0, "again"), 1) == "again"

    asyncio.run(scenario())


def test_a_stalled_tier_is_still_used_when_no_other_tier_can_answer_sooner():
    """A stall may be a slow step on a crowded host: with the other tier dead, the stalled one
    serves (waiting beats a 503); with both stalled, the less silent one does."""
    from deployments.gate import Availability

    seen = Availability(["fast", "careful"], stall_after_s=5, tiers=["fast", "careful"])
    seen.up("fast", {"engine_silent_s": 0.0})
    seen.up("careful", {"engine_silent_s": 7.0})
    assert seen.is_down("careful")
    seen.down("fast", DeploymentUnavailableError("fast"))
    assert seen.is_down("fast") and not seen.is_down("careful")
    assert not seen.fell("careful").is_set()  # back up, told with a fresh signal
    seen.up("fast", {"engine_silent_s": 9.0})
    assert seen.is_down("fast") and not seen.is_down("careful")
    seen.up("careful", {"engine_silent_s": 12.0})
    assert not seen.is_down("fast") and seen.is_down("careful")
    assert seen.fell("careful").is_set()


def test_a_full_tier_is_429_not_503():
    from deployments.protocol import Overloaded

    tiers = FakeTiers({0: ["BUSY"], 1: ["BUSY"]})
    plan = plan_attempts(0, [0.7, 0.2], Sampling(), 2, 4, 0.5)
    with pytest.raises(Overloaded) as e:
        run(run_gated(plan, tiers.generate, score))
    assert e.value.status == 429 and e.value.retry_after_s
    mixed = FakeTiers({0: ["DOWN"], 1: ["BUSY"]})  # the tier that is up is only full
    with pytest.raises(Overloaded):
        run(run_gated(plan, mixed.generate, score))


def test_a_down_entry_tier_does_not_use_up_the_attempts():
    plan = plan_attempts(0, [0.7, 0.2], Sampling(), 2, 4, 0.5)
    tiers = FakeTiers({0: ["DOWN"], 1: ["Paris is the capital of France."]})
    gate_off = run(run_gated(plan, tiers.generate, None, max_attempts=1))
    assert gate_off.result.tier == "t1"
    tiers = FakeTiers({0: ["DOWN"], 1: ["Paris is", "Paris is the capital of France."]})
    one = run(run_gated(plan, tiers.generate, score, max_attempts=1))
    assert one.result.tier == "t1" and one.report.attempts == 1 and not one.report.passed


def test_a_scorer_may_answer_with_another_candidate():
    """A consensus tier's scorer hands back the sample the others agree with: that one is served."""
    tiers = FakeTiers({0: ["The capital is Sydney."]})
    plan = plan_attempts(0, [0.8], Sampling(), 1, 1, 0.5)

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


def test_evidence_splits_vectors_and_keeps_missing_as_none():
    from deployments.protocol import TokenLogprob
    from deployments.gate import evidence

    tokens = [TokenLogprob(token="a", logprob=-0.5, top=[("a", -0.5), ("b", -1.2)])]
    e = evidence("q", "a", "stop", tokens, ["a", "b"], [[1.0], [2.0], [3.0], [4.0]])
    assert e.prompt_vec == [1.0] and e.answer_vec == [2.0] and e.sample_vecs == [[3.0], [4.0]]
    assert e.logprobs == [-0.5] and e.tops == [[-0.5, -1.2]] and e.cross_tier_logprobs is None
    given = evidence("q", "a", "stop", None, None, None)
    assert given.logprobs is None and given.samples is None and given.answer_vec is None


def test_one_failure_policy_says_what_each_failure_means_for_the_deployment_and_the_client():
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    from deployments.gate import api_error, failure
    from deployments.protocol import APIError, BadRequest, Overloaded

    assert failure(BackPressureError(num_queued_requests=1, max_queued_requests=1)) == "busy"
    assert failure(Overloaded("full")) == "busy"
    assert failure(asyncio.TimeoutError()) == "slow"
    assert failure(DeploymentUnavailableError("fast")) == "down"
    assert failure(ServiceUnavailable("engine is dead")) == "down"
    assert failure(BadRequest("bad")) is None and failure(ValueError("bug")) is None
    # Ray wraps what a replica raised: the policy judges the cause.
    wrapped = RayTaskError("generate", "traceback", ServiceUnavailable("engine is dead"))
    assert failure(wrapped) == "down" and isinstance(api_error(wrapped), ServiceUnavailable)

    busy = api_error(BackPressureError(num_queued_requests=1, max_queued_requests=1))
    down = api_error(DeploymentUnavailableError("fast"))
    assert (busy.status, busy.retry_after_s) == (429, Overloaded.retry_after_s) == (429, 1)
    assert (down.status, down.retry_after_s) == (503, ServiceUnavailable.retry_after_s) == (503, 5)
    bug = api_error(ValueError("bug"))
    assert type(bug) is APIError and bug.status == 500 and "internal" in bug.message
    given = BadRequest("bad", param="n")
    assert api_error(given) is given


def test_a_stream_draws_only_the_scoring_samples_even_from_a_consensus_tier():
    """A streamed answer is sent as it is made, so a consensus tier's extra samples could pick
    nothing: the stream draws the scoring samples only (at their temperature)."""
    from deployments.config import LLMConfig, QualityConfig
    from deployments.gate import Gate

    gate = Gate.__new__(Gate)
    gate.tiers = [LLMConfig(name="careful", consensus_samples=8, consensus_temperature=0.3)]
    job = Job(request_id="r", model="m", messages=[{"role": "user", "content": "hi"}],
              relevance_text="hi", sampling=Sampling())
    qcfg = QualityConfig(samples=4, sample_temperature=0.8)
    whole = gate._generation(job, "r", Sampling(), 0, qcfg)
    streamed = gate._generation(job, "r", Sampling(), 0, qcfg, consensus=False)
    assert (whole.samples, whole.sample_temperature) == (8, 0.3)
    assert (streamed.samples, streamed.sample_temperature) == (4, 0.8)
