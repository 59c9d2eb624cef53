"""The gate's policy as plain functions: which attempts to make, and when to stop.

The tier the client named (by model id) tries first; below the threshold it retries in the same
tier (a new seed, a lower temperature), then escalates to the next, stronger tier; the best-scoring
answer is returned with its report. A tier that is down is skipped; only when every tier is down
does the client get an error. No Ray: tested with fake tiers and a fake clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from deployments import quality
from deployments.failures import TierUnavailable, no_tier_error
from deployments.protocol import GenerationResult, Sampling


class Rung(Protocol):
    """What the policy needs of a tier: its name, and its defaults over a client's sampling."""

    name: str

    def sampling(self, requested: Sampling) -> Sampling: ...


@dataclass
class Attempt:
    tier: Any  # a Rung (`tier.Tier` when serving)
    sampling: Sampling  # with the tier's defaults filled in


@dataclass
class Outcome:
    result: GenerationResult
    report: quality.QualityReport | None


@dataclass
class Cost:
    """What answering cost over every attempt: the report's `timing`, stamped once at the end."""

    generation_ms: float = 0.0
    scoring_ms: float = 0.0
    tokens: int = 0

    def stamp(self, report: quality.QualityReport | None) -> None:
        if report is not None:
            report.timing = {"generation_ms": round(self.generation_ms, 1),
                             "scoring_ms": round(self.scoring_ms, 1), "tokens": self.tokens}


@dataclass
class Tally:
    """Which tiers a request went to, so a move to another attempt is counted once as a retry
    (same tier) or an escalation (another tier), streamed or not."""

    tried: list[str] = field(default_factory=list)

    def next(self, tier: str) -> str | None:
        kind = None if not self.tried else "retries" if self.tried[-1] == tier else "escalations"
        self.tried.append(tier)
        return kind


def plan_attempts(
    tiers: Sequence[Rung],
    sampling: Sampling,
    attempts_per_tier: int,
    max_attempts: int,
    retry_temperature_factor: float,
) -> list[Attempt]:
    """Every attempt the gate may make, in order: retries in a tier, then the next tier."""
    plan: list[Attempt] = []
    for tier in tiers:
        first = tier.sampling(sampling)
        temperature = first.temperature
        for retry in range(attempts_per_tier):
            if len(plan) == max_attempts:
                return plan
            if retry == 0:
                plan.append(Attempt(tier, first))
                continue
            if temperature == 0:
                break  # greedy decoding would only repeat the same answer: escalate instead
            temperature *= retry_temperature_factor
            seed = random.getrandbits(31) if sampling.seed is None else sampling.seed + retry
            plan.append(Attempt(tier, first.model_copy(
                update={"temperature": temperature, "seed": seed})))
    return plan


async def _within(work: Awaitable, timeout_s: float | None):
    return await (work if timeout_s is None else asyncio.wait_for(work, max(timeout_s, 0)))


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
    and they do not count against `max_attempts`. With `score` None the gate is off and the first
    answer is returned unscored (then an answer may be anything `generate` makes: the streamed
    path passes an opened stream). `score` may hand back another answer than it was given (a
    consensus tier's pick among its samples).

    `budget_s`: once an answer is in hand, another attempt starts only if, at the pace of the
    attempts so far, it would end within the budget, and is cancelled if it runs past it all the
    same (an escalation to a consensus tier does several times an answer's work); either way the
    best answer so far is served (its report says `budget_exhausted`).
    """
    candidates: list[Outcome] = []
    down: set[str] = set()
    busy: list[bool] = []
    started = clock()
    out_of_time = False
    for attempt in plan:
        if attempt.tier.name in down:
            continue
        if candidates:
            elapsed = clock() - started
            if elapsed + elapsed / len(candidates) > budget_s:
                out_of_time = True
                break
        # The first attempt runs to its end (without it there is nothing to serve); later ones
        # only until the budget does.
        left = budget_s - (clock() - started) if candidates and budget_s < float("inf") else None
        try:
            result = await _within(generate(attempt), left)
        except asyncio.TimeoutError:  # a later attempt ran past the budget: the engine aborts it
            out_of_time = True
            break
        except TierUnavailable as e:
            down.add(attempt.tier.name)
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
