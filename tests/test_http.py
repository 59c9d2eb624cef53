"""The HTTP edge both ingresses share, without Ray: reading a body, the route an application
mounted below the graph's prefix serves, and the route label its requests are counted under."""

import asyncio
import json

import pytest
from starlette.testclient import TestClient

from deployments import metrics
from deployments.protocol import (
    BadRequest,
    ChatCompletionRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from deployments.http import api_app, read_json


class Body:
    """What `read_json` reads of a starlette Request: headers and the body in chunks."""

    def __init__(self, raw: bytes, headers: dict | None = None, chunk: int = 7):
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.chunks = [raw[i:i + chunk] for i in range(0, len(raw), chunk)]

    async def stream(self):
        for c in self.chunks:
            yield c


def read(raw, limit=1024, **headers):
    return asyncio.run(read_json(Body(raw if isinstance(raw, bytes) else raw.encode(), headers),
                                 ChatCompletionRequest, limit))


def test_a_valid_body_is_read_in_chunks_and_validated_strictly():
    body = read(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    assert body.messages[0].text() == "hi"
    with pytest.raises(BadRequest) as e:  # "yes" is not a boolean in OpenAI's types
        read(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "stream": "yes"}))
    assert e.value.param == "stream"


@pytest.mark.parametrize("raw, headers, error, words", [
    (b"{", {}, BadRequest, "not valid JSON"),
    (b"\xff\xfe", {}, BadRequest, "UTF-8"),
    (b"[1, 2]", {}, BadRequest, "JSON object"),
    (b"{}", {"content-type": "text/plain"}, UnsupportedMediaType, "must be JSON"),
    (b"{}", {"content-length": "5000"}, PayloadTooLarge, "5000 bytes"),
    (b"{" + b" " * 2000 + b"}", {}, PayloadTooLarge, "over the limit"),
    (b'{"model": "m", "messages": []}', {}, BadRequest, "messages"),
])
def test_a_bad_body_is_a_clear_error_naming_what_is_wrong(raw, headers, error, words):
    with pytest.raises(error, match=words):
        read(raw, **headers)



@pytest.fixture
def counted(monkeypatch):
    seen = []
    monkeypatch.setattr(metrics, "inc", lambda name, value=1.0, **tags: seen.append(tags))
    monkeypatch.setattr(metrics, "observe", lambda *a, **k: None)
    return seen


@pytest.mark.parametrize("root", ["/v1/embeddings", "/degraded/v1/embeddings"])
def test_an_application_at_v1_embeddings_serves_that_exact_path_and_counts_it_by_name(root,
                                                                                  counted):
    app = api_app("t", frozenset({"/v1/embeddings"}), mount="/v1/embeddings")

    @app.post("/")
    async def embeddings():
        return {"ok": True}

    client = TestClient(app, root_path=root)
    assert client.post(root, follow_redirects=False).json() == {"ok": True}  # no redirect to "/"
    missing = client.post(f"{root}/nothing")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {
        "message", "type", "param", "code"}
    assert [c["route"] for c in counted] == ["/v1/embeddings", "other"]
    assert [c["status"] for c in counted] == ["200", "404"]


def test_the_router_at_the_root_counts_its_routes_by_path(counted):
    app = api_app("t", frozenset({"/v1/models"}))

    @app.get("/v1/models")
    async def models():
        return {}

    client = TestClient(app)
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/unknown").status_code == 404
    assert [c["route"] for c in counted] == ["/v1/models", "other"]
