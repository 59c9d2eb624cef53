"""Answer quality as pure functions of plain data (no Ray, no models): fast to test, easy to refit.

Every signal is generic (no answer keys, no fact tables) and computed from what the engine and the
embedder return for one answer:
- token uncertainty: mean, minimum and 10th-percentile token logprob; mean entropy over the top-k
  candidates vLLM returns per token; the same over the answer's head (its first sentence);
- the answer's own words: the logprob, entropy and top-2 margin of the tokens that spell what the
  answer asserts, where it first says it (`normalised_answer`: "42", "Canberra"), and the mean
  logprob and entropy of its content words (not in the prompt, not function words), so that a
  confident echo of the question does not hide an unsure answer;
- self-consistency: k extra samples of the same prompt drawn in the same engine request; their mean
  cosine to the answer (MiniLM), the share whose normalised answer equals the answer's
  (`agreement`), and the overlap of their new content words (`overlap`);
- cross-tier likelihood: the mean logprob of the answer under the next tier's model (a prefill);
- relevance: the raw cosine of prompt and answer (not ramped, so it does not saturate);
- repetition and completeness: degenerate loops, empty and truncated answers.

The score is a calibrated probability that the answer is right: a logistic regression over the
standardised signals, fitted offline by `make calibrate` on the served model's own answers to
checkable questions (benchmarks/calibrate.py) and loaded from `quality_calibration.json`. A signal
that could not be computed (embedder down, no samples) is listed in `degraded` and takes its mean
on the fit split, i.e. it neither raises nor lowers the score.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

CALIBRATION_FILE = Path(__file__).with_name("quality_calibration.json")
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"""[.!?…:;)\]"'`*>\u3002\uff01\uff1f]\s*$|```\s*$|\d\s*$""")
# Function words that never carry an answer: "The capital is Canberra" and "Canberra" agree.
_STOPWORDS = frozenset("""a an the is are was were be been being am of in on at to for from by with
and or but not no it its this that these those there here as so than then s t which who whom whose
what when where why how do does did has have had i you he she we they me him her us them my your his
our their will would can could should may might must shall also just very about into over after
before called known answer correct yes""".split())


@dataclass
class QualityReport:
    score: float
    passed: bool
    threshold: float
    components: dict[str, float]
    degraded: list[str] = field(default_factory=list)
    attempts: int = 1
    samples: int = 0  # samples the answer was scored (and voted) with; 0: scored on its own
    budget_exhausted: bool = False  # the gate stopped short (retries, samples): gate_budget_s
    tier: str | None = None
    model: str | None = None
    timing: dict[str, float] | None = None  # generation_ms / scoring_ms / tokens, set by the router
    structure: dict | None = None  # a JSON answer's check (response_format): `structure_check`
    guard: str | None = None  # why the score is 0 whatever the fit says: `guard`

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("timing", "structure", "guard"):
            if d[key] is None:
                del d[key]
        d["score"] = round(self.score, 4)
        d["components"] = {k: round(v, 4) for k, v in self.components.items()}
        return d


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return 0.0 if na == 0 or nb == 0 else dot / (na * nb)


def token_signals(logprobs: Sequence[float], tops: Sequence[Sequence[float]] = ()) -> dict[str, float]:
    """Uncertainty of the engine about its own tokens. `tops`: the top-k candidates' logprobs per
    token (renormalised over the k for the entropy); empty when none were returned."""
    finite = sorted(lp for lp in logprobs if math.isfinite(lp))
    if not finite:
        return {}
    out = {
        "mean_logprob": sum(finite) / len(finite),
        "min_logprob": finite[0],
        "p10_logprob": finite[int(0.1 * (len(finite) - 1))],
    }
    entropies = [_entropy(t) for t in tops if t]
    if entropies:
        out["mean_entropy"] = sum(entropies) / len(entropies)
    return out


HEAD_TOKENS = 24  # the answer's head: its first sentence, at most this many tokens
_HEAD_END = re.compile(r"[.!?\n]")


