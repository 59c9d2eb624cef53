"""Malformed requests: each gets a 4xx with the OpenAI error body, none a 5xx, and the server stays
healthy. One table, run against the real graph."""

import json

import pytest

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
MSG = [{"role": "user", "content": "Hi"}]
C, T, E, Q = "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/quality/score"


def chat(**fields):
    return {"model": CHAT, "messages": MSG, "max_tokens": 4, **fields}


def drop(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


# (id, path, body: dict | bytes, headers, expected status, the `param` or a word of the message)
CASES = [
    ("not-json", C, b"{oops", {}, 400, "JSON"),
    ("json-array", C, b"[1, 2]", {}, 400, "object"),
    ("json-string", C, b'"hello"', {}, 400, "object"),
    ("json-null", C, b"null", {}, 400, "object"),
    ("empty-body", C, b"", {}, 400, "JSON"),
    ("invalid-utf8", C, b'{"model": "\xff\xfe"}', {}, 400, "UTF-8"),
    ("wrong-content-type", C, b"model=x", {"content-type": "text/plain"}, 415, "JSON"),
    ("body-over-limit", C, b'{"x": "' + b"a" * (5 * 1024 * 1024) + b'"}', {}, 413, "limit"),
    ("missing-messages", C, drop(chat(), "messages"), {}, 400, "messages"),
    ("empty-messages", C, chat(messages=[]), {}, 400, "messages"),
    ("messages-not-list", C, chat(messages="hi"), {}, 400, "messages"),
    ("message-without-role", C, chat(messages=[{"content": "hi"}]), {}, 400, "messages[0].role"),
    ("bad-role", C, chat(messages=[{"role": "wizard", "content": "hi"}]), {}, 400, "messages[0].role"),
    ("content-wrong-type", C, chat(messages=[{"role": "user", "content": 42}]), {}, 400, "messages[0].content"),
    ("image-part", C, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), {}, 400, "text content"),
    ("empty-model", C, chat(model=""), {}, 400, "model"),
    ("model-wrong-type", C, chat(model=7), {}, 400, "model"),
    ("unknown-model", C, chat(model="gpt-9"), {}, 404, "model"),
    ("max-tokens-zero", C, chat(max_tokens=0), {}, 400, "max_tokens"),
    ("max-tokens-negative", C, chat(max_tokens=-5), {}, 400, "max_tokens"),
    ("max-tokens-over-cap", C, chat(max_tokens=100_000), {}, 400, "max_tokens"),
    ("max-tokens-not-a-number", C, chat(max_tokens="ten"), {}, 400, "max_tokens"),
    ("prompt-over-context", C, chat(messages=[{"role": "user", "content": "hello " * 3000}]), {}, 400, "2048"),
    ("prompt-plus-max-tokens-over-context", C, chat(messages=[{"role": "user", "content": "hello " * 1500}], max_tokens=1000), {}, 400, "2048"),
    ("temperature-negative", C, chat(temperature=-0.5), {}, 400, "temperature"),
    ("temperature-too-high", C, chat(temperature=5), {}, 400, "temperature"),
    ("top-p-zero", C, chat(top_p=0), {}, 400, "top_p"),
    ("n-zero", C, chat(n=0), {}, 400, "n"),
    ("n-too-many", C, chat(n=17), {}, 400, "n"),
    ("n-greedy", C, chat(n=2, temperature=0), {}, 400, "greedy"),
    ("stream-options-without-stream", C, chat(stream_options={"include_usage": True}), {}, 400, "stream_options"),
    ("top-logprobs-without-logprobs", C, chat(top_logprobs=2), {}, 400, "top_logprobs"),
    ("logit-bias-not-a-token", C, chat(logit_bias={"Paris": 5}), {}, 400, "logit_bias"),
    ("logit-bias-out-of-vocab", C, chat(logit_bias={"99999999": 5}), {}, 400, "logit_bias"),
    ("response-format-unknown", C, chat(response_format={"type": "yaml"}), {}, 400, "response_format"),
    ("json-schema-missing", C, chat(response_format={"type": "json_schema"}), {}, 400, "response_format"),
    ("quality-unknown-tier", C, chat(quality={"tier": "nope"}), {}, 400, "quality.tier"),
    ("quality-too-many-samples", C, chat(quality={"samples": 99}), {}, 400, "quality.samples"),
    ("stream-wrong-type", C, chat(stream=[1]), {}, 400, "stream"),
    # Typed as OpenAI types them: a string is not a boolean nor a number, a float not an integer.
    ("stream-as-string", C, chat(stream="yes"), {}, 400, "stream"),
    ("max-tokens-as-string-number", C, chat(max_tokens="5"), {}, 400, "max_tokens"),
    ("max-tokens-as-float", C, chat(max_tokens=5.0), {}, 400, "max_tokens"),
    ("temperature-as-string", C, chat(temperature="0.5"), {}, 400, "temperature"),
    ("user-message-without-content", C, chat(messages=[{"role": "user"}]), {}, 400, "messages[0]"),
    ("user-message-null-content", C, chat(messages=[{"role": "user", "content": None}]), {}, 400, "messages[0]"),
    ("top-logprobs-too-many", C, chat(logprobs=True, top_logprobs=50), {}, 400, "top_logprobs"),
    ("too-many-stops", C, chat(stop=["a", "b", "c", "d", "e"]), {}, 400, "stop"),
    ("quality-threshold-over-1", C, chat(quality={"threshold": 2}), {}, 400, "quality.threshold"),
    ("quality-bad-gate-mode", C, chat(quality={"gate_mode": "maybe"}), {}, 400, "quality.gate_mode"),
    ("completion-missing-prompt", T, {"model": CHAT, "max_tokens": 4}, {}, 400, "prompt"),
    ("completion-empty-prompt-list", T, {"model": CHAT, "prompt": []}, {}, 400, "prompt"),
    ("completion-one-empty-prompt", T, {"model": CHAT, "prompt": ["a", ""]}, {}, 400, "prompt"),
    ("completion-suffix", T, {"model": CHAT, "prompt": "a", "suffix": "b"}, {}, 400, "suffix"),
    ("completion-empty-prompt", T, {"model": CHAT, "prompt": ""}, {}, 400, "prompt"),
    ("completion-echo", T, {"model": CHAT, "prompt": "a", "echo": True}, {}, 400, "echo"),
    ("completion-logprobs-too-many", T, {"model": CHAT, "prompt": "a", "logprobs": 21}, {}, 400, "logprobs"),
    ("embed-empty-string", E, {"model": EMBED, "input": ""}, {}, 400, "input"),
    ("embed-empty-list", E, {"model": EMBED, "input": []}, {}, 400, "input"),
    ("embed-wrong-type", E, {"model": EMBED, "input": 5}, {}, 400, "input"),
    ("embed-too-many-inputs", E, {"model": EMBED, "input": ["x"] * 2049}, {}, 400, "input"),
    ("embed-input-too-long", E, {"model": EMBED, "input": "x" * 40_000}, {}, 400, "input"),
    ("embed-unknown-model", E, {"model": "ada-9", "input": "x"}, {}, 404, "model"),
    ("embed-bad-dimensions", E, {"model": EMBED, "input": "x", "dimensions": 10}, {}, 400, "dimensions"),
    ("embed-bad-encoding", E, {"model": EMBED, "input": "x", "encoding_format": "xml"}, {}, 400, "encoding_format"),
    ("score-no-pairs", Q, {"pairs": []}, {}, 400, "pairs"),
    ("score-pair-without-prompt", Q, {"pairs": [{"answer": "x"}]}, {}, 400, "pairs[0].prompt"),
    ("score-samples-without-model", Q, {"samples": 2, "pairs": [{"prompt": "q", "answer": "a"}]}, {}, 400, "samples"),
    ("score-unknown-tier", Q, {"model": CHAT, "tier": "nope", "pairs": [{"prompt": "q", "answer": "a"}]}, {}, 400, "tier"),
    ("score-unknown-model", Q, {"model": "gpt-9", "pairs": [{"prompt": "q", "answer": "a"}]}, {}, 404, "model"),
    ("unknown-route", "/v1/nope", {}, {}, 404, "/v1/nope"),
]


@pytest.mark.parametrize("name,path,body,headers,status,hint", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_gets_a_clear_4xx(http, name, path, body, headers, status, hint):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json", **headers})
    else:
        r = http.post(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert hint in (error["param"] or "") or hint in error["message"], error


def test_wrong_method_is_405_with_the_error_body(http):
    r = http.get(C)
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_table_is_large_and_server_healthy_after(http):
    assert len(CASES) >= 40
    assert http.get("/health").json()["status"] == "ok"
    r = http.post(C, json=chat(messages=[{"role": "user", "content": "What is 2 + 2?"}]))
    assert r.status_code == 200 and json.loads(r.text)["choices"][0]["message"]["content"]
