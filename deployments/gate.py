"""The quality gate: generate, score the answer, and act on the score.

`Gate` lives inside the router deployment (`router.py`), in the same process as the HTTP routes,
so a request crosses proxy -> router -> LLM tier. It runs the policy (`policy.py`) over the tiers
(`tier.py`), scores with `scoring.py`, and keeps the deployments' availability (`availability.py`)
and each tier's canary (`canary.py`) up to date in the background.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from deployments import availability, canary, metrics
from deployments.config import RouterConfig
from deployments.policy import Attempt, Cost, Outcome, Tally, plan_attempts, run_gated
from deployments.protocol import (
    BadRequest,
    Candidate,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    Job,
    ModelNotFound,
    QualityScoreRequest,
    Sampling,
    StreamReport,
    StreamStart,
    new_id,
)
from deployments.scoring import Scorer
from deployments.tier import Downstream, Tier, ladder


@dataclass
class Settings:
    """The gate for one request: the config with the client's `quality` override on top."""

    enabled: bool
    samples: int
    max_attempts: int
    mode: str
    threshold: float | None  # the client's; None: the scorer's own (`Scorer.threshold`)
    sample_below: float  # the cascade: samples only below this sample-free score (1: always)
    vote: bool  # serve the candidate the samples agree with most (a consensus tier always does)

    @property
    def in_engine_samples(self) -> int:
        """Samples drawn with the answer, in the same engine request (not in the cascade)."""
        return self.samples if self.enabled and self.sample_below >= 1 else 0

    @property
    def later_samples(self) -> int:
        """Samples the scorer draws after the answer, when its sample-free score is in doubt."""
        return self.samples if self.enabled and self.sample_below < 1 else 0


