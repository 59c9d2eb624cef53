"""The gate over fake tiers (fake Serve handles, no Ray): what each attempt asks of a tier, the
whole and streamed paths, retries and escalations counted on both."""

import asyncio

import numpy as np
import pytest
from ray.serve.exceptions import DeploymentUnavailableError

from deployments.config import EmbedderConfig, LLMConfig, RouterConfig, SamplingDefaults
from deployments.gate import Gate
from deployments.policy import Attempt
from deployments.protocol import (
    BadRequest,
    Candidate,
    GenerationDelta,
    GenerationResult,
    Job,
    ModelNotFound,
    QualityOverride,
    Sampling,
    StreamReport,
    StreamStart,
)
from deployments.tier import Downstream, Tier, by_model
from tests.support.fakes import FakeHandle


pytestmark = pytest.mark.usefixtures("counted")  # tests/conftest.py


def tier_handle(name: str, answers: list[str]) -> FakeHandle:
    """A tier that answers from a script and reports itself healthy."""
    script = list(answers)

    async def generate(request):
        text = script.pop(0)
        return GenerationResult(
            choices=[Candidate(text=text, finish_reason="stop", completion_tokens=len(text.split()))],
            samples=[Candidate(text=text, finish_reason="stop", completion_tokens=1)
                     for _ in range(request.samples)],
            prompt_tokens=4, model_id="m", tier=name)

    async def stream(request):
        for word in script.pop(0).split(" "):
            yield GenerationDelta(text=word + " ", prompt_tokens=4, completion_tokens=1)
        yield GenerationDelta(finish_reason="stop", prompt_tokens=4, completion_tokens=2)

    async def info():
        return {"engine_silent_s": 0.0}

    return FakeHandle(generate=generate, stream=stream, info=info)


def gate_with(fast: list[str], careful: list[str], **router) -> Gate:
    async def embed_for_scoring(texts):
        return np.ones((len(texts), 2)), np.ones(len(texts))

    async def info():
        return {}

    tiers = [Tier(LLMConfig(name="fast", model_id="m", sampling=SamplingDefaults(temperature=0.6)),
                  tier_handle("fast", fast), rank=0),
             Tier(LLMConfig(name="careful", model_id="m", consensus_samples=8,
                            consensus_temperature=0.3), tier_handle("careful", careful), rank=1)]
    embedder = Downstream(EmbedderConfig(), FakeHandle(embed_for_scoring=embed_for_scoring, info=info))
    config = RouterConfig.model_validate({"canary": {"interval_s": 0}, **router})
    return Gate(config, by_model(tiers), embedder)


def take_down(gate: Gate, name: str) -> None:
    """The tier is down, and its probes keep finding it so."""

    async def gone():
        raise DeploymentUnavailableError(name)

    (tier,) = [t for t in gate.ladder if t.name == name]
    tier.handle.methods["info"] = gone
    gate.availability.down(name, DeploymentUnavailableError(name))


def job(**quality) -> Job:
    return Job(request_id="r", model="m", messages=[{"role": "user", "content": "hi"}],
               relevance_text="hi", sampling=Sampling(),
               quality=QualityOverride(**quality) if quality else None)


def test_a_stream_draws_only_the_scoring_samples_even_from_a_consensus_tier():
    """A streamed answer is sent as it is made, so a consensus tier's extra samples could pick
    nothing: the stream draws the scoring samples only (at their temperature)."""

    async def scenario():
        gate = gate_with([], [], quality={"samples": 4, "sample_temperature": 0.8,
                                          "sample_below": 1.0})
        careful = gate.ladder[1]
        attempt = Attempt(careful, careful.sampling(Sampling()))
        settings = gate.settings(job())
        whole = gate._generation(job(), "r", attempt, settings)
        streamed = gate._generation(job(), "r", attempt, settings, consensus=False)
        assert (whole.samples, whole.sample_temperature) == (8, 0.3)
        assert (streamed.samples, streamed.sample_temperature) == (4, 0.8)
        off = gate._generation(job(), "r", attempt, gate.settings(job(enabled=False)), consensus=False)
        assert (off.samples, off.signal_top_k) == (0, 0)

    asyncio.run(scenario())


def test_in_the_cascade_no_scoring_sample_is_drawn_with_the_answer():
    """Below sample_below 1 the scorer draws samples after the answer, if at all; a consensus
    tier still draws its own with the answer (they are its candidates)."""

    async def scenario():
        gate = gate_with([], [], quality={"samples": 4, "sample_below": 0.5})
        fast, careful = gate.ladder
        settings = gate.settings(job())
        assert (settings.in_engine_samples, settings.later_samples) == (0, 4)
        first = gate._generation(job(), "r", Attempt(fast, fast.sampling(Sampling())), settings)
        assert first.samples == 0 and first.signal_top_k == 5
        consensus = gate._generation(job(), "r", Attempt(careful, careful.sampling(Sampling())),
                                     settings)
        assert consensus.samples == 8
        always = gate.settings(job(sample_below=1.0))
        assert (always.in_engine_samples, always.later_samples) == (4, 0)
        # samples are evidence unless quality.vote (config or request); a consensus tier votes
        assert not gate._votes(fast, settings) and gate._votes(careful, settings)
        voting = gate_with([], [], quality={"vote": True})
        assert voting._votes(fast, voting.settings(job()))
        assert gate._votes(fast, gate.settings(job(vote=True)))
        assert not voting._votes(fast, voting.settings(job(vote=False)))

    asyncio.run(scenario())


