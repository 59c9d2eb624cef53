"""The quality gate: generate, score the answer, and act on the score.

`Gate` lives inside the router deployment (`router.py`), in the same process as the HTTP routes,
so a request crosses one Serve hop fewer: proxy -> router -> LLM tier.

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
from typing import Literal

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from deployments import canary, metrics, quality
from deployments.config import CanaryCheck, LLMConfig, QualityConfig, RouterConfig, model_ids
from deployments.protocol import (
    APIError,
    BadRequest,
    Candidate,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    Job,
    LikelihoodRequest,
    ModelNotFound,
    Overloaded,
    QualityScoreRequest,
    Sampling,
    ScorePair,
    ServiceUnavailable,
    TokenLogprob,
    new_id,
)

log = logging.getLogger("ray.serve")

# Failures that mean "this deployment cannot answer now", as opposed to "this request is bad".
UNAVAILABLE = (
    DeploymentUnavailableError, ReplicaUnavailableError, BackPressureError, RayActorError,
    ActorDiedError, ActorUnavailableError, ServiceUnavailable, asyncio.TimeoutError,
)


def unwrapped(exc: BaseException) -> BaseException:
    """The error a remote call raised: Ray wraps it in a RayTaskError."""
    if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        return exc.cause
    return exc


def failure(exc: BaseException) -> Literal["busy", "slow", "down"] | None:
    """The one failure policy: what a failed call says about the deployment it went to. Busy: its
    queue is full (429, retry soon). Slow: it did not answer in time (not down: under a burst a
    call waits behind hundreds; a replica that really hangs fails Serve's health check). Down: no
    replica, a dead actor or engine (503). None: the request itself failed, or a bug."""
    exc = unwrapped(exc)
    if isinstance(exc, (BackPressureError, Overloaded)):
        return "busy"
    if isinstance(exc, asyncio.TimeoutError):
        return "slow"
    if isinstance(exc, UNAVAILABLE):
        return "down"
    return None


def api_error(exc: BaseException) -> APIError:
    """Any exception as the client should see it."""
    exc = unwrapped(exc)
    if isinstance(exc, APIError):
        return exc
    kind = failure(exc)
    if kind == "busy":
        return Overloaded("the server is at capacity; retry shortly")
    if kind is not None:
        return ServiceUnavailable(f"a model deployment is unavailable ({type(exc).__name__}); "
                                  "retry shortly")
    log.exception("unexpected error", exc_info=exc)
    return APIError("internal error; the request was not completed")


class TierUnavailable(Exception):
    """A tier could not take this attempt: down (no replica, replica died, timed out) or busy
    (its queue is full: Serve's backpressure)."""

    def __init__(self, tier: str, busy: bool = False):
        super().__init__(tier)
        self.busy = busy


def no_tier_error(some_busy: bool) -> APIError:
    """The answer when no tier could take a request: busy when one is only full (retrying soon
    will work), down when every tier is."""
    if some_busy:
        return Overloaded("every LLM tier is at capacity; retry shortly")
    return ServiceUnavailable("no LLM tier is available to answer; try again shortly",
                              code="llm_unavailable")


class Availability:
    """What the router knows of each downstream deployment: its last probe, or a failed call.

    A deployment that is down is skipped at once instead of waited on: Serve queues calls to a
    deployment whose replicas are restarting, and the first call through a fresh handle to a
    failed deployment waits forever rather than raising. Down is "unavailable" (a failed call or
    probe), or "stalled" (its engine core left a question unanswered for `stall_after_s`) while
    another of the `tiers` can answer sooner: a stall may be only a slow step on a crowded host,
    and waiting beats a 503. Calls already waiting on a deployment that goes down are told through
    `fell(name)`, so they move on too. The next probe that answers brings it back.
    """

    def __init__(self, names: list[str], stall_after_s: float = float("inf"),
                 tiers: list[str] = ()):
        self.stall_after_s = stall_after_s
        self.tiers = list(tiers)
        self.state: dict[str, dict] = {n: {"status": "starting"} for n in names}
        self._fell = {n: asyncio.Event() for n in names}

    def _set(self, name: str, state: dict) -> None:
        """A new state for `name`; any deployment it makes go down (or come back) is told."""
        was = {n: self.is_down(n) for n in self.state}
        self.state[name] = state
        for n, was_down in was.items():
            if self.is_down(n) and not was_down:
                self._fell[n].set()
                log.warning("%s is down: %s (%s)", n, self.state[n]["status"],
                            self.state[n].get("error", ""))
            elif was_down and not self.is_down(n):
                self._fell[n] = asyncio.Event()

    def fell(self, name: str) -> asyncio.Event:
        """Set when `name` is found down from now on (a fresh event once it is back up)."""
        return self._fell[name]

    def up(self, name: str, info: dict) -> None:
        silent = info.get("engine_silent_s", 0)
        if silent > self.stall_after_s:
            self._set(name, {"status": "stalled", **info,
                             "error": f"engine core silent for {silent:.0f} s"})
        else:
            self._set(name, {"status": "ok", **info})

    def down(self, name: str, error: BaseException) -> None:
        """A failed probe or call, by `failure`: busy changes nothing; slow marks a deployment
        that was up "slow" (a 1,280-request burst here once made both tiers look down and turned
        429s into 503s); down marks it unavailable. A deployment still loading stays "starting"."""
        was = self.state[name]["status"]
        kind = failure(error)
        if kind == "busy":
            return
        if kind == "slow":
            if was != "starting":
                self._set(name, {**self.state[name], "status": "slow", "error": "TimeoutError"})
            return
        self._set(name, {**self.state[name], "status": "unavailable", "error": type(error).__name__})

    def is_down(self, name: str) -> bool:
        status = self.state[name]["status"]
        if status != "stalled":
            return status == "unavailable"
        silent = self.state[name]["engine_silent_s"]
        return any(self.state[t]["status"] in ("ok", "slow") or (
            self.state[t]["status"] == "stalled" and self.state[t]["engine_silent_s"] < silent)
            for t in self.tiers if t != name)


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
    score: Callable[[GenerationResult],
                    Awaitable[tuple[GenerationResult, quality.QualityReport]]] | None,
    max_attempts: int | None = None,
    budget_s: float = float("inf"),
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Runs the plan until an answer passes or `max_attempts` answers were made; returns the best.

    `generate` raises TierUnavailable for a tier that is down: its remaining attempts are skipped,
    and they do not count against `max_attempts` (a down entry tier still lets the next answer).
    With `score` None the gate is off and the first answer is returned unscored (then an answer
    may be anything `generate` makes: the streamed path passes an opened stream). `score` may
    hand back another answer than it was given (a consensus tier's pick among its samples).

    `budget_s`: once an answer is in hand, another attempt starts only if, at the pace of the
    attempts so far, it would end within the budget; else the best answer so far is served (its
    report says `budget_exhausted`) rather than a timeout after more work on a busy host.
    """
    candidates: list[Outcome] = []
    down: set[int] = set()
    busy: list[bool] = []
    started = clock()
    out_of_time = False
    for attempt in plan:
        if attempt.tier in down:
            continue
        if candidates:
            elapsed = clock() - started
            if elapsed + elapsed / len(candidates) > budget_s:
                out_of_time = True
                break
        try:
            result = await generate(attempt)
        except TierUnavailable as e:
            down.add(attempt.tier)
            busy.append(e.busy)
            continue
        if score is None:
            return Outcome(result, None)
        result, report = await score(result)
        candidates.append(Outcome(result, report))
        report.attempts = len(candidates)
        if report.passed or len(candidates) == max_attempts:
            break
    if not candidates:
        raise no_tier_error(any(busy))
    chosen = candidates[quality.best([c.report for c in candidates])]
    chosen.report.attempts = len(candidates)
    chosen.report.budget_exhausted = out_of_time
    return chosen


def spent(generation_ms: float, scoring_ms: float, tokens: int) -> dict:
    """A report's `timing`: what answering cost, over every attempt."""
    return {"generation_ms": round(generation_ms, 1), "scoring_ms": round(scoring_ms, 1),
            "tokens": tokens}


def evidence(prompt: str, answer: str, finish_reason: str | None,
             tokens: list[TokenLogprob] | None, samples: list[str] | None,
             vectors: list[list[float]] | None,
             cross: list[TokenLogprob] | None = None) -> quality.Evidence:
    """What the scorer needs, as plain data. `vectors`: prompt, answer, then one per sample."""
    return quality.Evidence(
        prompt=prompt, answer=answer, finish_reason=finish_reason,
        logprobs=[t.logprob for t in tokens] if tokens is not None else None,
        tops=[[lp for _, lp in t.top] for t in tokens or []],
        samples=samples, prompt_vec=vectors[0] if vectors else None,
        answer_vec=vectors[1] if vectors else None, sample_vecs=vectors[2:] if vectors else None,
        cross_tier_logprobs=[t.logprob for t in cross] if cross else None,
    )


def chosen_by_consensus(result: GenerationResult, index: int) -> GenerationResult:
    """The result with candidate `index` (0: the answer, i > 0: sample i - 1) as its answer."""
    if index == 0:
        return result
    pool = [result.choices[0], *result.samples]
    return result.model_copy(update={
        "choices": [pool[index], *result.choices[1:]],
        "samples": [c for i, c in enumerate(pool) if i != index]})


# ---------------------------------------------------------------------------------------------
# Deployment
# ---------------------------------------------------------------------------------------------


class Gate:
    """The gate's state in the router replica: handles to the tiers and the embedder, what is
    known of their availability, and the calibrated scorer. Built inside a running event loop
    (it starts the probes)."""

    def __init__(self, config: RouterConfig, tiers: list[LLMConfig],
                 tier_handles: list[DeploymentHandle], embedder: DeploymentHandle,
                 embedder_name: str):
        self.config = config
        self.tiers = tiers
        self.tier_handles = tier_handles
        self.embedder = embedder
        self.embedder_name = embedder_name
        self.calibration = quality.Calibration.load(config.quality.calibration_file)
        self.downstream = {**{t.name: h for t, h in zip(tiers, tier_handles)}, embedder_name: embedder}
        self.availability = Availability(list(self.downstream), config.stall_reroute_s,
                                         [t.name for t in tiers])
        self._probes = [asyncio.create_task(self._watch(n, h)) for n, h in self.downstream.items()]
        self.canary: dict[str, dict] = {}  # tier -> its last canary round
        if config.canary.interval_s > 0:
            self._probes += [asyncio.create_task(self._canary(i)) for i in range(len(tiers))]

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

    async def _canary(self, tier: int) -> None:
        """Every `canary.interval_s`, the tier answers the canary's questions as a client would be
        answered (its own sampling defaults, a consensus tier's pick, the gate's score; no retry):
        the metrics count every answer, /health shows the last round. A tier that is down or
        loading is skipped: its probes report that."""
        cfg, name = self.config.canary, self.tiers[tier].name
        while True:
            await asyncio.sleep(cfg.interval_s)
            if self.availability.state[name]["status"] not in ("ok", "slow"):
                continue
            started = time.time()
            try:
                checks = await asyncio.gather(*(self._ask(tier, c) for c in cfg.checks))
            except Exception as e:  # the tier failed meanwhile
                log.warning("canary round of %s skipped: %s", name, type(e).__name__)
                continue
            self.canary[name] = canary.summary(checks, cfg.min_correct_share, started)
            if self.canary[name]["failing"]:
                log.warning("tier %s fails its canary: %d of %d answers right", name,
                            self.canary[name]["correct"], len(checks))

    async def _ask(self, tier: int, check: CanaryCheck) -> canary.Check:
        cfg, qcfg = self.tiers[tier], self.config.quality
        job = Job(request_id=new_id("canary"), model=cfg.model_id,
                  messages=[{"role": "user", "content": check.prompt}],
                  relevance_text=check.prompt, sampling=Sampling())
        consensus = cfg.consensus_samples > 0
        generation = self._generation(job, job.request_id, job.sampling, tier, qcfg, consensus)
        result = await asyncio.wait_for(self.tier_handles[tier].generate.remote(generation),
                                        self.config.generation_timeout_s)
        result, report = await self._judge(job, result, qcfg, tier, consensus, served=False)
        right = canary.correct(result.text, check.expect)
        metrics.inc("graphserve_canary_checks", tier=cfg.name, correct=str(right).lower())
        metrics.observe("graphserve_canary_score", report.score, tier=cfg.name)
        return canary.Check(prompt=check.prompt, answer=result.text, correct=right,
                            score=round(report.score, 4))

    def _failed(self, name: str, error: BaseException) -> None:
        """A call failed: a dead or missing deployment is down now; a slow one is left to the probe."""
        if name != self.embedder_name:
            metrics.inc("graphserve_tier_unavailable", tier=name)
        if not isinstance(error, asyncio.TimeoutError):
            self.availability.down(name, error)

    def status(self) -> dict[str, dict]:
        """The last probe of each tier and of the embedder, for /health (no call downstream)."""
        return self.availability.state

    def _entry_tier(self, model: str, override=None, param: str = "quality.tier") -> int:
        """The first tier serving `model`, or the one named by `override.tier` (a request's
        `quality.tier`, or `/v1/quality/score`'s `tier`)."""
        named = getattr(override, "tier", None)
        for i, tier in enumerate(self.tiers):
            if (model == tier.model_id) and named in (None, tier.name):
                return i
        if named is not None:
            raise BadRequest(f"no tier named {named!r} serves {model!r}; tiers: "
                             f"{', '.join(t.name for t in self.tiers)}", param=param)
        raise ModelNotFound.named(model, model_ids(self.tiers))

    def _quality_config(self, job: Job) -> tuple[QualityConfig, int, str]:
        """The gate for this request: config defaults with the client's override on top."""
        cfg, override = self.config.quality, job.quality
        attempts = self.config.max_attempts_per_tier * len(self.tiers)
        mode = self.config.gate_mode
        if override is not None:
            update = {k: v for k, v in {"enabled": override.enabled, "threshold": override.threshold,
                                        "samples": override.samples}.items() if v is not None}
            cfg = cfg.model_copy(update=update)
            attempts = override.max_attempts or attempts
            mode = override.gate_mode or mode
        return cfg, attempts, mode

    # -- generation -------------------------------------------------------------------------

    async def complete(self, job: Job) -> tuple[GenerationResult, dict | None]:
        """Non-streaming: the gated answer and its quality report."""
        outcome = await self._gated(job)
        return outcome.result, self._report(outcome)

    async def stream(self, job: Job) -> AsyncIterator[dict]:
        """Events: {"start": tier/model}, {"delta": GenerationDelta}..., {"quality": report}.

        'report' mode streams the first attempt at once and scores it at the end (its consistency
        samples are drawn meanwhile; a consensus tier cannot swap an answer already sent);
        'buffered' mode runs the whole gate first, then sends the chosen answer (TTFT = full
        generation).
        """
        qcfg, _, mode = self._quality_config(job)
        if mode == "buffered":
            outcome = await self._gated(job)
            result = outcome.result
            yield {"start": {"tier": result.tier, "model": result.model_id}}
            for i, choice in enumerate(result.choices):
                yield {"delta": GenerationDelta(
                    index=i, text=choice.text, logprobs=choice.logprobs,
                    finish_reason=choice.finish_reason, prompt_tokens=result.prompt_tokens,
                    completion_tokens=choice.completion_tokens)}
            yield {"quality": self._report(outcome)}
            return
        entry = self._entry_tier(job.model, job.quality)
        # One attempt per tier, no scoring in the loop: the first tier whose stream yields wins.
        plan = plan_attempts(entry, [t.sampling.temperature for t in self.tiers],
                             job.sampling, 1, len(self.tiers), 0.0)
        started = time.monotonic()

        async def open_stream(attempt: Attempt) -> tuple[int, object, GenerationDelta]:
            self._skip_if_down(attempt.tier)
            generation = self._generation(job, job.request_id, attempt.sampling, attempt.tier,
                                          qcfg, consensus=False)
            stream = self.tier_handles[attempt.tier].options(stream=True).stream.remote(generation)
            try:
                first = await self._attempt(attempt.tier, job.request_id, stream.__anext__(),
                                            self.config.first_token_timeout_s)
            except StopAsyncIteration:
                first = GenerationDelta(finish_reason="stop")
            except BaseException:
                stream.cancel()
                raise
            return attempt.tier, stream, first

        tier, stream, first = (await run_gated(plan, open_stream, None)).result
        cfg = self.tiers[tier]
        deltas = [first]
        try:
            yield {"start": {"tier": cfg.name, "model": cfg.model_id}}
            yield {"delta": first}
            while True:
                try:  # a tier that stalls mid-answer ends the stream with a 503 in-band
                    delta = await self._unless_down(cfg.name, stream.__anext__())
                except StopAsyncIteration:
                    break
                deltas.append(delta)
                yield {"delta": delta}
        except BaseException:  # the client went away (or the tier failed): the engine aborts
            stream.cancel()
            raise
        if not qcfg.enabled:
            return
        first_choice = [d for d in deltas if d.index == 0]  # the one scored, as when whole
        result = GenerationResult(
            choices=[Candidate(text="".join(d.text for d in first_choice),
                               logprobs=[lp for d in first_choice for lp in d.logprobs],
                               finish_reason=first_choice[-1].finish_reason,
                               completion_tokens=first_choice[-1].completion_tokens)],
            samples=deltas[-1].samples, prompt_tokens=deltas[-1].prompt_tokens,
            model_id=cfg.model_id, tier=cfg.name,
        )
        generation_ms = (time.monotonic() - started) * 1000
        _, report = await self._judge(job, result, qcfg, tier, consensus=False)
        report.timing = spent(generation_ms, report.timing["scoring_ms"], result.tokens_generated)
        yield {"quality": self._report(Outcome(result, report))}

    def _skip_if_down(self, tier: int) -> None:
        """A tier known to be down is skipped at once, before anything is sent to it (Serve would
        queue the call until a replica comes back)."""
        name = self.tiers[tier].name
        if self.availability.is_down(name):
            metrics.inc("graphserve_tier_unavailable", tier=name)
            raise TierUnavailable(name)

    async def _attempt(self, tier: int, request_id: str, call: Awaitable, timeout_s: float):
        """One call to a tier, the same for streamed and whole answers: a failure that means
        "down" or "busy" (by `failure`) becomes TierUnavailable, so the caller moves on."""
        name = self.tiers[tier].name
        try:
            return await self._unless_down(name, call, timeout_s)
        except UNAVAILABLE as e:
            self._failed(name, e)
            log.warning("[%s] tier %s unavailable (%s)", request_id, name, type(e).__name__)
            raise TierUnavailable(name, busy=failure(e) == "busy") from e

    async def _unless_down(self, name: str, call: Awaitable, timeout_s: float | None = None):
        """`call`'s result, unless tier `name` is found down or stalled first (ServiceUnavailable,
        at once: a stopped engine would hold the call until `timeout_s`) or `timeout_s` passes
        (asyncio.TimeoutError). Either way the call is cancelled, so its engine aborts it."""
        work = asyncio.ensure_future(call)
        fell = asyncio.ensure_future(self.availability.fell(name).wait())
        try:
            await asyncio.wait({work, fell}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            if fell.done():
                state = self.availability.state[name]
                raise ServiceUnavailable(f"LLM tier {name!r} is {state['status']} "
                                         f"({state.get('error', '')})")
            raise asyncio.TimeoutError
        finally:
            work.cancel()
            fell.cancel()

    async def _gated(self, job: Job) -> Outcome:
        qcfg, max_attempts, _ = self._quality_config(job)
        entry = self._entry_tier(job.model, job.quality)
        every = self.config.max_attempts_per_tier * len(self.tiers)
        plan = plan_attempts(
            entry, [t.sampling.temperature for t in self.tiers], job.sampling,
            self.config.max_attempts_per_tier, every, self.config.retry_temperature_factor,
        )
        counter = iter(range(len(plan)))
        totals = {"generation_ms": 0.0, "scoring_ms": 0.0, "tokens": 0}
        tried: list[int] = []

        async def generate(attempt: Attempt) -> GenerationResult:
            self._skip_if_down(attempt.tier)
            if tried:
                kind = "retries" if tried[-1] == attempt.tier else "escalations"
                metrics.inc(f"graphserve_quality_{kind}", tier=self.tiers[attempt.tier].name)
            tried.append(attempt.tier)
            generation = self._generation(job, f"{job.request_id}-{next(counter)}",
                                          attempt.sampling, attempt.tier, qcfg)
            started = time.monotonic()
            result = await self._attempt(attempt.tier, job.request_id,
                                         self.tier_handles[attempt.tier].generate.remote(generation),
                                         self.config.generation_timeout_s)
            totals["generation_ms"] += (time.monotonic() - started) * 1000
            totals["tokens"] += result.tokens_generated
            if self.tiers[attempt.tier].consensus_samples and not qcfg.enabled:
                result, _ = await self._judge(job, result, qcfg, attempt.tier, consensus=True)
            return result

        async def score(result: GenerationResult) -> tuple[GenerationResult, quality.QualityReport]:
            tier = next(i for i, t in enumerate(self.tiers) if t.name == result.tier)
            result, report = await self._judge(job, result, qcfg, tier,
                                               consensus=self.tiers[tier].consensus_samples > 0)
            totals["scoring_ms"] += report.timing["scoring_ms"]
            return result, report

        outcome = await run_gated(plan, generate, score if qcfg.enabled else None, max_attempts,
                                  budget_s=self.config.gate_budget_s)
        if outcome.report is not None:  # the totals over every attempt
            outcome.report.timing = spent(**totals)
        return outcome

    def _generation(self, job: Job, request_id: str, sampling: Sampling, tier: int,
                    qcfg: QualityConfig, consensus: bool = True) -> GenerationRequest:
        """One attempt's request to a tier: the client's sampling, plus what the gate needs: the
        scoring samples, or a consensus tier's if more (not for a stream: its answer is sent as
        it is made, so no consensus can pick another)."""
        cfg = self.tiers[tier]
        samples = max(qcfg.samples if qcfg.enabled else 0,
                      cfg.consensus_samples if consensus else 0)
        return GenerationRequest(
            request_id=request_id, sampling=sampling, samples=samples,
            sample_temperature=(cfg.consensus_temperature if consensus and cfg.consensus_samples
                                else qcfg.sample_temperature),
            signal_top_k=qcfg.signal_top_k if qcfg.enabled else 0, **job.prompt_fields())

    # -- scoring ----------------------------------------------------------------------------

    async def _judge(self, job: Job, result: GenerationResult, qcfg: QualityConfig, tier: int,
                     consensus: bool, served: bool = True
                     ) -> tuple[GenerationResult, quality.QualityReport]:
        """Signals and calibrated score of the answer (after a consensus pick among the answer
        and its samples when the tier asks for one): one embedder call for the prompt, the answer
        and the samples, then with `cross_tier` the next tier's likelihood of the chosen answer."""
        started = time.monotonic()
        prompt = job.relevance_text
        vectors = await self._embed([prompt, result.text, *(s.text for s in result.samples)])
        if consensus and result.samples:
            texts = [result.text, *(s.text for s in result.samples)]
            pick = quality.consensus(texts, prompt, vectors[1:] if vectors else None)
            if vectors and pick:
                vectors = [vectors[0], vectors[1 + pick],
                           *(v for i, v in enumerate(vectors[1:]) if i != pick)]
            result = chosen_by_consensus(result, pick)
        cross = None
        if qcfg.cross_tier and tier + 1 < len(self.tiers):
            cross = await self._likelihood(tier + 1, job, result.text, 0)
        samples = [s.text for s in result.samples] if result.samples else None
        report = quality.score_answer(
            evidence(prompt, result.text, result.finish_reason, result.logprobs, samples, vectors,
                     cross),
            self.calibration, qcfg.threshold, qcfg.repetition_ngram, qcfg.repetition_floor)
        # JSON that does not parse or match its schema is wrong, whatever else the score says.
        report.structure = quality.structure_check(result.text, job.sampling.structured)
        if report.structure is not None and not report.structure["valid"]:
            report.passed = False
        return result, self._finish_report(report, result.tier, result.model_id,
                                           time.monotonic() - started, served)

    def _finish_report(self, report: quality.QualityReport, tier: str | None, model: str | None,
                       elapsed: float, served: bool = True) -> quality.QualityReport:
        """Tier and timing of one scored answer; the gate's metrics count served answers only."""
        report.tier, report.model = tier, model
        report.timing = {"scoring_ms": elapsed * 1000}
        if not served:
            return report
        metrics.observe("graphserve_scoring_latency_seconds", elapsed)
        metrics.observe("graphserve_quality_score", report.score, tier=tier)
        if not report.passed:
            metrics.inc("graphserve_quality_gate_failures", tier=tier)
        for component in report.degraded:
            metrics.inc("graphserve_quality_degraded", component=component)
        return report

    async def _embed(self, texts: list[str]) -> list[list[float]] | None:
        """Embeddings for scoring, or None when the embedder is down or slow (degraded)."""
        if self.availability.is_down(self.embedder_name):
            return None
        try:
            vectors, _ = await asyncio.wait_for(
                self.embedder.embed_for_scoring.remote([t if t.strip() else " " for t in texts]),
                self.config.embedder_timeout_s,
            )
        except UNAVAILABLE as e:
            self._failed(self.embedder_name, e)
            return None
        return vectors.tolist()

    async def _likelihood(self, tier: int, job: Job, answer: str,
                          top_k: int) -> list[TokenLogprob] | None:
        """The answer's token logprobs under a tier's model, or None when it cannot tell now."""
        name = self.tiers[tier].name
        if self.availability.is_down(name):
            return None
        call = LikelihoodRequest(request_id=new_id("likelihood"), answer=answer, top_k=top_k,
                                 **job.prompt_fields())
        try:
            return await asyncio.wait_for(self.tier_handles[tier].likelihood.remote(call),
                                          self.config.generation_timeout_s)
        except UNAVAILABLE as e:
            self._failed(name, e)
            return None

    async def score_pairs(self, body: QualityScoreRequest) -> list[dict]:
        """`/v1/quality/score`: the signals of given answers. With `model`, the answer's
        likelihood under that tier stands in for the engine's logprobs, and `samples` draws k
        answers there to measure agreement; the calibrated score is then the same as served."""
        qcfg = self.config.quality
        tier = self._entry_tier(body.model, body, "tier") if body.model is not None else None
        return list(await asyncio.gather(*(
            self._score_pair(pair, body, tier, qcfg) for pair in body.pairs)))

    async def _score_pair(self, pair: ScorePair, body: QualityScoreRequest, tier: int | None,
                          qcfg: QualityConfig) -> dict:
        started = time.monotonic()
        job = Job(request_id=new_id("score"), model=body.model or "given",
                  messages=[{"role": "user", "content": pair.prompt}], relevance_text=pair.prompt,
                  sampling=Sampling())
        likelihood, samples = None, None
        if tier is not None:
            calls = [self._likelihood(tier, job, pair.answer, qcfg.signal_top_k)]
            if body.samples:
                calls.append(self._draw_samples(tier, job, body.samples, qcfg))
            likelihood, *drawn = await asyncio.gather(*calls)
            samples = drawn[0] if drawn else None
        vectors = await self._embed([pair.prompt, pair.answer, *(samples or [])])
        report = quality.score_answer(
            evidence(pair.prompt, pair.answer, pair.finish_reason, likelihood, samples, vectors),
            self.calibration, body.threshold, qcfg.repetition_ngram, qcfg.repetition_floor)
        named = self.tiers[tier] if tier is not None else None
        return self._finish_report(report, named and named.name, named and named.model_id,
                                   time.monotonic() - started, served=False).to_dict()

    async def _draw_samples(self, tier: int, job: Job, k: int,
                            qcfg: QualityConfig) -> list[str] | None:
        generation = GenerationRequest(
            request_id=new_id("samples"), sampling=Sampling(n=k, temperature=qcfg.sample_temperature),
            **job.prompt_fields())
        try:
            result = await asyncio.wait_for(self.tier_handles[tier].generate.remote(generation),
                                            self.config.generation_timeout_s)
        except UNAVAILABLE as e:
            self._failed(self.tiers[tier].name, e)
            return None
        return [c.text for c in result.choices]

    def _report(self, outcome: Outcome) -> dict | None:
        return None if outcome.report is None else outcome.report.to_dict()