def head_signals(tokens: Sequence[str], logprobs: Sequence[float],
                 tops: Sequence[Sequence[float]] = ()) -> dict[str, float]:
    """Uncertainty over the answer's head, where a short factual answer sits ("Animal Farm was
    written by George Orwell."): a right head followed by rambling keeps a confident head."""
    end = next((i + 1 for i, t in enumerate(tokens[:HEAD_TOKENS]) if _HEAD_END.search(t)),
               min(len(tokens), HEAD_TOKENS))
    head = token_signals(logprobs[:end], tops[:end])
    return {f"head_{k}": v for k, v in head.items() if k in ("mean_logprob", "min_logprob",
                                                             "mean_entropy")}


_SPAN_WORD = re.compile(r"\d+(?:,\d{3})+|\w+", re.UNICODE)


def answer_signals(tokens: Sequence[str], logprobs: Sequence[float],
                   tops: Sequence[Sequence[float]], prompt: str) -> dict[str, float]:
    """Uncertainty where the answer commits to what it asserts (`key_*`: the first occurrence of
    the word `normalised_answer` picks, else the answer's first word; measured here, the first
    occurrence ranks right above wrong better than the last, which often restates it) and over
    its content words (`content_*`: else every token). Spans are found in the joined tokens."""
    text = "".join(tokens)
    ends = list(itertools.accumulate((len(t) for t in tokens), initial=0))
    asked = _asked(prompt)
    words = [(m.start(), m.end(), m.group().replace(",", "")) for m in _SPAN_WORD.finditer(text)]
    if not words:
        return {}
    key = normalised_answer(text, prompt)
    key_span = next((w for w in words if w[2].lower() == key), words[0])
    content = [w for w in words if _is_content(w[2], asked)] or words

    def covering(spans) -> list[int]:
        """The tokens that overlap any of the character spans, in order."""
        hit: set[int] = set()
        for start, end, _ in spans:  # token i covers [ends[i], ends[i + 1])
            hit.update(range(bisect.bisect_right(ends, start) - 1, bisect.bisect_left(ends, end)))
        return sorted(hit)

    key_ix, content_ix = covering([key_span]), covering(content)
    if not key_ix or not content_ix:
        return {}
    out = {"key_logprob": sum(logprobs[i] for i in key_ix),
           "key_min_logprob": min(logprobs[i] for i in key_ix),
           "content_mean_logprob": sum(logprobs[i] for i in content_ix) / len(content_ix)}
    if len(tops) == len(tokens) and all(tops):  # every token's candidates (signal_top_k > 0)
        first = tops[key_ix[0]]
        out["key_entropy"] = sum(_entropy(tops[i]) for i in key_ix) / len(key_ix)
        out["key_margin"] = first[0] - first[1] if len(first) > 1 else 0.0
        out["content_mean_entropy"] = sum(_entropy(tops[i]) for i in content_ix) / len(content_ix)
    return out


def _entropy(logprobs: Sequence[float]) -> float:
    probs = [math.exp(lp) for lp in logprobs if math.isfinite(lp)]
    total = sum(probs)
    return -sum(p / total * math.log(p / total) for p in probs if p > 0) if total > 0 else 0.0


def content_words(text: str, prompt: str) -> list[str]:
    """The answer's words that are not in the prompt and carry content, in order (case kept)."""
    asked = _asked(prompt)
    return [w for w in _WORD.findall(text.replace(",", "")) if _is_content(w, asked)]


def _asked(prompt: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(prompt)}


def _is_content(word: str, asked: set[str]) -> bool:
    return word.lower() not in asked and word.lower() not in _STOPWORDS


def normalised_answer(text: str, prompt: str) -> str:
    """What a short answer asserts: its last new number ("15 + 27 = 42" -> 42), else its first
    new name ("The capital city is Canberra." -> canberra), else its first new content word."""
    return _asserted(content_words(text, prompt))


def _asserted(words: list[str]) -> str:
    numbers = [w for w in words if w.isdigit()]
    if numbers:
        return numbers[-1]
    names = [w for w in words if w[0].isupper()]
    return (names or words or [""])[0].lower()


def consistency_signals(answer: str, samples: Sequence[str], prompt: str,
                        answer_vec: Sequence[float] | None = None,
                        sample_vecs: Sequence[Sequence[float]] | None = None) -> dict[str, float]:
    """How much k independent samples agree with the answer (none: no signal)."""
    if not samples:
        return {}
    answer_words = content_words(answer, prompt)
    key, words = _asserted(answer_words), {w.lower() for w in answer_words}
    agree, overlap = 0, 0.0
    for s in samples:
        sample_words = content_words(s, prompt)
        agree += bool(key) and _asserted(sample_words) == key
        other = {w.lower() for w in sample_words}
        overlap += len(words & other) / len(words | other) if words | other else 1.0
    out = {"agreement": agree / len(samples), "overlap": overlap / len(samples)}
    if answer_vec is not None and sample_vecs:
        out["consistency"] = sum(cosine(answer_vec, v) for v in sample_vecs) / len(sample_vecs)
    return out


