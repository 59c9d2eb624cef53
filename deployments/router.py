"""QualityRouter: generate, score the answer, and act on the score.

Policy, in order: the tier the client named (by model id) tries first; below the threshold it
retries in the same tier (a new seed, a lower temperature), then escalates to the next, stronger
tier; the best-scoring answer is returned with its report. A tier that is down is skipped, an
embedder that is down makes scoring go on without relevance, and only when every tier is down does
the client get a 503. The plan and the gate are plain functions (`plan_attempts`, `run_gated`), so
the policy is unit-tested with fake tiers and no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from deployments import metrics, quality
from deployments.config import LLMConfig, QualityConfig, RouterConfig, model_ids
from deployments.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    ModelNotFound,
    Overloaded,
    Sampling,
    ScorePair,
    ServiceUnavailable,
)

log = logging.getLogger("ray.serve")

# Failures that mean "this deployment cannot answer now", as opposed to "this request is bad".
UNAVAILABLE = (
    DeploymentUnavailableError, ReplicaUnavailableError, BackPressureError, RayActorError,
    ActorDiedError, ActorUnavailableError, ServiceUnavailable, asyncio.TimeoutError,
)


class TierUnavailable(Exception):
    """A tier could not take this attempt: down (no replica, replica died, timed out) or busy
    (its queue is full: Serve's backpressure)."""

    def __init__(self, tier: str, busy: bool = False):
        super().__init__(tier)
        self.busy = busy


def no_tier_error(some_busy: bool) -> APIError:
    """The answer when no tier could take a request: 429 when one is only full (retrying soon
    will work), 503 when every tier is down."""
    if some_busy:
        return Overloaded("every LLM tier is at capacity; retry shortly", retry_after_s=1)
    return ServiceUnavailable("no LLM tier is available to answer; try again shortly",
                              code="llm_unavailable", retry_after_s=5)


class Availability:
    """What the router knows of each downstream deployment: its last probe, or a failed call.

    A deployment marked down is skipped at once instead of waited on: Serve queues calls to a
    deployment whose replicas are restarting, and the first call through a fresh handle to a failed
    deployment waits forever rather than raising. The next probe that answers brings it back.
    """

    def __init__(self, names: list[str]):
        self.state: dict[str, dict] = {n: {"status": "starting"} for n in names}

    def up(self, name: str, info: dict) -> None:
        self.state[name] = {"status": "ok", **info}

    def down(self, name: str, error: BaseException) -> None:
        """A failed probe or call. Only an explicit failure (no replica, dead actor, dead engine)
        is down. A full queue is busy; a timeout is slow, not down: under a burst the probe
        waits behind hundreds of requests (a 1,280-request burst here made both tiers look down
        and turned 429s into 503s), and a replica that really hangs fails Serve's own health
        check and is replaced. A deployment still loading its model stays "starting"."""
        was = self.state[name]["status"]
        if isinstance(error, BackPressureError):
            return
        if isinstance(error, asyncio.TimeoutError):
            if was != "starting":
                self.state[name] = {**self.state[name], "status": "slow", "error": "TimeoutError"}
            return
        self.state[name] = {**self.state[name], "status": "unavailable",
                            "error": type(error).__name__}
        if was != "unavailable":
            log.warning("%s is unavailable (%s)", name, type(error).__name__)

    def is_down(self, name: str) -> bool:
        return self.state[name]["status"] == "unavailable"


# ---------------------------------------------------------------------------------------------
# Policy (pure)
# ---------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    tier: int
    sampling: Sampling


@dataclass
class Outcome:
    result: GenerationResult
    report: quality.QualityReport | None


def plan_attempts(
    entry: int,
    tier_temperatures: list[float],
    sampling: Sampling,
    attempts_per_tier: int,
    max_attempts: int,
    retry_temperature_factor: float,
) -> list[Attempt]:
    """Every attempt the gate may make, in order: retries in a tier, then the next tier."""
    plan: list[Attempt] = []
    for tier in range(entry, len(tier_temperatures)):
        temperature = tier_temperatures[tier] if sampling.temperature is None else sampling.temperature
        for retry in range(attempts_per_tier):
            if len(plan) == max_attempts:
                return plan
            if retry == 0:
                plan.append(Attempt(tier, sampling))
                continue
            if temperature == 0:
                break  # greedy decoding would only repeat the same answer: escalate instead
            temperature *= retry_temperature_factor
            seed = random.getrandbits(31) if sampling.seed is None else sampling.seed + retry
            plan.append(Attempt(tier, sampling.model_copy(
                update={"temperature": temperature, "seed": seed})))
    return plan


async def run_gated(
    plan: list[Attempt],
    generate: Callable[[Attempt], Awaitable[GenerationResult]],
    score: Callable[[GenerationResult], Awaitable[quality.QualityReport]] | None,
    max_attempts: int | None = None,
) -> Outcome:
    """Runs the plan until an answer passes or `max_attempts` answers were made; returns the best.

    `generate` raises TierUnavailable for a tier that is down: its remaining attempts are skipped,
    and they do not count against `max_attempts` (a down entry tier still lets the next answer).
    With `score` None the gate is off and the first answer is returned unscored.
    """
    candidates: list[Outcome] = []
    down: set[int] = set()
    busy: list[bool] = []
    for attempt in plan:
        if attempt.tier in down:
            continue
        try:
            result = await generate(attempt)
        except TierUnavailable as e:
            down.add(attempt.tier)
            busy.append(e.busy)
            continue
        if score is None:
            return Outcome(result, None)
        report = await score(result)
        candidates.append(Outcome(result, report))
        report.attempts = len(candidates)
        if report.passed or len(candidates) == max_attempts:
            break
    if not candidates:
        raise no_tier_error(any(busy))
    chosen = candidates[quality.best([c.report for c in candidates])]
    chosen.report.attempts = len(candidates)
    return chosen


def relevance_text(request: ChatCompletionRequest | CompletionRequest) -> str:
    """What the answer should be relevant to: the last user turn (or the raw prompt)."""
    if isinstance(request, CompletionRequest):
        return request.prompt
    users = [m.text() for m in request.messages if m.role == "user"]
    return users[-1] if users else request.messages[-1].text()


def sampling_of(request: ChatCompletionRequest | CompletionRequest) -> Sampling:
    if isinstance(request, ChatCompletionRequest):
        top = (request.top_logprobs or 0) if request.logprobs else None
    else:
        top = request.logprobs
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return Sampling(
        max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
        stop=stop, seed=request.seed, presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0, top_logprobs=top,
    )


# ---------------------------------------------------------------------------------------------
# Deployment
# ---------------------------------------------------------------------------------------------


@serve.deployment
class QualityRouter:
    async def __init__(self, config: RouterConfig, tiers: list[LLMConfig],
                       tier_handles: list[DeploymentHandle], embedder: DeploymentHandle,
                       embedder_name: str):
        self.config = config
        self.tiers = tiers
        self.tier_handles = tier_handles
        self.embedder = embedder
        self.embedder_name = embedder_name
        self.downstream = {**{t.name: h for t, h in zip(tiers, tier_handles)}, embedder_name: embedder}
        self.availability = Availability(list(self.downstream))
        self._probes = [asyncio.create_task(self._watch(n, h)) for n, h in self.downstream.items()]

    async def _watch(self, name: str, handle: DeploymentHandle) -> None:
        """Probe one downstream deployment's `info` on a fixed period, forever."""
        while True:
            try:
                info = await asyncio.wait_for(handle.info.remote(), self.config.probe_timeout_s)
            except Exception as e:  # a probe reports a failure, it never raises one
                self.availability.down(name, e)
            else:
                self.availability.up(name, info)
            await asyncio.sleep(self.config.probe_interval_s)

    def _failed(self, name: str, error: BaseException) -> None:
        """A call failed: a dead or missing deployment is down now; a slow one is left to the probe."""
        if name != self.embedder_name:
            metrics.inc("graphserve_tier_unavailable", tier=name)
        if not isinstance(error, asyncio.TimeoutError):
            self.availability.down(name, error)

    def status(self) -> dict[str, dict]:
        """The last probe of each tier and of the embedder, for /health (no call downstream)."""
        return self.availability.state

    def _entry_tier(self, model: str) -> int:
        for i, tier in enumerate(self.tiers):
            if model == tier.model_id:
                return i
        raise ModelNotFound.named(model, model_ids(self.tiers))

    def _quality_config(self, request) -> tuple[QualityConfig, int, str]:
        """The gate for this request: config defaults with the client's override on top."""
        cfg, override = self.config.quality, request.quality
        attempts = self.config.max_attempts_per_tier * len(self.tiers)
        mode = self.config.gate_mode
        if override is not None:
            update = {k: v for k, v in {"enabled": override.enabled,
                                        "threshold": override.threshold}.items() if v is not None}
            cfg = cfg.model_copy(update=update)
            attempts = override.max_attempts or attempts
            mode = override.gate_mode or mode
        return cfg, attempts, mode

    # -- generation -------------------------------------------------------------------------

    async def complete(self, request: ChatCompletionRequest | CompletionRequest,
                       request_id: str) -> tuple[GenerationResult, dict | None]:
        """Non-streaming: the gated answer and its quality report."""
        outcome = await self._gated(request, request_id)
        return outcome.result, self._report(outcome)

    async def stream(self, request: ChatCompletionRequest | CompletionRequest,
                     request_id: str) -> AsyncIterator[dict]:
        """Events: {"start": tier/model}, {"delta": GenerationDelta}..., {"quality": report}.

        'report' mode streams the first attempt at once and scores it at the end; 'buffered'
        mode runs the whole gate first, then sends the chosen answer (TTFT = full generation).
        """
        qcfg, _, mode = self._quality_config(request)
        if mode == "buffered":
            outcome = await self._gated(request, request_id)
            result = outcome.result
            yield {"start": {"tier": result.tier, "model": result.model_id}}
            yield {"delta": GenerationDelta(
                text=result.text, logprobs=result.logprobs, finish_reason=result.finish_reason,
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)}
            yield {"quality": self._report(outcome)}
            return
        entry = self._entry_tier(request.model)
        generation = self._generation(request, request_id, sampling_of(request))
        busy: list[bool] = []
        for tier in range(entry, len(self.tiers)):
            name = self.tiers[tier].name
            if self.availability.is_down(name):
                metrics.inc("graphserve_tier_unavailable", tier=name)
                busy.append(False)
                continue
            started = time.monotonic()
            stream = self.tier_handles[tier].options(stream=True).stream.remote(generation)
            try:
                first = await asyncio.wait_for(stream.__anext__(), self.config.first_token_timeout_s)
            except UNAVAILABLE as e:
                stream.cancel()
                self._failed(name, e)
                busy.append(isinstance(e, BackPressureError))
                log.warning("[%s] tier %s unavailable (%s); trying the next",
                            request_id, name, type(e).__name__)
                continue
            except StopAsyncIteration:
                first = GenerationDelta(finish_reason="stop")
            break
        else:
            raise no_tier_error(any(busy))
        cfg = self.tiers[tier]
        yield {"start": {"tier": cfg.name, "model": cfg.model_id}}
        deltas = [first]
        yield {"delta": first}
        async for delta in stream:
            deltas.append(delta)
            yield {"delta": delta}
        if not qcfg.enabled:
            return
        result = GenerationResult(
            text="".join(d.text for d in deltas),
            logprobs=[lp for d in deltas for lp in d.logprobs],
            finish_reason=deltas[-1].finish_reason, prompt_tokens=deltas[-1].prompt_tokens,
            completion_tokens=deltas[-1].completion_tokens, model_id=cfg.model_id, tier=cfg.name,
        )
        generation_s = time.monotonic() - started
        report = await self._score(relevance_text(request), result, qcfg)
        report.timing = {"generation_ms": round(generation_s * 1000, 1),
                         "scoring_ms": report.timing["scoring_ms"]}
        yield {"quality": self._report(Outcome(result, report))}

    async def _gated(self, request, request_id: str) -> Outcome:
        qcfg, max_attempts, _ = self._quality_config(request)
        entry = self._entry_tier(request.model)
        every = self.config.max_attempts_per_tier * len(self.tiers)
        plan = plan_attempts(
            entry, [t.sampling.temperature for t in self.tiers], sampling_of(request),
            self.config.max_attempts_per_tier, every, self.config.retry_temperature_factor,
        )
        prompt = relevance_text(request)
        counter = iter(range(len(plan)))
        spent = {"generation_ms": 0.0, "scoring_ms": 0.0}

        tried: list[int] = []

        async def generate(attempt: Attempt) -> GenerationResult:
            name = self.tiers[attempt.tier].name
            if self.availability.is_down(name):
                metrics.inc("graphserve_tier_unavailable", tier=name)
                raise TierUnavailable(name)
            if tried:
                kind = "retries" if tried[-1] == attempt.tier else "escalations"
                metrics.inc(f"graphserve_quality_{kind}", tier=name)
            tried.append(attempt.tier)
            generation = self._generation(request, f"{request_id}-{next(counter)}", attempt.sampling)
            started = time.monotonic()
            try:
                result = await asyncio.wait_for(
                    self.tier_handles[attempt.tier].generate.remote(generation),
                    self.config.generation_timeout_s,
                )
            except UNAVAILABLE as e:
                self._failed(name, e)
                log.warning("[%s] tier %s unavailable (%s)", request_id, name, type(e).__name__)
                raise TierUnavailable(name, busy=isinstance(e, BackPressureError)) from e
            spent["generation_ms"] += (time.monotonic() - started) * 1000
            return result

        async def score(result: GenerationResult) -> quality.QualityReport:
            report = await self._score(prompt, result, qcfg)
            spent["scoring_ms"] += report.timing["scoring_ms"]
            report.timing = spent  # the totals over every attempt so far
            return report

        outcome = await run_gated(plan, generate, score if qcfg.enabled else None, max_attempts)
        if outcome.report is not None:
            outcome.report.timing = {k: round(v, 1) for k, v in spent.items()}
        return outcome

    def _generation(self, request, request_id: str, sampling: Sampling) -> GenerationRequest:
        if isinstance(request, ChatCompletionRequest):
            return GenerationRequest(request_id=request_id, messages=request.chat(), sampling=sampling)
        return GenerationRequest(request_id=request_id, prompt=request.prompt, sampling=sampling)

    # -- scoring ----------------------------------------------------------------------------

    async def _score(self, prompt: str, result: GenerationResult,
                     qcfg: QualityConfig) -> quality.QualityReport:
        started = time.monotonic()
        vectors = await self._embed([prompt, result.text]) if result.text.strip() else None
        report = quality.score_answer(
            answer=result.text, finish_reason=result.finish_reason, config=qcfg,
            prompt_vec=vectors[0] if vectors else None,
            answer_vec=vectors[1] if vectors else None,
            token_logprobs=[lp.logprob for lp in result.logprobs],
        )
        report.tier, report.model = result.tier, result.model_id
        elapsed = time.monotonic() - started
        report.timing = {"scoring_ms": elapsed * 1000}
        metrics.observe("graphserve_scoring_latency_seconds", elapsed)
        metrics.observe("graphserve_quality_score", report.score, tier=result.tier)
        if not report.passed:
            metrics.inc("graphserve_quality_gate_failures", tier=result.tier)
        for component in report.degraded:
            metrics.inc("graphserve_quality_degraded", component=component)
        return report

    async def _embed(self, texts: list[str]) -> list[list[float]] | None:
        """Embeddings for scoring, or None when the embedder is down or slow (relevance degraded)."""
        if self.availability.is_down(self.embedder_name):
            return None
        try:
            vectors, _ = await asyncio.wait_for(
                self.embedder.embed.remote(texts), self.config.embedder_timeout_s
            )
        except UNAVAILABLE as e:
            self._failed(self.embedder_name, e)
            return None
        return vectors.tolist()

    async def score_pairs(self, pairs: list[ScorePair], threshold: float | None) -> list[dict]:
        """`/v1/quality/score`: text-only components plus relevance (no engine logprobs)."""
        vectors = await self._embed([t for p in pairs for t in (p.prompt, p.answer or " ")])
        reports = []
        for i, pair in enumerate(pairs):
            has_vec = vectors is not None and pair.answer.strip()
            reports.append(quality.score_answer(
                answer=pair.answer, finish_reason=pair.finish_reason, config=self.config.quality,
                prompt_vec=vectors[2 * i] if has_vec else None,
                answer_vec=vectors[2 * i + 1] if has_vec else None,
                threshold=threshold,
            ).to_dict())
        return reports

    def _report(self, outcome: Outcome) -> dict | None:
        return None if outcome.report is None else outcome.report.to_dict()


