"""Scoring in the router: gather an answer's evidence (embeddings, a consensus pick among its
samples, the next tier's likelihood), turn it into a calibrated report (`quality.py`, pure), and
score given answers for `/v1/quality/score`. The threshold is resolved here, once, for both.
"""

from __future__ import annotations

import asyncio
import time

from deployments import metrics, quality
from deployments.config import QualityConfig
from deployments.policy import Cost
from deployments.protocol import (
    Candidate,
    GenerationRequest,
    GenerationResult,
    Job,
    LikelihoodRequest,
    QualityScoreRequest,
    Sampling,
    ScorePair,
    TokenLogprob,
    new_id,
)
from deployments.tier import Downstream, Tier


def evidence(prompt: str, answer: str, finish_reason: str | None,
             tokens: list[TokenLogprob] | None, samples: list[str] | None,
             vectors: list[list[float]] | None,
             cross: list[TokenLogprob] | None = None) -> quality.Evidence:
    """What the scorer needs, as plain data. `vectors`: prompt, answer, then one per sample."""
    return quality.Evidence(
        prompt=prompt, answer=answer, finish_reason=finish_reason,
        logprobs=[t.logprob for t in tokens] if tokens is not None else None,
        tops=[[lp for _, lp in t.top] for t in tokens or []],
        tokens=[t.token for t in tokens or []],
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


class Scorer:
    """The calibrated scorer and the deployments it asks for evidence."""

    def __init__(self, config: QualityConfig, embedder: Downstream, ladder: list[Tier],
                 embedder_timeout_s: float, generation_timeout_s: float):
        self.config = config
        default = quality.Calibration.load(config.calibration_file)
        self.calibrations = {t.name: quality.Calibration.load(t.config.calibration_file)
                             if t.config.calibration_file else default for t in ladder}
        self.calibration = default  # for answers scored under no tier (/v1/quality/score)
        self.embedder = embedder
        self.ladder = ladder
        self.embedder_timeout_s = embedder_timeout_s
        self.generation_timeout_s = generation_timeout_s

    def threshold(self, requested: float | None = None, tier: Tier | None = None,
                  free: bool = False) -> float:
        """The bar an answer must reach: the request's, else the config's, else the one the
        tier's calibration (`free`: its sample-free fit) states as its operating point."""
        for value in (requested, self.config.threshold):
            if value is not None:
                return value
        calibration = self.calibration_of(tier)
        return (calibration.free if free else calibration).threshold

    def calibration_of(self, tier: Tier | None) -> quality.Calibration:
        return self.calibration if tier is None else self.calibrations[tier.name]

    def calibration_view(self, tier: Tier) -> dict:
        """What /health shows of a tier's calibration: what it was fitted for, and whether that
        is what the tier serves (its last probe's model and dtype)."""
        fitted = self.calibration_of(tier).fitted_for
        reason = self.uncalibrated(tier)
        return {"model": fitted.get("model"), "dtype": fitted.get("dtype"),
                "matches": reason is None, **({"reason": reason} if reason else {})}

    def uncalibrated(self, tier: Tier) -> str | None:
        state = tier.availability.state.get(tier.name, {}) if tier.availability else {}
        return self.calibration_of(tier).mismatch(state.get("model"), state.get("dtype"))

    async def embed(self, texts: list[str]) -> list[list[float]] | None:
        """Embeddings for scoring, or None when the embedder is down or slow (degraded)."""
        got = await self.embedder.call_or_none(
            "embed_for_scoring", [t if t.strip() else " " for t in texts], self.embedder_timeout_s)
        return None if got is None else got[0].tolist()

    async def consensus_pick(self, job: Job, result: GenerationResult,
                             vectors: list[list[float]] | None = None
                             ) -> tuple[GenerationResult, list[list[float]] | None]:
        """The answer its samples agree with most (self-consistency), and the vectors of the
        prompt, the chosen answer and the rest, in that order (`vectors`: those of the prompt,
        the answer and the samples, when already embedded)."""
        texts = [result.text, *(s.text for s in result.samples)]
        if vectors is None:
            vectors = await self.embed([job.relevance_text, *texts])
        pick = quality.consensus(texts, job.relevance_text, vectors[1:] if vectors else None)
        if vectors and pick:
            vectors = [vectors[0], vectors[1 + pick],
                       *(v for i, v in enumerate(vectors[1:]) if i != pick)]
        return chosen_by_consensus(result, pick), vectors

    async def judge(self, job: Job, result: GenerationResult, tier: Tier, consensus: bool,
                    cost: Cost, threshold: float | None = None, served: bool = True,
                    draw: int = 0, sample_below: float = 1.0, deadline: float | None = None
                    ) -> tuple[GenerationResult, quality.QualityReport]:
        """Signals and calibrated score of the answer (after a consensus pick among it and its
        samples when `consensus`), then with `cross_tier` the next tier's likelihood of the
        chosen answer. The time it took is added to `cost`.

        The cascade: an answer that came without samples is scored first without them (its
        tokens and relevance: no engine work); only below `sample_below` are `draw` samples drawn
        after it, and the answer scored (and voted on) with them. Not past `deadline` (monotonic
        seconds: the gate's budget): samples that would not end by then at the pace of the answer
        are not drawn, and those that do not are dropped (the report says `budget_exhausted`)."""
        started = time.monotonic()
        texts = [job.relevance_text, result.text, *(s.text for s in result.samples)]
        vectors = await self.embed(texts)
        if draw and not result.samples:
            free = self._report(evidence(job.relevance_text, result.text, result.finish_reason,
                                         result.logprobs, None, vectors), threshold, tier,
                                free=True)
            if free.score >= sample_below:
                return result, self._finish(free, job, result, cost, started, served)
            drawn, out_of_time = await self._draw_in_time(tier, job, draw, cost, deadline)
            if out_of_time:
                free.budget_exhausted = True
                return result, self._finish(free, job, result, cost, started, served)
            if drawn:
                result = result.model_copy(update={"samples": drawn})
                more = await self.embed([c.text for c in drawn])
                vectors = vectors + more if vectors and more else None
        if consensus and result.samples:
            result, vectors = await self.consensus_pick(job, result, vectors)
        cross = None
        if self.config.cross_tier and tier.rank + 1 < len(self.ladder):
            cross = await self.likelihood(self.ladder[tier.rank + 1], job, result.text, 0)
        samples = [s.text for s in result.samples] if result.samples else None
        report = self._report(
            evidence(job.relevance_text, result.text, result.finish_reason, result.logprobs,
                     samples, vectors, cross), threshold, tier, free=samples is None)
        return result, self._finish(report, job, result, cost, started, served)

    def _finish(self, report: quality.QualityReport, job: Job, result: GenerationResult,
                cost: Cost, started: float, served: bool) -> quality.QualityReport:
        # JSON that does not parse or match its schema is wrong, whatever else the score says.
        report.structure = quality.structure_check(result.text, job.sampling.structured)
        if report.structure is not None and not report.structure["valid"]:
            report.passed = False
        report.tier, report.model = result.tier, result.model_id
        report.samples = len(result.samples)
        elapsed = time.monotonic() - started
        cost.scoring_ms += elapsed * 1000
        if served:
            self._count(report, elapsed)
        return report

    async def likelihood(self, tier: Tier, job: Job, answer: str,
                         top_k: int) -> list[TokenLogprob] | None:
        """The answer's token logprobs under a tier's model, or None when it cannot tell now."""
        call = LikelihoodRequest(request_id=new_id("likelihood"), answer=answer, top_k=top_k,
                                 **job.prompt_fields())
        return await tier.call_or_none("likelihood", call, self.generation_timeout_s)

    async def score_pairs(self, body: QualityScoreRequest, tier: Tier | None) -> list[dict]:
        """`/v1/quality/score`: the reports of given answers, at the same threshold as served
        answers. With `tier`, the answer's likelihood under its model stands in for the engine's
        logprobs, and `samples` draws k answers there to measure agreement."""
        return list(await asyncio.gather(*(
            self._score_pair(pair, body, tier) for pair in body.pairs)))

    async def _score_pair(self, pair: ScorePair, body: QualityScoreRequest,
                          tier: Tier | None) -> dict:
        started = time.monotonic()
        job = Job(request_id=new_id("score"), model=body.model or "given",
                  messages=[{"role": "user", "content": pair.prompt}], relevance_text=pair.prompt,
                  sampling=Sampling())
        likelihood, samples = None, None
        if tier is not None:
            calls = [self.likelihood(tier, job, pair.answer, self.config.signal_top_k)]
            if body.samples:
                calls.append(self._draw_samples(tier, job, body.samples))
            likelihood, *drawn = await asyncio.gather(*calls)
            samples = [c.text for c in drawn[0]] if drawn and drawn[0] is not None else None
        vectors = await self.embed([pair.prompt, pair.answer, *(samples or [])])
        report = self._report(evidence(pair.prompt, pair.answer, pair.finish_reason, likelihood,
                                       samples, vectors), body.threshold, tier,
                              free=samples is None)
        if tier is not None:
            report.tier, report.model = tier.name, tier.model_id
        Cost(scoring_ms=(time.monotonic() - started) * 1000).stamp(report)
        return report.to_dict()

    async def _draw_in_time(self, tier: Tier, job: Job, k: int, cost: Cost,
                            deadline: float | None) -> tuple[list[Candidate] | None, bool]:
        """The cascade's samples, and whether the deadline left no time for them: none are
        started that would not end by it at the answer's own pace (`cost.generation_ms`), and
        those still running at it are cancelled (the engine aborts them)."""
        if deadline is None:
            return await self._draw_samples(tier, job, k, cost), False
        remaining = deadline - time.monotonic()
        if remaining < cost.generation_ms / 1000:
            return None, True
        try:
            return await asyncio.wait_for(self._draw_samples(tier, job, k, cost), remaining), False
        except asyncio.TimeoutError:
            return None, True

    async def _draw_samples(self, tier: Tier, job: Job, k: int,
                            cost: Cost | None = None) -> list[Candidate] | None:
        """k answers to the job's prompt at the sample temperature (a length cap below the
        request's: `sample_max_tokens`), with token signals; None when the tier cannot now."""
        sampling = tier.sampling(job.sampling)
        cap = self.config.sample_max_tokens
        limit = sampling.max_tokens if cap is None else min(sampling.max_tokens or cap, cap)
        generation = GenerationRequest(
            request_id=new_id("samples"),
            sampling=sampling.model_copy(update={
                "n": k, "temperature": self.config.sample_temperature, "seed": None,
                "max_tokens": limit}),
            signal_top_k=self.config.signal_top_k, **job.prompt_fields())
        started = time.monotonic()
        result = await tier.call_or_none("generate", generation, self.generation_timeout_s)
        if result is None:
            return None
        if cost is not None:  # engine time, not scoring time
            elapsed = (time.monotonic() - started) * 1000
            cost.generation_ms += elapsed
            cost.scoring_ms -= elapsed
            cost.tokens += result.tokens_generated
        return result.choices

    def _report(self, evidence_: quality.Evidence, threshold: float | None,
                tier: Tier | None, free: bool = False) -> quality.QualityReport:
        """The calibrated report under the tier's calibration (`free`: its fit without sample
        signals, for an answer scored without samples); one fitted for another model or dtype
        still scores, and says so (`uncalibrated`)."""
        calibration = self.calibration_of(tier)
        if free:
            calibration = calibration.free
        report = quality.score_answer(evidence_, calibration,
                                      self.threshold(threshold, tier, free),
                                      self.config.repetition_ngram, self.config.repetition_floor)
        if tier is not None and self.uncalibrated(tier):
            report.degraded.append("uncalibrated")
        return report

    @staticmethod
    def _count(report: quality.QualityReport, elapsed: float) -> None:
        """The gate's metrics count served answers only (not canary or score-endpoint ones)."""
        metrics.observe("graphserve_scoring_latency_seconds", elapsed)
        metrics.observe("graphserve_quality_score", report.score, tier=report.tier)
        if not report.passed:
            metrics.inc("graphserve_quality_gate_failures", tier=report.tier)
        for component in report.degraded:
            metrics.inc("graphserve_quality_degraded", component=component)
