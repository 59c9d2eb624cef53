"""Serve's own error answers, in the OpenAI error body.

Ray Serve's Python proxy answers some requests itself, before any code of ours runs, in plain
text: an application whose deployment failed to deploy (503), a full queue (429), no answer within
`request_timeout_s` (408), a path no application serves (404). On the HAProxy data path that
proxy is HAProxy's fallback when an application has no replica (the embeddings application down).
Serve adds the middlewares that `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` returns to every proxy
(cluster/serve.env names `deployments.proxy_errors:middlewares`): such an answer keeps its status
and gets the OpenAI error body, with a Retry-After where retrying helps. Answers that are already
JSON (ours, from the router or the embedder) pass through untouched.
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware

from deployments.protocol import (
    APIError,
    Overloaded,
    RequestTimeout,
    ServiceUnavailable,
    error_body,
)

# Serve's statuses as our error classes; any other status keeps Serve's text as the message.
BY_STATUS: dict[int, type[APIError]] = {429: Overloaded, 503: ServiceUnavailable,
                                        504: RequestTimeout}
KINDS = {404: "not_found", 408: "timeout"}


def openai_error(status: int, text: str) -> tuple[dict, dict[str, str]]:
    """The body and extra headers for a plain-text error answer of `status`."""
    message = text.strip() or f"HTTP {status}"
    if status in BY_STATUS:
        err = BY_STATUS[status](message)
        retry = {"retry-after": str(err.retry_after_s)} if err.retry_after_s else {}
        return err.body(), retry
    kind = KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")
    return error_body(message, kind, code=kind if status == 408 else None), {}


class OpenAIErrorBodies:
    """ASGI middleware: a 4xx/5xx answer in text/plain is re-sent as JSON with the same status."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict | None = None  # the start of a plain-text error, until its body is complete
        chunks: list[bytes] = []

        async def rewrite(message):
            nonlocal held
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(
                        b"text/plain"):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body, extra = openai_error(held["status"], b"".join(chunks).decode(errors="replace"))
                raw = json.dumps(body).encode()
                kept = [(k, v) for k, v in held.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length",
                                             b"transfer-encoding")]
                kept += [(b"content-type", b"application/json"),
                         (b"content-length", str(len(raw)).encode())]
                kept += [(k.encode(), v.encode()) for k, v in extra.items()
                         if k.encode() not in {h.lower() for h, _ in kept}]
                await send({**held, "headers": kept})
                await send({"type": "http.response.body", "body": raw, "more_body": False})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def middlewares() -> list[Middleware]:
    """Serve's proxy callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(OpenAIErrorBodies)]
