"""Answer quality as pure functions of plain data (no Ray, no models): fast to test, easy to tune.

Each component is a number in [0, 1] where 1 is good:
- relevance: cosine of prompt and answer embeddings, ramped between a floor and a ceiling, because
  MiniLM cosines of a question and its right answer sit around 0.4-0.8 and unrelated text near 0;
- confidence: the geometric-mean probability the engine gave its own tokens;
- repetition: 1 minus the share of repeated word n-grams and repeated lines (degenerate loops);
- completeness: empty answers score 0, answers cut by the token limit or mid-sentence score less.
The score is their weighted mean over the components that could be computed; a component that could
not (embedder down, no logprobs) is listed in `degraded` and its weight is spread over the rest.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from deployments.config import QualityConfig

COMPONENTS = ("relevance", "confidence", "repetition", "completeness")
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"""[.!?…:;)\]"'`*>\u3002\uff01\uff1f]\s*$|```\s*$|\d\s*$""")


@dataclass
class QualityReport:
    score: float
    passed: bool
    threshold: float
    components: dict[str, float]
    degraded: list[str] = field(default_factory=list)
    attempts: int = 1
    tier: str | None = None
    model: str | None = None
    timing: dict[str, float] | None = None  # generation_ms / scoring_ms, set by the router

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.timing is None:
            del d["timing"]
        d["score"] = round(self.score, 4)
        d["components"] = {k: round(v, 4) for k, v in self.components.items()}
        return d


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return 0.0 if na == 0 or nb == 0 else dot / (na * nb)


def relevance(prompt_vec: list[float], answer_vec: list[float], floor: float, ceiling: float) -> float:
    cos = cosine(prompt_vec, answer_vec)
    return _clip((cos - floor) / max(ceiling - floor, 1e-6))


def confidence(token_logprobs: list[float]) -> float:
    """Geometric-mean token probability; an empty answer has no evidence of confidence."""
    finite = [lp for lp in token_logprobs if math.isfinite(lp)]
    if not finite:
        return 0.0
    return _clip(math.exp(sum(finite) / len(finite)))


def repetition(text: str, n: int = 3) -> float:
    """1 minus the share of word n-grams (and non-empty lines) that repeat an earlier one."""
    words = [w.lower() for w in _WORD.findall(text)]
    repeated_ngrams = 0.0
    if len(words) >= n + 1:
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        counts = Counter(grams)
        repeated_ngrams = sum(c - 1 for c in counts.values()) / len(grams)
    lines = [ln.strip().lower() for ln in text.splitlines() if ln.strip()]
    repeated_lines = 0.0
    if len(lines) >= 2:
        repeated_lines = (len(lines) - len(set(lines))) / len(lines)
    # A single word repeated ("the the the") has few n-grams but a tiny vocabulary.
    low_vocab = 0.0
    if len(words) >= 8:
        low_vocab = max(0.0, 1.0 - len(set(words)) / (0.5 * len(words)))
    return _clip(1.0 - max(repeated_ngrams, repeated_lines, low_vocab))


def completeness(text: str, finish_reason: str | None) -> float:
    stripped = text.strip()
    if not _WORD.search(stripped):
        return 0.0
    score = 1.0
    if finish_reason == "length":
        score -= 0.5
    if not _SENTENCE_END.search(stripped):
        score -= 0.4
    return _clip(score)


def score_answer(
    *,
    answer: str,
    finish_reason: str | None,
    config: QualityConfig,
    prompt_vec: list[float] | None = None,
    answer_vec: list[float] | None = None,
    token_logprobs: list[float] | None = None,
    threshold: float | None = None,
) -> QualityReport:
    """Score one answer. Missing inputs (None) make that component degraded, not zero."""
    components: dict[str, float] = {
        "repetition": repetition(answer, config.repetition_ngram),
        "completeness": completeness(answer, finish_reason),
    }
    degraded = []
    if prompt_vec is not None and answer_vec is not None:
        components["relevance"] = relevance(
            prompt_vec, answer_vec, config.relevance_floor, config.relevance_ceiling
        )
    else:
        degraded.append("relevance")
    if token_logprobs is not None:
        components["confidence"] = confidence(token_logprobs)
    else:
        degraded.append("confidence")
    weights = config.weights.model_dump()
    total = sum(weights[k] for k in components)
    score = sum(weights[k] * v for k, v in components.items()) / total if total > 0 else 0.0
    # An answer with no words cannot be good, whatever the other components say.
    if components["completeness"] == 0.0:
        score = 0.0
    limit = config.threshold if threshold is None else threshold
    return QualityReport(
        score=score,
        passed=score >= limit,
        threshold=limit,
        components={k: components[k] for k in COMPONENTS if k in components},
        degraded=degraded,
    )


def best(reports: list[QualityReport]) -> int:
    """Index of the best-scoring report (the first on ties: cheaper tiers come first)."""
    return max(range(len(reports)), key=lambda i: (reports[i].score, -i))


def _clip(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x
