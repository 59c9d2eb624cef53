"""The HTTP edge both ingress deployments share (the router, and the embedder at `/v1/embeddings`):
one FastAPI app factory with the metrics middleware and the OpenAI error handlers, the API key
check, a size-limited strict body reader and a downstream call bounded by a timeout and by the
client's leaving. Whichever deployment a path reaches, its auth, limits and errors are the same.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray.exceptions import RayTaskError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.failures import UNAVAILABLE, api_error, error_response
from deployments.metrics import RequestMetrics
from deployments.protocol import (
    APIError,
    BadRequest,
    ClientClosedRequest,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)

Body = TypeVar("Body", bound=BaseModel)


async def _error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request.method, request.url.path)


class PrefixAsRoot:
    """ASGI middleware: Serve mounts an application at its route prefix (the ASGI root_path), and
    a request for the prefix itself (POST /v1/embeddings) has an empty route path, which no
    FastAPI route can name; it is routed as "/"."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] and scope["path"] == scope.get("root_path"):
            scope = {**scope, "path": scope["path"] + "/"}
        await self.app(scope, receive, send)


def api_app(title: str, routes: frozenset[str], mount: str = "") -> FastAPI:
    """A FastAPI app whose every failure is an OpenAI error body and whose requests are counted
    by route (`routes`: the paths it serves, as the client writes them). `mount`: the route prefix
    of its application below the graph's (the embedder's: /v1/embeddings), served at "/"."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None)
    app.add_middleware(RequestMetrics, routes=routes, mount=mount)
    if mount:
        app.add_middleware(PrefixAsRoot)
    # Known failures get their own handlers: Starlette re-raises whatever reaches the catch-all
    # `Exception` handler, and Serve may then replace our body with its own plain text.
    for known in {APIError, RayTaskError, StarletteHTTPException, *UNAVAILABLE}:
        app.add_exception_handler(known, _error)
    app.add_exception_handler(Exception, _error)  # the unexpected: a 500 with the OpenAI body
    return app


def authorize(request: Request, api_key: str | None) -> None:
    """Bearer-token check in constant time; no key configured: every caller is let in."""
    if api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             api_key.encode()):
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")


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


async def bounded(awaitable: Awaitable, timeout_s: float, request: Request | None = None):
    """A call with the request timeout; its failures become our API errors here, because Serve
    installs its own FastAPI handlers for BackPressureError and DeploymentUnavailableError, which
    would answer with a plain-text body. With `request`, a client that goes away cancels the call
    (and so the engine's work): HTTP served by the replica itself (direct ingress) does not cancel
    a handler when its client disconnects."""
    work = asyncio.ensure_future(asyncio.wait_for(awaitable, timeout_s))
    gone = asyncio.ensure_future(client_gone(request)) if request is not None else None
    try:
        if gone is not None:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                raise ClientClosedRequest("the client closed the connection")
        return await work
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the request took longer than {timeout_s:.0f} s") from None
    except APIError:
        raise
    except Exception as e:
        raise api_error(e) from None
    finally:
        for task in (work, gone):
            if task is not None:
                task.cancel()


def as_json(body: BaseModel, headers: dict[str, str] | None = None) -> Response:
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)