class Gate:
    """The tiers by model id, the embedder, what is known of their availability, and the scorer.
    Built inside a running event loop: it starts the probes and the canary."""

    def __init__(self, config: RouterConfig, tiers: dict[str, list[Tier]], embedder: Downstream):
        self.config = config
        self.tiers = tiers
        self.ladder = ladder(tiers)
        self.embedder = embedder
        names = [t.name for t in self.ladder]
        self.availability = availability.Availability([*names, embedder.name],
                                                      config.stall_reroute_s, names,
                                                      config.frozen_reroute_s)
        for downstream in (*self.ladder, embedder):
            downstream.attach(self.availability)
        self.scorer = Scorer(config.quality, embedder, self.ladder, config.embedder_timeout_s,
                             config.generation_timeout_s)
        self.canary: dict[str, dict] = {}  # tier -> its last canary round
        # Probing now makes each handle's first call off the request path: a fresh handle's first
        # call to a deployment that failed to start would wait forever.
        self._background = [asyncio.create_task(availability.watch(
            d.name, d.handle.info.remote, self.availability, config.probe_interval_s,
            config.probe_timeout_s)) for d in (*self.ladder, embedder)]
        if config.canary.interval_s > 0:
            self._background += [asyncio.create_task(canary.watch(
                t.name, lambda t=t: self.availability.state[t.name]["status"] in ("ok", "slow"),
                lambda prompt, t=t: self._canary_answer(t, prompt), config.canary.checks,
                config.canary.interval_s, config.canary.min_correct_share, self.canary))
                for t in self.ladder]

    @property
    def model_ids(self) -> list[str]:
        return list(self.tiers)

    def entry(self, model: str, tier: str | None = None, param: str = "quality.tier") -> Tier:
        """The first tier serving `model`, or the one of them named `tier`."""
        if model not in self.tiers:
            raise ModelNotFound.named(model, self.model_ids)
        for candidate in self.tiers[model]:
            if tier in (None, candidate.name):
                return candidate
        raise BadRequest(f"no tier named {tier!r} serves {model!r}; tiers: "
                         f"{', '.join(t.name for t in self.ladder)}", param=param)

    def settings(self, job: Job) -> Settings:
        cfg, override = self.config, job.quality
        defaults = Settings(cfg.quality.enabled, cfg.quality.samples,
                            cfg.max_attempts or cfg.max_attempts_per_tier * len(self.ladder),
                            cfg.gate_mode, None,
                            cfg.quality.sample_below, cfg.quality.vote)
        if override is None:
            return defaults
        given = {"enabled": override.enabled, "samples": override.samples,
                 "max_attempts": override.max_attempts, "mode": override.gate_mode,
                 "threshold": override.threshold, "sample_below": override.sample_below,
                 "vote": override.vote}
        return Settings(**{**defaults.__dict__, **{k: v for k, v in given.items() if v is not None}})

    def _generation(self, job: Job, request_id: str, attempt: Attempt, settings: Settings,
                    consensus: bool = True) -> GenerationRequest:
        """One attempt's request to a tier: the client's sampling, plus what the gate needs: the
        scoring samples drawn with the answer (none in the cascade: the scorer draws them later,
        if at all), or a consensus tier's if more (not for a stream: its answer is sent as it is
        made, so no consensus can pick another)."""
        tier: Tier = attempt.tier
        by_consensus = consensus and tier.consensus_samples > 0
        return GenerationRequest(
            request_id=request_id, sampling=attempt.sampling,
            samples=max(settings.in_engine_samples,
                        tier.consensus_samples if by_consensus else 0),
            sample_temperature=(tier.config.consensus_temperature if by_consensus
                                else self.config.quality.sample_temperature),
            signal_top_k=self.config.quality.signal_top_k if settings.enabled else 0,
            **job.prompt_fields())

    # -- answers ----------------------------------------------------------------------------

    async def complete(self, job: Job) -> tuple[GenerationResult, dict | None]:
        """Non-streaming: the gated answer and its quality report."""
        outcome = await self._gated(job, self.settings(job))
        return outcome.result, None if outcome.report is None else outcome.report.to_dict()

    async def _gated(self, job: Job, settings: Settings) -> Outcome:
        entry = self.entry(job.model, job.quality and job.quality.tier)
        plan = plan_attempts(self.ladder[entry.rank:], job.sampling,
                             self.config.max_attempts_per_tier,
                             self.config.max_attempts_per_tier * len(self.ladder),
                             self.config.retry_temperature_factor)
        counter, cost, tally = iter(range(len(plan))), Cost(), Tally()
        deadline = time.monotonic() + self.config.gate_budget_s

        async def generate(attempt: Attempt) -> GenerationResult:
            tier: Tier = attempt.tier
            self._count_move(tally, tier)
            request = self._generation(job, f"{job.request_id}-{next(counter)}", attempt, settings)
            started = time.monotonic()
            result = await tier.call("generate", request, self.config.generation_timeout_s)
            cost.generation_ms += (time.monotonic() - started) * 1000
            cost.tokens += result.tokens_generated
            if tier.consensus_samples and not settings.enabled:
                result, _ = await self.scorer.consensus_pick(job, result)
            return result

        async def score(result: GenerationResult):
            tier = next(t for t in self.ladder if t.name == result.tier)
            return await self.scorer.judge(job, result, tier, self._votes(tier, settings), cost,
                                           settings.threshold, draw=settings.later_samples,
                                           sample_below=settings.sample_below, deadline=deadline)

        outcome = await run_gated(plan, generate, score if settings.enabled else None,
                                  settings.max_attempts, budget_s=self.config.gate_budget_s)
        cost.stamp(outcome.report)
        return outcome

    async def stream(self, job: Job) -> AsyncIterator[StreamStart | GenerationDelta | StreamReport]:
        """A `StreamStart`, the deltas, then (gate on) a `StreamReport`.

        'report' mode streams the first attempt at once and scores it at the end (its consistency
        samples are drawn meanwhile; a consensus tier cannot swap an answer already sent);
        'buffered' mode runs the whole gate first, then sends the chosen answer (TTFT = full
        generation).
        """
        settings = self.settings(job)
        if settings.mode == "buffered":
            outcome = await self._gated(job, settings)
            result = outcome.result
            yield StreamStart(tier=result.tier, model=result.model_id)
            for i, choice in enumerate(result.choices):
                yield GenerationDelta(
                    index=i, text=choice.text, logprobs=choice.logprobs,
                    finish_reason=choice.finish_reason, prompt_tokens=result.prompt_tokens,
                    completion_tokens=choice.completion_tokens)
            yield StreamReport(report=outcome.report and outcome.report.to_dict())
            return
        entry = self.entry(job.model, job.quality and job.quality.tier)
        # One attempt per tier, no scoring in the loop: the first tier whose stream yields wins.
        plan = plan_attempts(self.ladder[entry.rank:], job.sampling, 1, len(self.ladder), 0.0)
        started, tally = time.monotonic(), Tally()

        async def open_stream(attempt: Attempt):
            tier: Tier = attempt.tier
            self._count_move(tally, tier)
            request = self._generation(job, job.request_id, attempt, settings, consensus=False)
            first, rest = await tier.steps(request, self.config.first_token_timeout_s)
            return tier, GenerationDelta(finish_reason="stop") if first is None else first, rest

        tier, first, rest = (await run_gated(plan, open_stream, None)).result
        deltas = [first]
        try:
            yield StreamStart(tier=tier.name, model=tier.model_id)
            yield first
            async for delta in rest:  # a tier that stalls mid-answer: a 503 in-band
                deltas.append(delta)
                yield delta
        finally:  # the client went away (or the tier failed): the engine aborts
            await rest.aclose()
        if not settings.enabled:
            return
        mine = [d for d in deltas if d.index == 0]  # choice 0 is the one scored, as when whole
        result = GenerationResult(
            choices=[Candidate(text="".join(d.text for d in mine),
                               logprobs=[lp for d in mine for lp in d.logprobs],
                               finish_reason=mine[-1].finish_reason,
                               completion_tokens=mine[-1].completion_tokens)],
            samples=deltas[-1].samples, prompt_tokens=deltas[-1].prompt_tokens,
            model_id=tier.model_id, tier=tier.name)
        cost = Cost(generation_ms=(time.monotonic() - started) * 1000,
                    tokens=result.tokens_generated)
        _, report = await self.scorer.judge(job, result, tier, False, cost, settings.threshold,
                                            draw=settings.later_samples,
                                            sample_below=settings.sample_below,
                                            deadline=started + self.config.gate_budget_s)
        cost.stamp(report)
        yield StreamReport(report=report.to_dict())

    @staticmethod
    def _votes(tier: Tier, settings: Settings) -> bool:
        """Whether the answer served is the one its samples agree with most, not the first."""
        return tier.consensus_samples > 0 or settings.vote

    @staticmethod
    def _count_move(tally: Tally, tier: Tier) -> None:
        if tier.is_down():
            return  # skipped, not tried: `call` counts it unavailable
        kind = tally.next(tier.name)
        if kind is not None:
            metrics.inc(f"graphserve_quality_{kind}", tier=tier.name)

    async def _canary_answer(self, tier: Tier, prompt: str) -> tuple[str, float]:
        """A canary question answered as a client would be (the tier's own sampling, a consensus
        tier's pick, the gate's score, no retry), counted apart from served answers."""
        job = Job(request_id=new_id("canary"), model=tier.model_id,
                  messages=[{"role": "user", "content": prompt}], relevance_text=prompt,
                  sampling=Sampling())
        settings = self.settings(job)
        attempt = Attempt(tier, tier.sampling(job.sampling))
        result = await tier.call("generate", self._generation(job, job.request_id, attempt, settings),
                                 self.config.generation_timeout_s)
        result, report = await self.scorer.judge(job, result, tier, self._votes(tier, settings),
                                                  Cost(),
                                                  served=False, draw=settings.later_samples,
                                                  sample_below=settings.sample_below)
        return result.text, report.score

    async def score_pairs(self, body: QualityScoreRequest) -> list[dict]:
        """`/v1/quality/score`, under a tier's model when the request names one."""
        tier = None if body.model is None else self.entry(body.model, body.tier, "tier")
        return await self.scorer.score_pairs(body, tier)
