"""One guarded call per downstream deployment: skipped when down, bounded, ended when its
deployment falls, failures mapped and counted (fake handles, no Ray)."""

import asyncio

import pytest
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments.availability import Availability
from deployments.config import EmbedderConfig, LLMConfig, SamplingDefaults
from deployments.failures import TierUnavailable
from deployments.protocol import Sampling, ServiceUnavailable
from deployments.tier import Downstream, Tier, by_model, ladder
from tests.support.fakes import FakeHandle


def fast(handle=None, silent=0.0) -> tuple[Tier, Availability]:
    seen = Availability(["fast", "careful"], stall_after_s=5, tiers=["fast", "careful"])
    seen.up("fast", {"engine_silent_s": silent})
    seen.up("careful", {"engine_silent_s": 0.0})
    tier = Tier(LLMConfig(name="fast"), handle or FakeHandle())
    tier.attach(seen)
    return tier, seen


def test_a_silent_engine_is_routed_around_and_its_waiting_calls_are_told():
    """A probe that finds an engine core silent past `stall_after_s` marks the tier stalled,
    down while another tier can answer: a call already waiting on it ends at once with a 503
    instead of at its timeout; the tier is back, with a fresh signal, when its core answers."""

    async def scenario():
        tier, seen = fast(silent=0.8)
        assert not tier.is_down()
        assert await tier._unless_down(asyncio.sleep(0, "answer"), 1) == "answer"
        with pytest.raises(asyncio.TimeoutError):  # a slow call still times out
            await tier._unless_down(asyncio.sleep(10), 0.05)

        never = asyncio.get_running_loop().create_future()  # an engine that will not answer
        waiting = asyncio.ensure_future(tier._unless_down(never, 60))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        seen.up("fast", {"engine_silent_s": 6.2})
        with pytest.raises(ServiceUnavailable, match="stalled"):
            await asyncio.wait_for(waiting, 1)
        assert never.cancelled()  # the call itself is cancelled: its engine aborts it
        assert tier.is_down() and seen.state["fast"]["status"] == "stalled"

        seen.up("fast", {"engine_silent_s": 0.0})
        assert not tier.is_down() and not seen.fell("fast").is_set()
        assert await tier._unless_down(asyncio.sleep(0, "again"), 1) == "again"

    asyncio.run(scenario())


def test_a_call_is_skipped_when_down_and_its_failure_marks_the_tier():
    async def gone(request):
        raise DeploymentUnavailableError("fast")

    async def full(request):
        raise BackPressureError(num_queued_requests=1, max_queued_requests=1)

    async def slow(request):
        await asyncio.sleep(10)

    async def answer(request):
        return f"answer to {request}"

    async def scenario():
        tier, seen = fast(FakeHandle(generate=answer))
        assert await tier.call("generate", "q", 1) == "answer to q"
        tier.handle.methods["generate"] = full
        with pytest.raises(TierUnavailable) as busy:
            await tier.call("generate", "q", 1)
        assert busy.value.busy and not tier.is_down()  # full is not down
        tier.handle.methods["generate"] = slow
        with pytest.raises(TierUnavailable):
            await tier.call("generate", "q", 0.01)
        assert not tier.is_down()  # a timeout is left to the probe
        tier.handle.methods["generate"] = gone
        with pytest.raises(TierUnavailable) as down:
            await tier.call("generate", "q", 1)
        assert not down.value.busy and tier.is_down()
        calls = len(tier.handle.calls)
        with pytest.raises(TierUnavailable):  # known down: nothing is sent
            await tier.call("generate", "q", 1)
        assert len(tier.handle.calls) == calls
        assert await tier.call_or_none("generate", "q", 1) is None

    asyncio.run(scenario())


def test_a_stream_gives_its_first_step_then_the_rest_and_closing_it_cancels_the_call():
    async def steps(request):
        for word in ("Paris", " is", " the capital."):
            yield word

    async def scenario():
        tier, _ = fast(FakeHandle(stream=steps))
        first, rest = await tier.steps("q", 1)
        assert first == "Paris" and [s async for s in rest] == [" is", " the capital."]
        assert tier.handle.streams[0].cancelled  # ended: the call is released
        first, rest = await tier.steps("q", 1)
        await rest.aclose()  # the client went away after the first step
        assert tier.handle.streams[1].cancelled

        async def nothing(request):
            return
            yield

        tier.handle.methods["stream"] = nothing
        first, rest = await tier.steps("q", 1)
        assert first is None and [s async for s in rest] == []

    asyncio.run(scenario())


def test_tiers_group_by_model_and_climb_in_rank_order():
    careful = Tier(LLMConfig(name="careful", model_id="big"), None, rank=1)
    quick = Tier(LLMConfig(name="fast", model_id="small"), None, rank=0)
    second = Tier(LLMConfig(name="fast2", model_id="small"), None, rank=2)
    grouped = by_model([careful, second, quick])
    assert list(grouped) == ["small", "big"]
    assert [t.name for t in grouped["small"]] == ["fast", "fast2"]
    assert [t.name for t in ladder(grouped)] == ["fast", "careful", "fast2"]


def test_a_tier_fills_the_client_s_unset_sampling_with_its_defaults():
    tier = Tier(LLMConfig(name="fast", sampling=SamplingDefaults(temperature=0.2, top_p=0.9)), None)
    assert tier.sampling(Sampling()).temperature == 0.2
    assert tier.sampling(Sampling(temperature=1.0)).temperature == 1.0
    embedder = Downstream(EmbedderConfig(), None)
    assert (embedder.name, embedder.model_id) == ("embedder", "all-minilm-l6-v2")
    assert not embedder.is_down()  # no availability attached yet: not known down
