"""The quality canary: a small fixed set of questions with checkable answers, asked of each tier on
a period, so a tier that is up but answers wrongly (a bad model upload, a wrong dtype, a broken
chat template, a sampling config that ruins answers) is seen before users complain.

Pure functions here (no Ray): whether an answer is right, and a round's summary. The router asks
the questions (`gate.Gate`), exports the counts and scores, and shows the last round in /health.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import asdict, dataclass


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