def consensus(texts: Sequence[str], prompt: str,
              vectors: Sequence[Sequence[float]] | None = None) -> int:
    """Index of the candidate the others agree with most (self-consistency): most shared
    normalised answer first, then the highest mean cosine to the others; ties go to the first."""
    keys = [normalised_answer(t, prompt) for t in texts]
    votes = Counter(k for k in keys if k)

    def support(i: int) -> tuple[int, float, int]:
        cos = 0.0
        if vectors is not None and len(texts) > 1:
            cos = sum(cosine(vectors[i], v) for j, v in enumerate(vectors) if j != i) / (len(texts) - 1)
        return votes.get(keys[i], 0), cos, -i

    return max(range(len(texts)), key=support)


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


@dataclass
class Evidence:
    """Everything the signals are computed from, as plain data."""

    prompt: str
    answer: str
    finish_reason: str | None
    logprobs: Sequence[float] | None = None  # None: no engine logprobs (a given answer)
    tops: Sequence[Sequence[float]] = ()
    tokens: Sequence[str] = ()  # the answer's tokens, for the head signals
    samples: Sequence[str] | None = None  # None: no samples were drawn
    prompt_vec: Sequence[float] | None = None
    answer_vec: Sequence[float] | None = None
    sample_vecs: Sequence[Sequence[float]] | None = None
    cross_tier_logprobs: Sequence[float] | None = None


def signals(e: Evidence, repetition_ngram: int = 3) -> dict[str, float]:
    out = {"repetition": repetition(e.answer, repetition_ngram),
           "completeness": completeness(e.answer, e.finish_reason)}
    if e.logprobs is not None:
        out.update(token_signals(e.logprobs, e.tops))
        if e.tokens:
            out.update(head_signals(e.tokens, e.logprobs, e.tops))
            out.update(answer_signals(e.tokens, e.logprobs, e.tops, e.prompt))
    if e.samples is not None:
        out.update(consistency_signals(e.answer, e.samples, e.prompt, e.answer_vec, e.sample_vecs))
    if e.prompt_vec is not None and e.answer_vec is not None:
        out["relevance"] = cosine(e.prompt_vec, e.answer_vec)
    if e.cross_tier_logprobs:
        finite = [lp for lp in e.cross_tier_logprobs if math.isfinite(lp)]
        if finite:
            out["cross_tier_logprob"] = sum(finite) / len(finite)
    return out


