"""Router: the deployment in front of the LLM tiers. The OpenAI-compatible HTTP API and the
quality gate (`gate.py`) share its process, so a request crosses proxy -> router -> LLM tier
(`/v1/embeddings` goes to the embedder itself: deployments/embedder.py).

Routes parse, hand the request to the gate and format its answer (`api.py`). Bodies are read with
a size limit and validated by the models in `protocol.py` (`http.py`); every failure (ours, the
engine's, Ray's) is answered through `failures.error_response`.
"""

from __future__ import annotations

import asyncio
import logging
import os

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from deployments import api, availability
from deployments.config import RouterConfig
from deployments.failures import api_error
from deployments.gate import Gate
from deployments.http import api_app, as_json, authorize, bounded, read_json
from deployments.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Job,
    QualityScoreRequest,
    QualityScores,
    new_id,
)
from deployments.tier import Downstream, Tier

log = logging.getLogger("ray.serve")
# /v1/embeddings is served by the embedder itself (its own application at that route): one hop.
ROUTES = frozenset({"/health", "/v1/models", "/v1/chat/completions", "/v1/completions",
                    "/v1/quality/score"})
app = api_app("graphserve", ROUTES)


async def all_of(awaitables) -> list:
    """Every result, in order; the first failure cancels the rest (a text completion's prompts:
    one failing ends the others' engine work too)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        # Let them end before the caller closes what they were running (a stream's generator).
        await asyncio.gather(*tasks, return_exceptions=True)


@serve.deployment
@serve.ingress(app)
class Router:
    async def __init__(self, config: RouterConfig, tiers: dict[str, list[Tier]],
                       embedder: Downstream):
        self.config = config
        self.embedder = embedder
        self.gate = Gate(config, tiers, embedder)
        self.api_key = config.api_key(os.environ)

    def _authorize(self, request: Request) -> None:
        authorize(request, self.api_key)

    async def _bounded(self, awaitable, request: Request | None = None):
        return await bounded(awaitable, self.config.request_timeout_s, request)

    # -- routes -----------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """Per deployment: the gate's last probe (model, load time, uptime), Serve's replicas and
        a tier's last canary round; 503 when no LLM tier can answer (`availability.health`)."""
        try:
            serve_status = await asyncio.wait_for(asyncio.to_thread(serve.status), 5)
            apps = (serve.get_replica_context().app_name, self.embedder.config.app_name)
            replicas = {name: {"serve_status": overview.status.value, "replicas": {
                state.value if hasattr(state, "value") else str(state): count
                for state, count in overview.replica_states.items()}}
                for app in apps if (app_status := serve_status.applications.get(app))
                for name, overview in app_status.deployments.items()}
        except Exception:  # Serve's view is extra detail; the probes decide the status
            replicas = None
        body, status = availability.health(
            self.gate.availability, [t.name for t in self.gate.ladder], self.embedder.name,
            self.config.name, self.gate.canary, replicas,
            {t.name: self.gate.scorer.calibration_view(t) for t in self.gate.ladder})
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return as_json(api.model_list([*self.gate.model_ids, self.embedder.model_id]))

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._authorize(request)
        body = await read_json(request, ChatCompletionRequest, self.config.max_body_bytes)
        return await self._generate(request, body, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        self._authorize(request)
        body = await read_json(request, CompletionRequest, self.config.max_body_bytes)
        return await self._generate(request, body, chat=False)

    async def _generate(self, request: Request, body: ChatCompletionRequest | CompletionRequest,
                        chat: bool):
        model = body.model or self.gate.model_ids[0]  # as `vllm serve`: no model, the first one
        self.gate.entry(model, body.quality and body.quality.tier)  # a 404 or 400 before any work
        # Serve's proxy sets x-request-id (the client's, or a new one) and tags its logs with it.
        request_id = request.headers.get("x-request-id") or new_id("chatcmpl" if chat else "cmpl")
        jobs = api.jobs_of(body, request_id, model)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(request_id, jobs, include_usage)
        answers = await self._bounded(all_of(self.gate.complete(j) for j in jobs), request)
        (result, report), *_ = answers
        # Serve's proxy puts x-request-id on every response; adding it here would duplicate it.
        headers = {"x-served-by": f"{result.tier}/{result.model_id}"}
        if report is not None and len(answers) == 1:
            headers["x-quality-score"] = f"{report['score']:.4f}"
        return as_json(api.completion_of(request_id, jobs, answers), headers)

    async def _stream(self, request_id: str, jobs: list[Job],
                      include_usage: bool) -> StreamingResponse:
        streams = [self.gate.stream(job) for job in jobs]
        # Wait for each stream's first event before answering, so a failure is still a proper
        # HTTP error.
        try:
            starts = await self._bounded(all_of(s.__anext__() for s in streams))
        except BaseException:
            for s in streams:
                await s.aclose()
            raise
        start = starts[0]
        chunks = api.Chunks(request_id, jobs[0], start.model)
        headers = {"x-served-by": f"{start.tier}/{start.model}", "cache-control": "no-cache"}
        return StreamingResponse(
            api.stream_of(chunks, streams, jobs[0].sampling.n, include_usage,
                          lambda e: api_error(e).body()),
            media_type="text/event-stream", headers=headers)

    @app.post("/v1/quality/score")
    async def quality_score(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_json(request, QualityScoreRequest, self.config.max_body_bytes)
        reports = await self._bounded(self.gate.score_pairs(body), request)
        return as_json(QualityScores(data=reports))
