"""The one failure policy: what a failed call says about the deployment it went to, and what the
client is answered. Every path (routes, the gate, the engine) maps exceptions through here; the
statuses themselves are the `APIError` classes of `protocol.py`.

| failure                                              | kind  | client answer              |
|------------------------------------------------------|-------|----------------------------|
| a full queue (Serve's BackPressureError, Overloaded) | busy  | 429, Retry-After 1         |
| no answer in time (asyncio.TimeoutError)             | slow  | 503 (504 for the request)  |
| no replica, a dead actor or engine                   | down  | 503, Retry-After 5         |
| the request's own fault (vLLM's checks)              | -     | 400                        |
| anything else (a bug)                                | -     | 500, logged                |
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from fastapi.responses import JSONResponse
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.protocol import (
    APIError,
    BadRequest,
    Overloaded,
    ServiceUnavailable,
    error_body,
)

log = logging.getLogger("ray.serve")

Kind = Literal["busy", "slow", "down"]

# Failures that mean "this deployment cannot answer now", as opposed to "this request is bad".
UNAVAILABLE = (
    DeploymentUnavailableError, ReplicaUnavailableError, BackPressureError, RayActorError,
    ActorDiedError, ActorUnavailableError, ServiceUnavailable, asyncio.TimeoutError,
)

# What Serve itself answers when a deployment's queue is full and the request never reaches our
# code: the same "busy, retry in 1 s" as our own Overloaded, not Serve's default bare 503 (its
# body made ours by proxy_errors.py).
SERVE_BACKPRESSURE = {"status_code": Overloaded.status, "retry_after_s": Overloaded.retry_after_s}


def unwrapped(exc: BaseException) -> BaseException:
    """The error a remote call raised: Ray wraps it in a RayTaskError."""
    if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        return exc.cause
    return exc


def failure(exc: BaseException) -> Kind | None:
    """What a failed call says about its deployment. Busy: its queue is full. Slow: it did not
    answer in time (not down: under a burst a call waits behind hundreds, and a replica that
    really hangs fails Serve's health check). Down: no replica, a dead actor or engine. None: the
    request itself failed, or a bug."""
    exc = unwrapped(exc)
    if isinstance(exc, (BackPressureError, Overloaded)):
        return "busy"
    if isinstance(exc, asyncio.TimeoutError):
        return "slow"
    if isinstance(exc, UNAVAILABLE):
        return "down"
    return None


def api_error(exc: BaseException) -> APIError:
    """Any exception as the client should see it."""
    exc = unwrapped(exc)
    if isinstance(exc, APIError):
        return exc
    kind = failure(exc)
    if kind == "busy":
        return Overloaded("the server is at capacity; retry shortly")
    if kind is not None:
        return ServiceUnavailable(f"a model deployment is unavailable ({type(exc).__name__}); "
                                  "retry shortly")
    log.exception("unexpected error", exc_info=exc)
    return APIError("internal error; the request was not completed")


def error_response(exc: BaseException, method: str = "", path: str = "") -> JSONResponse:
    """The HTTP answer to any failure: status, OpenAI error body, Retry-After where it helps."""
    if isinstance(exc, StarletteHTTPException):  # routing: no such path, method not allowed
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{method} {path}: {exc.detail}", kind),
                            status_code=exc.status_code)
    err = api_error(exc)
    headers = {"retry-after": str(err.retry_after_s)} if err.retry_after_s else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def engine_error(exc: BaseException, tier: str) -> BaseException:
    """A vLLM failure as ours: a dead engine is down (503), vLLM's checks of a request are the
    request's fault (400, as `vllm serve` says); anything else passes unchanged."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return ServiceUnavailable(f"LLM tier {tier!r}: engine is dead")
    if isinstance(exc, (VLLMClientError, ValueError)):
        return BadRequest(str(exc))
    return exc


class TierUnavailable(Exception):
    """A tier could not take this attempt: down (no replica, replica died, timed out) or busy
    (its queue is full)."""

    def __init__(self, tier: str, busy: bool = False):
        super().__init__(tier)
        self.busy = busy


def no_tier_error(some_busy: bool) -> APIError:
    """The answer when no tier could take a request: busy when one is only full (retrying soon
    will work), down when every tier is."""
    if some_busy:
        return Overloaded("every LLM tier is at capacity; retry shortly")
    return ServiceUnavailable("no LLM tier is available to answer; try again shortly",
                              code="llm_unavailable")
