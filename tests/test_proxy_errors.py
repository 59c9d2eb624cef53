"""The middleware Serve's Python proxy runs (cluster/serve.env): its own plain-text error answers
get the OpenAI error body; everything else passes untouched."""

import pytest
from ray.serve._private.http_util import validate_http_proxy_callback_return
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deployments.proxy_errors import OpenAIErrorBodies, middlewares

FAILED = "Deployment(name='embedder', app='embeddings') is unavailable because it failed to deploy."


async def failed(request):
    return PlainTextResponse(FAILED, status_code=503)


async def full(request):
    return PlainTextResponse("Request dropped due to backpressure", status_code=429,
                             headers={"retry-after": "1"})


async def timeout(request):
    return PlainTextResponse("Request timed out", status_code=408)


async def ours(request):
    return JSONResponse({"error": {"message": "m", "type": "t", "param": None, "code": None}},
                        status_code=503, headers={"retry-after": "5"})


async def ok(request):
    return PlainTextResponse("fine")


async def chunked(request):
    async def parts():
        yield b"no route "
        yield b"here"
    return StreamingResponse(parts(), status_code=404, media_type="text/plain")


client = TestClient(Starlette(routes=[Route(f"/{f.__name__}", f) for f in
                                      (failed, full, timeout, ours, ok, chunked)],
                              middleware=[Middleware(OpenAIErrorBodies)]))
FIELDS = {"message", "type", "param", "code"}


def test_a_failed_deployment_is_a_503_with_the_openai_body_and_retry_after():
    r = client.get("/failed")
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    assert set(r.json()["error"]) == FIELDS and r.json()["error"]["message"] == FAILED
    assert r.json()["error"]["type"] == "service_unavailable" and int(r.headers["retry-after"]) > 0
    assert int(r.headers["content-length"]) == len(r.content)


@pytest.mark.parametrize("path,status,kind,retry", [
    ("/full", 429, "rate_limit_error", "1"), ("/timeout", 408, "timeout", None),
    ("/chunked", 404, "not_found", None)])
def test_serves_other_plain_text_errors_keep_their_status(path, status, kind, retry):
    r = client.get(path)
    assert r.status_code == status and set(r.json()["error"]) == FIELDS
    assert r.json()["error"]["type"] == kind and r.headers.get("retry-after") == retry
    assert len(r.headers.get_list("retry-after")) <= 1  # Serve's own header is not doubled


def test_json_errors_and_successes_pass_untouched():
    r = client.get("/ours")
    assert r.status_code == 503 and r.json()["error"]["message"] == "m"
    assert r.headers["retry-after"] == "5"
    r = client.get("/ok")
    assert r.status_code == 200 and r.text == "fine"
    assert client.get("/chunked").json()["error"]["message"] == "no route here"


def test_serve_accepts_the_callback():
    assert len(validate_http_proxy_callback_return(middlewares())) == 1