def test_the_client_s_override_wins_over_the_config():
    async def scenario():
        gate = gate_with([], [])
        plain = gate.settings(job())
        assert (plain.enabled, plain.samples, plain.max_attempts, plain.mode, plain.threshold) == (
            True, 4, 4, "report", None)
        mine = gate.settings(job(enabled=False, samples=2, max_attempts=1, gate_mode="buffered",
                                 threshold=0.2))
        assert (mine.enabled, mine.samples, mine.max_attempts, mine.mode, mine.threshold) == (
            False, 2, 1, "buffered", 0.2)

    asyncio.run(scenario())


def test_the_entry_tier_is_the_model_s_first_or_the_one_named():
    async def scenario():
        gate = gate_with([], [])
        assert gate.model_ids == ["m"] and gate.entry("m").name == "fast"
        assert gate.entry("m", "careful").name == "careful"
        with pytest.raises(ModelNotFound):
            gate.entry("other")
        with pytest.raises(BadRequest) as e:
            gate.entry("m", "nope")
        assert e.value.param == "quality.tier"

    asyncio.run(scenario())


def test_a_low_score_escalates_with_each_tier_s_sampling_and_is_counted(counted):
    async def scenario():
        # A threshold no answer reaches: every planned attempt is made, the best served.
        gate = gate_with(["cut off in", "also cut"], ["A whole answer.", "Another one."])
        result, report = await gate.complete(job(threshold=1.0))
        fast, careful = (t.handle for t in gate.ladder)
        temperatures = [c[1][0].sampling.temperature for c in fast.calls if c[0] == "generate"]
        assert temperatures == [0.6, 0.3]  # the tier's default, then a retry at half of it
        assert [c[1][0].samples for c in careful.calls if c[0] == "generate"] == [8, 8]
        assert report["attempts"] == 4 and not report["passed"]
        assert set(report["timing"]) == {"generation_ms", "scoring_ms", "tokens"}
        return result

    asyncio.run(scenario())
    moves = [(n, t["tier"]) for n, t in counted if n.startswith("graphserve_quality_re")
             or n.startswith("graphserve_quality_esc")]
    assert moves == [("graphserve_quality_retries", "fast"),
                     ("graphserve_quality_escalations", "careful"),
                     ("graphserve_quality_retries", "careful")]


def test_max_attempts_one_scores_and_reports_but_a_down_tier_still_fails_over(counted):
    """`router.max_attempts: 1` (the CPU default): an answer below the threshold is reported,
    not redone; a tier that is down is skipped, not counted, so the next tier still answers."""

    async def scenario():
        gate = gate_with(["cut off in"], ["Canberra is.", "Never asked."], max_attempts=1)
        assert gate.settings(job()).max_attempts == 1
        assert gate.settings(job(max_attempts=3)).max_attempts == 3  # a request may ask for more
        _, report = await gate.complete(job(threshold=1.0))
        assert report["attempts"] == 1 and not report["passed"] and report["tier"] == "fast"
        take_down(gate, "fast")
        result, report = await gate.complete(job(threshold=1.0))
        assert report["attempts"] == 1 and report["tier"] == "careful"
        return result

    assert asyncio.run(scenario()).text == "Canberra is."
    assert not [n for n, _ in counted if n in ("graphserve_quality_retries",
                                                "graphserve_quality_escalations")]


def test_gate_off_serves_the_first_answer_unscored_and_records_no_quality_metric(counted):
    async def scenario():
        gate = gate_with(["cut off in"], [])
        return await gate.complete(job(enabled=False))

    result, report = asyncio.run(scenario())
    assert result.text == "cut off in" and report is None
    assert not [n for n, _ in counted if n.startswith("graphserve_quality")]


def test_a_stream_starts_sends_its_deltas_then_its_report():
    async def scenario():
        gate = gate_with([], [], quality={"samples": 0})
        script = ["Paris is the capital."]

        async def stream(request):
            for word in script.pop(0).split(" "):
                yield GenerationDelta(text=word + " ", prompt_tokens=4, completion_tokens=1)

        gate.ladder[0].handle.methods["stream"] = stream
        return [e async for e in gate.stream(job())]

    events = asyncio.run(scenario())
    assert events[0] == StreamStart(tier="fast", model="m")
    assert "".join(e.text for e in events[1:-1]) == "Paris is the capital. "
    assert isinstance(events[-1], StreamReport) and events[-1].report["tier"] == "fast"
    assert set(events[-1].report["timing"]) == {"generation_ms", "scoring_ms", "tokens"}


def test_a_stream_escalates_past_a_tier_that_is_down(counted):
    async def scenario():
        gate = gate_with([], ["Canberra is."])
        take_down(gate, "fast")
        events = [e async for e in gate.stream(job(enabled=False))]
        return events

    events = asyncio.run(scenario())
    assert events[0].tier == "careful" and not isinstance(events[-1], StreamReport)
    assert ("graphserve_tier_unavailable", {"tier": "fast"}) in counted
