"""The router's own request handling without Ray: reading a body, waiting on several calls."""

import asyncio
import json

import pytest

from deployments.protocol import (
    BadRequest,
    ChatCompletionRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from deployments.router import all_of, read_json


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


def test_all_of_cancels_the_rest_when_one_fails_and_lets_them_end_first():
    ended = []

    async def slow():
        try:
            await asyncio.sleep(30)
        finally:
            ended.append("slow")

    async def failing():
        await asyncio.sleep(0.01)
        raise ServiceUnavailable("tier down")

    async def run():
        try:
            await all_of([slow(), failing()])
        except ServiceUnavailable:
            return list(ended)  # what had ended when the failure reached the caller

    assert asyncio.run(run()) == ["slow"]
    assert asyncio.run(all_of(asyncio.sleep(0, result=i) for i in range(3))) == [0, 1, 2]