# ---------------------------------------------------------------------------------------------
# The calibrated score
# ---------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """P(answer is right): a logistic regression over standardised signals, then a Platt map of
    its logit (`platt`: slope, intercept) fitted on out-of-group predictions, so the probability
    holds on kinds of question the regression never saw. Fitted offline for one model, dtype and
    sampling (`fitted_for`); a tier serving another model or dtype is `uncalibrated`."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float
    operating_point: str = ""
    platt: list[float] = field(default_factory=lambda: [1.0, 0.0])
    # model, dtype, sampling, samples, tier: what the answers it was fitted on were made with
    fitted_for: dict = field(default_factory=dict)
    # The same answers fitted without the sample signals: the gate's first, free look at an
    # answer, which decides whether samples are worth drawing (`QualityConfig.sample_below`).
    without_samples: Calibration | None = None
    # The off-topic guard: an answer less related to its prompt than (nearly) every right answer
    # of the fit was scores 0 (`guard`); None: no guard.
    relevance_floor: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if fields.get("without_samples") is not None:
            fields["without_samples"] = cls.from_dict(fields["without_samples"])
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calibration:
        return cls.from_dict(json.loads(Path(path or CALIBRATION_FILE).read_text()))

    def save(self, path: str | Path | None = None, **extra) -> None:
        Path(path or CALIBRATION_FILE).write_text(json.dumps({**asdict(self), **extra}, indent=2) + "\n")

    @property
    def free(self) -> Calibration:
        """The calibration for an answer scored without samples."""
        return self.without_samples or self

    def logit(self, values: dict[str, float]) -> tuple[float, list[str]]:
        """The regression's logit, and the features that were missing (taken at their fit mean)."""
        z, missing = self.intercept, []
        for name, mu, sd, w in zip(self.features, self.mean, self.scale, self.coef):
            if name not in values:
                missing.append(name)
                continue
            z += w * (values[name] - mu) / (sd or 1.0)
        return z, missing

    def probability(self, values: dict[str, float]) -> tuple[float, list[str]]:
        """The probability, and the features that were missing."""
        z, missing = self.logit(values)
        slope, offset = self.platt
        z = slope * z + offset
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0))), missing

    def mismatch(self, model: str | None, dtype: str | None) -> str | None:
        """Why this calibration does not describe a tier serving `model` in `dtype` (None: it
        does, or the tier has not said yet)."""
        fitted = self.fitted_for
        if not fitted.get("model"):
            return "the calibration does not say which model it was fitted for"
        if model is not None and model != fitted["model"]:
            return f"fitted for {fitted['model']}, the tier serves {model}"
        dtypes = fitted.get("dtype") or []  # one dtype, or the several its answers were made in
        dtypes = [dtypes] if isinstance(dtypes, str) else dtypes
        if dtype is not None and dtypes and dtype not in dtypes:
            return f"fitted in {', '.join(dtypes)}, the tier runs in {dtype}"
        return None


def score_answer(evidence: Evidence, calibration: Calibration, threshold: float | None = None,
                 repetition_ngram: int = 3, repetition_floor: float = 0.5) -> QualityReport:
    """Score one answer. Missing evidence makes its signals degraded, not zero."""
    return score_signals(signals(evidence, repetition_ngram), calibration, threshold,
                         repetition_floor)


def score_signals(values: dict[str, float], calibration: Calibration,
                  threshold: float | None = None, repetition_floor: float = 0.5) -> QualityReport:
    """The calibrated score of computed signals (also how `make calibrate` scores stored ones)."""
    score, missing = calibration.probability(values)
    reason = guard(values, repetition_floor, calibration.relevance_floor)
    if reason is not None:
        score = 0.0
    limit = calibration.threshold if threshold is None else threshold
    return QualityReport(score=score, passed=score >= limit, threshold=limit,
                         components=dict(values), degraded=missing, guard=reason)


def guard(values: dict[str, float], repetition_floor: float,
          relevance_floor: float | None) -> str | None:
    """What no fitted probability may outweigh, because the labelled answers hold too few such
    cases for a fit to learn: no words, a loop, an answer to another question."""
    if values["completeness"] == 0.0:
        return "empty"
    if values["repetition"] < repetition_floor:
        return "loop"
    if "relevance" in values and off_topic(values["relevance"], relevance_floor):
        return "off_topic"
    return None


def off_topic(relevance: float, floor: float | None) -> bool:
    """An answer less related to its prompt than the calibration's floor (None: no guard)."""
    return floor is not None and relevance < floor


def structure_check(answer: str, structured: dict | None) -> dict | None:
    """Whether an answer asked for as JSON (`response_format`: vLLM's `StructuredOutputsParams`
    fields, {"json_object": True} or {"json": schema}) parses, and matches its schema. Constrained
    decoding makes it valid unless cut short (finish_reason "length"); None: no JSON was asked."""
    if not structured or not ("json" in structured or structured.get("json_object")):
        return None
    import jsonschema

    try:
        value = json.loads(answer)
    except json.JSONDecodeError as e:
        return {"valid": False, "error": f"not JSON: {e}"}
    schema = structured.get("json")
    if schema is None:
        ok = isinstance(value, dict)
        return {"valid": ok, "error": None if ok else "not a JSON object"}
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        return {"valid": False, "error": f"does not match the schema: {e.message}"}
    except jsonschema.SchemaError as e:
        return {"valid": False, "error": f"the schema is invalid: {e.message}"}
    return {"valid": True, "error": None}


def best(reports: list[QualityReport]) -> int:
    """Index of the best-scoring report (the first on ties: cheaper tiers come first)."""
    return max(range(len(reports)), key=lambda i: (reports[i].score, -i))


def _clip(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x
