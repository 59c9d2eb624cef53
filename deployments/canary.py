"""The quality canary: a small fixed set of questions with checkable answers, asked of each tier on
a period, so a tier that is up but answers wrongly (a bad model upload, a wrong dtype, a broken
chat template, a sampling config that ruins answers) is seen before users complain.

Whether an answer is right and a round's summary are pure functions; `watch` asks one tier the
questions on a period through a function the gate gives it (the tier's own sampling, the gate's
score), exports the counts and scores, and keeps the last round for /health. No Ray import.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from deployments import metrics

log = logging.getLogger("ray.serve")


def normalise(text: str) -> str:
    """Lower case, accents and punctuation removed, single spaces: what names are matched in."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) + " "


def correct(answer: str, expect: list[str]) -> bool:
    """Right when the answer names one of the expected answers as a whole word or phrase."""
    said = normalise(answer)
    return any(normalise(e) in said for e in expect)


@dataclass
class Check:
    """One question of a round and what the tier answered."""

    prompt: str
    answer: str
    correct: bool
    score: float | None  # the gate's calibrated score of the answer


def summary(checks: list[Check], min_correct_share: float, started: float) -> dict:
    """A round as /health shows it: how many answers were right, their mean score, and whether
    the tier is failing its canary (fewer right than `min_correct_share`)."""
    right = sum(c.correct for c in checks)
    scores = [c.score for c in checks if c.score is not None]
    share = right / len(checks) if checks else 0.0
    return {
        "checks": len(checks), "correct": right, "share": round(share, 3),
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
        "failing": share < min_correct_share, "at": round(time.time(), 1),
        "duration_s": round(time.time() - started, 2),
        "answers": [asdict(c) for c in checks],
    }


async def watch(tier: str, is_up: Callable[[], bool],
                answer: Callable[[str], Awaitable[tuple[str, float]]], checks: list,
                interval_s: float, min_correct_share: float, rounds: dict[str, dict]) -> None:
    """Every `interval_s`, the tier answers every check (`answer(prompt)`: its text and score,
    as a client would be answered, no retry); `rounds[tier]` keeps the last round. A tier that is
    down or loading is skipped: its probes report that."""
    while True:
        await asyncio.sleep(interval_s)
        if not is_up():
            continue
        started = time.time()
        try:
            answers = await asyncio.gather(*(answer(c.prompt) for c in checks))
        except Exception as e:  # the tier failed meanwhile
            log.warning("canary round of %s skipped: %s", tier, type(e).__name__)
            continue
        done = []
        for check, (text, score) in zip(checks, answers):
            right = correct(text, check.expect)
            metrics.inc("graphserve_canary_checks", tier=tier, correct=str(right).lower())
            metrics.observe("graphserve_canary_score", score, tier=tier)
            done.append(Check(prompt=check.prompt, answer=text, correct=right, score=round(score, 4)))
        rounds[tier] = summary(done, min_correct_share, started)
        if rounds[tier]["failing"]:
            log.warning("tier %s fails its canary: %d of %d answers right", tier,
                        rounds[tier]["correct"], len(done))
