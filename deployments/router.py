"""Router: the one deployment in front of the models. The OpenAI-compatible HTTP API and the
quality gate (`gate.py`) share its process, so a request crosses proxy -> router -> LLM tier.

Routes parse, hand the request to the gate and format its answer (`api.py`). Bodies are read with
a size limit and validated by the models in `protocol.py`; every failure (ours, the engine's,
Ray's) is answered through `failures.error_response`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayTaskError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import api, availability
from deployments.config import RouterConfig
from deployments.embedder import Embedded, check_inputs
from deployments.failures import UNAVAILABLE, api_error, error_response
from deployments.gate import Gate
from deployments.metrics import RequestMetrics
from deployments.protocol import (
    APIError,
    BadRequest,
    ChatCompletionRequest,
    ClientClosedRequest,
    CompletionRequest,
    EmbeddingRequest,
    Job,
    ModelNotFound,
    PayloadTooLarge,
    QualityScoreRequest,
    QualityScores,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
    new_id,
)
from deployments.tier import Downstream, Tier

log = logging.getLogger("ray.serve")
app = FastAPI(title="graphserve", docs_url=None, redoc_url=None)
ROUTES = frozenset({"/health", "/v1/models", "/v1/chat/completions", "/v1/completions",
                    "/v1/embeddings", "/v1/quality/score"})
app.add_middleware(RequestMetrics, routes=ROUTES)
Body = TypeVar("Body", bound=BaseModel)


async def _error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request.method, request.url.path)


# Known failures get their own handlers: Starlette re-raises whatever reaches the catch-all
# `Exception` handler, and Serve's proxy may then replace our body with its own plain text.
for _known in {APIError, RayTaskError, StarletteHTTPException, *UNAVAILABLE}:
    app.add_exception_handler(_known, _error)
app.add_exception_handler(Exception, _error)  # the unexpected: a 500 with the OpenAI body


async def read_json(request: Request, model: type[Body], limit: int) -> Body:
    """The request body, size-limited, decoded and validated; failures name the field."""
    if "json" not in request.headers.get("content-type", "application/json"):
        raise UnsupportedMediaType("the body must be JSON (content-type: application/json)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:  # strict: JSON types as OpenAI types them ("yes" is not a boolean, "5" not an integer)
        return model.model_validate_json(raw, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        message = first["msg"].removeprefix("Value error, ")
        raise BadRequest(f"{param or 'body'}: {message}", param=param or None) from None


async def client_gone(request: Request) -> None:
    """Returns when the client closes the connection (its body has been read by then)."""
    message = await request.receive()
    while message["type"] != "http.disconnect":
        message = await request.receive()


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


def as_json(body: BaseModel, headers: dict[str, str] | None = None) -> Response:
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


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
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.api_key.encode()):
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")

    async def _bounded(self, awaitable, request: Request | None = None):
        """A downstream call with the request timeout; its failures become our API errors here,
        because Serve installs its own FastAPI handlers for BackPressureError and
        DeploymentUnavailableError, which would answer with a plain-text body. With `request`, a
        client that goes away cancels the call (and so the engine's work): HTTP served by the
        replica itself (direct ingress) does not cancel a handler when its client disconnects."""
        work = asyncio.ensure_future(asyncio.wait_for(awaitable, self.config.request_timeout_s))
        gone = asyncio.ensure_future(client_gone(request)) if request is not None else None
        try:
            if gone is not None:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    raise ClientClosedRequest("the client closed the connection")
            return await work
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"the request took longer than {self.config.request_timeout_s:.0f} s"
            ) from None
        except APIError:
            raise
        except Exception as e:
            raise api_error(e) from None
        finally:
            for task in (work, gone):
                if task is not None:
                    task.cancel()

    # -- routes -----------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """Per deployment: the gate's last probe (model, load time, uptime), Serve's replicas and
        a tier's last canary round; 503 when no LLM tier can answer (`availability.health`)."""
        try:
            serve_status = await asyncio.wait_for(asyncio.to_thread(serve.status), 5)
            app_status = serve_status.applications.get(serve.get_replica_context().app_name)
            replicas = {name: {"serve_status": overview.status.value, "replicas": {
                state.value if hasattr(state, "value") else str(state): count
                for state, count in overview.replica_states.items()}}
                for name, overview in (app_status.deployments if app_status else {}).items()}
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

    @app.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_json(request, EmbeddingRequest, self.config.max_body_bytes)
        if body.model != self.embedder.model_id:
            raise ModelNotFound.named(body.model, [self.embedder.model_id], "embedding model")
        vectors, tokens = await self._bounded(self._embed(body.texts()), request)
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise BadRequest(f"this model returns {vectors.shape[1]} dimensions; "
                             "other sizes are not supported", param="dimensions")
        return as_json(api.embedding_list(body.model, vectors, tokens, body.encoding_format))

    async def _embed(self, texts: list[str]) -> Embedded:
        """The request's limits are checked here, at the edge; the embedder merges concurrent
        calls into one encode (`@serve.batch`), and its autoscaler sees each call as load."""
        check_inputs(texts, self.embedder.config)
        return await self.embedder.handle.embed.remote(texts)

    @app.post("/v1/quality/score")
    async def quality_score(self, request: Request) -> Response:
        self._authorize(request)
        body = await read_json(request, QualityScoreRequest, self.config.max_body_bytes)
        reports = await self._bounded(self.gate.score_pairs(body), request)
        return as_json(QualityScores(data=reports))
