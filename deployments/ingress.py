"""Ingress: the OpenAI-compatible HTTP API. Routes only parse, delegate and format.

Bodies are read with a size limit and validated by the models in `protocol.py`; every failure
(ours, the engine's, Ray's) is turned into the OpenAI error body by `error_response`, the one place
that maps exceptions to HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import time
from typing import TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.config import EmbedderConfig, IngressConfig, LLMConfig, model_ids
from deployments.metrics import RequestMetrics
from deployments.protocol import (
    APIError,
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    QualityScoreRequest,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    chat_logprobs,
    chat_response,
    completion_logprobs,
    completion_response,
    error_body,
    new_id,
    usage,
)
from deployments.router import UNAVAILABLE

log = logging.getLogger("ray.serve")
app = FastAPI(title="graphserve", docs_url=None, redoc_url=None)
ROUTES = frozenset({"/health", "/v1/models", "/v1/chat/completions", "/v1/completions",
                    "/v1/embeddings", "/v1/quality/score"})
app.add_middleware(RequestMetrics, routes=ROUTES)
Body = TypeVar("Body", bound=BaseModel)


def to_api_error(exc: BaseException) -> APIError:
    """Any exception as the client should see it; Ray wraps remote errors, so unwrap first."""
    if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded("the server is at capacity; retry shortly", retry_after_s=1)
    if isinstance(exc, UNAVAILABLE):
        return ServiceUnavailable(f"a model deployment is unavailable ({type(exc).__name__}); "
                                  "retry shortly", retry_after_s=5)
    log.exception("unexpected error", exc_info=exc)
    return APIError("internal error; the request was not completed")


def error_response(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    headers = {"retry-after": str(err.retry_after_s)} if err.retry_after_s else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


# Known failures get their own handlers: Starlette re-raises whatever reaches the catch-all
# `Exception` handler, and Serve's proxy may then replace our body with its own plain text.
for _known in {APIError, RayTaskError, *UNAVAILABLE}:
    app.add_exception_handler(_known, _error)
app.add_exception_handler(Exception, _error)  # the unexpected: a 500 with the OpenAI body


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}", kind),
                        status_code=exc.status_code)


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
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        message = first["msg"].removeprefix("Value error, ")
        raise BadRequest(f"{param or 'body'}: {message}", param=param or None) from None


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


@serve.deployment
@serve.ingress(app)
class Ingress:
    async def __init__(self, config: IngressConfig, embedder_config: EmbedderConfig,
                 router: DeploymentHandle, embedder: DeploymentHandle,
                 tiers: list[LLMConfig], router_name: str):
        self.config = config
        self.embedder_config = embedder_config
        self.tier_names = [t.name for t in tiers]
        # Fixed by the config, so known here: asking the router per request (or once, lazily)
        # would put a call outside the request's error handling (a burst showed it).
        self.model_ids = model_ids(tiers)
        self.router_name = router_name
        self.router = router
        self.embedder = embedder
        # Read from the environment, never from the YAML, so the key is not in version control.
        self.api_key = os.environ.get(config.api_key_env) or None
        # A fresh handle learns its deployment's state on first use, and that first call waits
        # forever on a deployment that failed to start: make it now, off the request path.
        self._handle_warmup = asyncio.create_task(self._warm(embedder))

    @staticmethod
    async def _warm(handle: DeploymentHandle) -> None:
        try:
            await asyncio.wait_for(handle.info.remote(), 60)
        except Exception as e:  # reported by /health; nothing to raise to
            log.warning("%s did not answer its first call: %s", handle.deployment_name,
                        type(e).__name__)

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.api_key.encode()):
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")

    async def _bounded(self, awaitable):
        """A downstream call with the request timeout; its failures become our API errors here,
        because Serve installs its own FastAPI handlers for BackPressureError and
        DeploymentUnavailableError, which would answer with a plain-text body."""
        try:
            return await asyncio.wait_for(awaitable, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"the request took longer than {self.config.request_timeout_s:.0f} s"
            ) from None
        except APIError:
            raise
        except Exception as e:
            raise to_api_error(e) from None

    # -- routes -----------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """Per deployment: the router's last probe (model, load time, uptime) and Serve's replicas.

        200 while at least one LLM tier can answer ("ok", or "degraded" when something is down or
        slow to answer its probe), 503 when none can.
        """
        probes, serve_status = await asyncio.gather(
            asyncio.wait_for(self.router.status.remote(), 5),
            asyncio.wait_for(asyncio.to_thread(serve.status), 5),
            return_exceptions=True,
        )
        if isinstance(probes, BaseException):
            probes = {}
            router = {"status": "unavailable", "error": type(probes).__name__}
        else:
            router = {"status": "ok"}
        deployments = {
            **{t: {"role": "llm", **probes.get(t, {"status": "unknown"})} for t in self.tier_names},
            self.embedder_config.name: {"role": "embedder",
                                        **probes.get(self.embedder_config.name, {"status": "unknown"})},
            self.router_name: {"role": "router", **router},
            self.config.name: {"role": "ingress", "status": "ok"},
        }
        if not isinstance(serve_status, BaseException):
            app_status = serve_status.applications.get(serve.get_replica_context().app_name)
            for name, overview in (app_status.deployments if app_status else {}).items():
                if name in deployments:
                    deployments[name]["serve_status"] = overview.status.value
                    deployments[name]["replicas"] = {
                        state.value if hasattr(state, "value") else str(state): count
                        for state, count in overview.replica_states.items()}
        llm_ok = any(deployments[t]["status"] in ("ok", "slow") for t in self.tier_names)
        all_ok = all(d["status"] == "ok" for d in deployments.values())
        status = "ok" if all_ok else "degraded" if llm_ok else "unavailable"
        return JSONResponse({"status": status, "deployments": deployments},
                            status_code=200 if llm_ok else 503)

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        ids = [*self.model_ids, self.embedder_config.model_id]
        return JSONResponse({"object": "list", "data": [
            {"id": i, "object": "model", "created": 0, "owned_by": "graphserve"} for i in ids
        ]})

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

    async def _generate(self, request: Request, body, chat: bool):
        if body.model not in self.model_ids:  # a 404 here spares the router a traceback
            raise ModelNotFound.named(body.model, self.model_ids)
        # Serve's proxy sets x-request-id (the client's, or a new one) and tags its logs with it.
        rid = request.headers.get("x-request-id") or new_id("chatcmpl" if chat else "cmpl")
        top = body.top_logprobs_asked()
        if body.stream:
            return await self._stream(rid, body, chat, top)
        result, report = await self._bounded(self.router.complete.remote(body, rid))
        make = chat_response if chat else completion_response
        # Serve's proxy puts x-request-id on every response; adding it here would duplicate it.
        headers = {"x-served-by": f"{result.tier}/{result.model_id}"}
        if report is not None:
            headers["x-quality-score"] = f"{report['score']:.4f}"
        return JSONResponse(make(rid, result, top, report), headers=headers)

    async def _stream(self, rid: str, body, chat: bool, top: int | None) -> StreamingResponse:
        events = self.router.options(stream=True).stream.remote(body, rid)
        # Wait for the first event before answering, so a failure is still a proper HTTP error.
        try:
            start = (await self._bounded(events.__anext__()))["start"]
        except BaseException:
            events.cancel()
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        created, model = int(time.time()), start["model"]

        def chunk(delta_text: str | None, logprobs, finish, extra=None, role=False) -> dict:
            if chat:
                delta = {"role": "assistant"} if role else {}
                if delta_text is not None:
                    delta["content"] = delta_text
                choice = {"index": 0, "delta": delta, "finish_reason": finish,
                          "logprobs": chat_logprobs(logprobs, top) if top is not None and logprobs else None}
            else:
                choice = {"index": 0, "text": delta_text or "", "finish_reason": finish,
                          "logprobs": (completion_logprobs(logprobs, top)
                                       if top is not None and logprobs else None)}
            out = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                   "created": created, "model": model, "choices": [choice]}
            return {**out, **(extra or {})}

        async def body_iter():
            last, report = None, None  # the last delta carries finish reason and token counts
            try:
                if chat:
                    yield sse(chunk("", None, None, role=True))
                async for event in events:
                    if "delta" in event:
                        last = event["delta"]
                        if last.text:
                            yield sse(chunk(last.text, last.logprobs, None))
                    elif "quality" in event:
                        report = {"quality": event["quality"]}
            except Exception as e:  # the status line is sent already: report the error in-band
                yield sse(to_api_error(e).body())
                yield sse("[DONE]")
                return
            # The quality report rides on the last chunk before [DONE].
            yield sse(chunk(None, None, last.finish_reason if last else "stop",
                            None if include_usage else report))
            if include_usage and last is not None:
                yield sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": created, "model": model, "choices": [],
                           "usage": usage(last.prompt_tokens, last.completion_tokens), **(report or {})})
            yield sse("[DONE]")

        headers = {"x-served-by": f"{start['tier']}/{start['model']}",
                   "cache-control": "no-cache"}
        return StreamingResponse(body_iter(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body = await read_json(request, EmbeddingRequest, self.config.max_body_bytes)
        if body.model != self.embedder_config.model_id:
            raise ModelNotFound.named(body.model, [self.embedder_config.model_id], "embedding model")
        vectors, tokens = await self._bounded(self.embedder.embed.remote(body.texts()))
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise BadRequest(f"this model returns {vectors.shape[1]} dimensions; "
                             "other sizes are not supported", param="dimensions")
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            encoded = vectors.astype(np.float64).tolist()
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    @app.post("/v1/quality/score")
    async def quality_score(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body = await read_json(request, QualityScoreRequest, self.config.max_body_bytes)
        if body.model is not None and body.model not in self.model_ids:
            raise ModelNotFound.named(body.model, self.model_ids)
        reports = await self._bounded(self.router.score_pairs.remote(body))
        return JSONResponse({"object": "list", "data": reports})
