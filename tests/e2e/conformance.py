"""Differential conformance: the same table of requests goes to the graph and to `vllm serve`
(same converted SmolLM2 weights, same engine settings, the gate off), and what a client can see
of each answer is compared: status, response shape (validated with the `openai` SDK's own types),
texts at temperature 0, finish reasons, usage, logprobs shapes and tokens, the stream's framing.

`tests/e2e/test_conformance.py` runs it against a `vllm serve` it starts; by hand:

    python -m tests.e2e.conformance --graph http://127.0.0.1:8000 --vllm http://127.0.0.1:8100

Every row must come out equal, or be listed in `DELIBERATE` with the reason (docs/compatibility.md,
"Differences from vLLM's server", says the same).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

MODEL = "smollm2-135m-instruct"
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
QUESTION = "What is the capital of France?"
GATE_OFF = {"quality": {"enabled": False}}  # added to what the graph is sent, never to vLLM

# JSON schema for the structured-output rows.
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                               "country": {"type": "string"}},
               "required": ["city", "country"], "additionalProperties": False}


@dataclass
class Row:
    name: str
    path: str
    body: Any  # a dict sent as JSON, or bytes sent as they are
    texts: bool = True  # compare texts (greedy or seeded); False: sampled, shapes only

    def sent(self, graph: bool) -> tuple[bytes, dict]:
        if isinstance(self.body, bytes):
            return self.body, {"content-type": "application/json"}
        body = {**self.body, **GATE_OFF} if graph and isinstance(self.body, dict) else self.body
        return json.dumps(body).encode(), {"content-type": "application/json"}


def chat(name: str, messages: list | None = None, texts: bool = True, **fields) -> Row:
    body = {"model": MODEL, "messages": USER if messages is None else messages,
            "temperature": 0, "max_tokens": 24, **fields}
    return Row(name, CHAT, {k: v for k, v in body.items() if v is not OMIT}, texts)


def text(name: str, prompt: Any = "The capital of France is", texts: bool = True, **fields) -> Row:
    body = {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 16, **fields}
    return Row(name, TEXT, {k: v for k, v in body.items() if v is not OMIT}, texts)


OMIT = object()  # a field the row leaves out of the body
USER = [{"role": "user", "content": QUESTION}]
STREAM = {"stream": True}
USAGE = {"stream": True, "stream_options": {"include_usage": True}}

ROWS: list[Row] = [
    # -- chat, valid -------------------------------------------------------------------------
    chat("chat.basic"),
    chat("chat.system", [{"role": "system", "content": "Answer in one word."}, *USER]),
    chat("chat.multi_turn", [*USER, {"role": "assistant", "content": "Paris."},
                             {"role": "user", "content": "And of Italy?"}]),
    chat("chat.developer_role", [{"role": "developer", "content": "Be brief."}, *USER]),
    chat("chat.text_parts", [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]),
    chat("chat.name_field", [{"role": "user", "content": QUESTION, "name": "ana"}]),
    chat("chat.empty_content", [{"role": "user", "content": ""}]),
    chat("chat.unicode", [{"role": "user", "content": "Quelle est la capitale de l'Allemagne ? 🇩🇪"}]),
    chat("chat.max_tokens_1", max_tokens=1),
    chat("chat.length", max_tokens=3),
    chat("chat.max_completion_tokens", max_tokens=OMIT, max_completion_tokens=5),
    chat("chat.both_max_fields", max_tokens=20, max_completion_tokens=4),
    chat("chat.no_max_tokens", max_tokens=OMIT),
    chat("chat.stop_string", stop="France"),
    chat("chat.stop_list", stop=["Paris", "capital"]),
    chat("chat.stop_unmatched", stop=["zzzz"]),
    chat("chat.stop_five", stop=["a1", "b2", "c3", "d4", "e5"]),
    chat("chat.n2_greedy", n=2),
    chat("chat.n3_seeded", n=3, temperature=1.0, seed=7),
    chat("chat.seeded", temperature=0.9, seed=1234),
    chat("chat.sampled", temperature=1.0, texts=False),
    chat("chat.top_p", temperature=0.8, top_p=0.5, seed=3),
    chat("chat.logprobs", logprobs=True),
    chat("chat.top_logprobs_3", logprobs=True, top_logprobs=3),
    chat("chat.top_logprobs_0", logprobs=True, top_logprobs=0),
    chat("chat.logprobs_false", logprobs=False),
    chat("chat.presence_penalty", presence_penalty=1.5, max_tokens=40,
         messages=[{"role": "user", "content": "List ten fruits."}]),
    chat("chat.frequency_penalty", frequency_penalty=1.5, max_tokens=40,
         messages=[{"role": "user", "content": "List ten fruits."}]),
    chat("chat.logit_bias", logit_bias={"7042": -100, "12719": 5}),
    chat("chat.json_object", response_format={"type": "json_object"}, max_tokens=40),
    chat("chat.json_schema", max_tokens=40,
         response_format={"type": "json_schema",
                          "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}),
    chat("chat.response_format_text", response_format={"type": "text"}),
    chat("chat.user_field", user="user-123"),
    chat("chat.metadata_field", metadata={"team": "a"}),
    chat("chat.unknown_field", frobnicate=True),
    chat("chat.top_k_1", temperature=1.0, top_k=1),
    chat("chat.repetition_penalty", repetition_penalty=1.3, max_tokens=40,
         messages=[{"role": "user", "content": "List ten fruits."}]),
    chat("chat.min_tokens", min_tokens=20, max_tokens=30),
    chat("chat.seed_alone", temperature=OMIT, seed=5),
    chat("chat.default_sampling", temperature=OMIT, texts=False),
    chat("chat.no_model", model=OMIT),
    # -- chat, streamed ----------------------------------------------------------------------
    chat("chat.stream", **STREAM),
    chat("chat.stream_usage", **USAGE),
    chat("chat.stream_usage_false", stream=True, stream_options={"include_usage": False}),
    chat("chat.stream_logprobs", logprobs=True, top_logprobs=2, **USAGE),
    chat("chat.stream_n2", n=2, temperature=1.0, seed=5, **USAGE),
    chat("chat.stream_n2_greedy", n=2, **STREAM),
    chat("chat.stream_stop", stop=["Paris"], **STREAM),
    chat("chat.stream_max_tokens_1", max_tokens=1, **USAGE),
    chat("chat.stream_length", max_tokens=3, **STREAM),
    chat("chat.stream_json_object", response_format={"type": "json_object"}, max_tokens=40,
         **STREAM),
    chat("chat.stream_options_without_stream", stream_options={"include_usage": True}),
    # -- chat, invalid -----------------------------------------------------------------------
    Row("chat.no_messages", CHAT, {"model": MODEL, "max_tokens": 4}),
    chat("chat.empty_messages", []),
    Row("chat.messages_not_list", CHAT, {"model": MODEL, "messages": "hi", "max_tokens": 4}),
    chat("chat.unknown_role", [{"role": "wizard", "content": "hi"}]),
    chat("chat.no_content", [{"role": "user"}]),
    chat("chat.image_part", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
    chat("chat.temperature_negative", temperature=-1),
    chat("chat.temperature_3", temperature=3, texts=False),
    chat("chat.top_p_0", top_p=0),
    chat("chat.top_p_1_5", top_p=1.5),
    chat("chat.max_tokens_0", max_tokens=0),
    chat("chat.max_tokens_negative", max_tokens=-5),
    chat("chat.max_tokens_over_context", max_tokens=5000),
    chat("chat.n_0", n=0),
    chat("chat.top_logprobs_25", logprobs=True, top_logprobs=25),
    chat("chat.top_logprobs_without_logprobs", top_logprobs=2),
    chat("chat.presence_penalty_3", presence_penalty=3),
    chat("chat.frequency_penalty_minus_3", frequency_penalty=-3),
    chat("chat.unknown_model", model="no-such-model"),
    chat("chat.model_number", model=7),
    chat("chat.stream_string", stream="yes"),
    chat("chat.json_schema_missing", response_format={"type": "json_schema"}),
    chat("chat.response_format_unknown", response_format={"type": "yaml"}),
    chat("chat.logit_bias_bad_key", logit_bias={"not-a-token": 1}),
    chat("chat.logit_bias_200", logit_bias={"7042": 200}),
    chat("chat.prompt_over_context", [{"role": "user", "content": "word " * 3000}]),
    chat("chat.seed_string", seed="7"),
    chat("chat.content_null", [{"role": "user", "content": None}]),
    Row("chat.not_json", CHAT, b"{not json"),
    Row("chat.json_array", CHAT, b"[1, 2]"),
    # -- text completions, valid -------------------------------------------------------------
    text("text.basic"),
    text("text.list_of_one", ["The capital of France is"]),
    text("text.list_of_two", ["The capital of France is", "The capital of Italy is"]),
    text("text.list_n2", ["The capital of France is", "One plus one is"], n=2, temperature=1.0,
         seed=21),
    text("text.n2_seeded", n=2, temperature=1.0, seed=11),
    text("text.logprobs_2", logprobs=2),
    text("text.logprobs_0", logprobs=0),
    text("text.max_tokens_1", max_tokens=1),
    text("text.stop", stop=["."]),
    text("text.no_max_tokens", max_tokens=OMIT),
    text("text.seeded", temperature=0.9, seed=99),
    text("text.json_object", "A JSON object describing Paris:",
         response_format={"type": "json_object"}, max_tokens=40),
    text("text.stream", **STREAM),
    text("text.stream_usage", **USAGE),
    text("text.stream_logprobs", logprobs=1, **USAGE),
    text("text.stream_list_of_two", ["The capital of France is", "The capital of Italy is"],
         **USAGE),
    text("text.stream_n2", n=2, temperature=1.0, seed=8, **USAGE),
    text("text.stream_list_n2", ["The capital of France is", "One plus one is"], n=2,
         temperature=1.0, seed=13, logprobs=1, **USAGE),
    text("text.echo", echo=True),
    text("text.token_ids", [504, 3575, 282, 4649, 314]),
    text("text.suffix", suffix=" and that is all."),
    # -- text completions, invalid -----------------------------------------------------------
    text("text.empty_prompt", ""),
    Row("text.no_prompt", TEXT, {"model": MODEL, "max_tokens": 4}),
    text("text.empty_list", []),
    text("text.logprobs_6", logprobs=6),
    text("text.max_tokens_over_context", max_tokens=5000),
    text("text.unknown_model", model="no-such-model"),
    text("text.prompt_number", 42),
    # -- models ------------------------------------------------------------------------------
    Row("models.list", "/v1/models", None),
]

# Rows whose outcome differs from vLLM's on purpose, and why (docs/compatibility.md lists them too).
DELIBERATE: dict[str, str] = {
    "chat.unknown_role": "400: OpenAI's roles only (system, developer, user, assistant, tool); "
                         "vLLM hands any role to the chat template",
    "chat.no_content": "400: a user turn without content is refused, as OpenAI does; vLLM "
                       "renders it as empty",
    "chat.stream_string": "400: JSON types as OpenAI types them (\"yes\" is not a boolean); "
                          "vLLM coerces",
    "chat.seed_string": "400: JSON types as OpenAI types them (\"7\" is not an integer); "
                        "vLLM coerces",
    "text.echo": "400: echo is not supported (the answer the gate scores would carry the "
                 "prompt; vLLM echoes it, with prompt logprobs when asked)",
    "text.token_ids": "400: prompts are text (the gate's relevance signal reads them); vLLM "
                      "also takes token ids",
    "models.list": "the embedding model is listed too: the graph serves /v1/embeddings",
}


# ---------------------------------------------------------------------------------------------
# What a client sees of one answer
# ---------------------------------------------------------------------------------------------


def sdk_check(model, body: dict) -> str | None:
    """None when the `openai` SDK's type accepts `body`, else its first complaint."""
    try:
        model.model_validate(body)
    except Exception as e:  # pydantic's ValidationError: the shape is not OpenAI's
        return str(e).splitlines()[0]
    return None


def logprob_view(logprobs: dict | None, chat: bool) -> Any:
    if logprobs is None:
        return None
    if chat:
        return [(t["token"], len(t["top_logprobs"])) for t in logprobs["content"] or []]
    return [(tok, len(top or {})) for tok, top in zip(logprobs["tokens"],
                                                      logprobs["top_logprobs"] or [])]


def answer_view(body: dict, chat: bool) -> dict:
    """A whole answer as a client compares it: per choice, text, finish reason, logprobs."""
    choices = sorted(body.get("choices", []), key=lambda c: c["index"])
    return {
        "sdk": sdk_check(ChatCompletion if chat else Completion, body),
        "object": body.get("object"),
        "model": body.get("model"),
        "choices": [{"index": c["index"],
                     "text": c["message"]["content"] if chat else c["text"],
                     "finish_reason": c["finish_reason"],
                     "logprobs": logprob_view(c.get("logprobs"), chat)} for c in choices],
        "usage": usage_view(body.get("usage")),
    }


def usage_view(usage: dict | None) -> dict | None:
    """The counts; vLLM adds `*_details: null`, which no client reads."""
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: usage.get(k) for k in keys} if usage else usage


def stream_view(lines: list[str], chat: bool) -> dict:
    """A stream as a client reads it: each choice put back together, where the role, the finish
    reasons and the usage came, how it ended."""
    events, done, errors = [], False, []
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            done = True
            continue
        event = json.loads(data)
        (errors if "error" in event else events).append(event)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    logprobs: dict[int, list] = {}
    roles = sorted(c["index"] for e in events for c in e["choices"]
                   if chat and c.get("delta", {}).get("role") == "assistant")
    usage_chunks = [e["usage"] for e in events if e.get("usage")]
    for e in events:
        for c in e["choices"]:
            i = c["index"]
            piece = (c.get("delta", {}).get("content") if chat else c.get("text")) or ""
            texts[i] = texts.get(i, "") + piece
            if c.get("finish_reason"):
                finish[i] = c["finish_reason"]
            if c.get("logprobs"):
                logprobs.setdefault(i, []).extend(logprob_view(c["logprobs"], chat))
    return {
        "sdk": next(filter(None, (sdk_check(ChatCompletionChunk, e) for e in events)), None)
        if chat else None,  # the SDK types no text-completion chunk (its finish_reason is never null)
        "objects": sorted({e.get("object") for e in events}),
        "texts": texts, "finish_reasons": finish, "logprobs": logprobs,
        "role_chunks": roles,  # a chat opens each choice with the assistant's role
        "usage": usage_view(usage_chunks[-1]) if usage_chunks else None,
        "usage_chunks": len(usage_chunks),
        "usage_chunk_has_no_choices": all(not e["choices"] for e in events if e.get("usage")),
        "errors": [e["error"].get("type") for e in errors],
        "done": done,
    }


@dataclass
class Seen:
    status: int
    view: dict = field(default_factory=dict)
    error: dict | None = None  # the error body as sent


def observe(http: httpx.Client, base: str, row: Row, graph: bool) -> Seen:
    chat_ = row.path == CHAT
    if row.body is None:
        r = http.get(base + row.path)
        return Seen(r.status_code, {"ids": sorted(m["id"] for m in r.json()["data"])}
                    if r.status_code == 200 else {})
    content, headers = row.sent(graph)
    with http.stream("POST", base + row.path, content=content, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            try:
                return Seen(r.status_code, error=r.json())
            except ValueError:
                return Seen(r.status_code, error={"raw": r.text[:200]})
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            return Seen(200, stream_view(list(r.iter_lines()), chat_))
        r.read()
        return Seen(200, answer_view(r.json(), chat_))


def error_shape(error: dict | None) -> str | None:
    """None when `error` is OpenAI's error body, else what is wrong with it."""
    inner = (error or {}).get("error")
    if not isinstance(inner, dict):
        return "no error object"
    missing = {"message", "type", "param", "code"} - inner.keys()
    return f"error body lacks {sorted(missing)}" if missing else None


def differences(row: Row, ours: Seen, theirs: Seen) -> list[str]:
    """What a client would see differ between the graph's answer and vLLM's."""
    if ours.status != theirs.status:
        return [f"status {ours.status} vs vLLM {theirs.status}"]
    if ours.status != 200:
        return []  # both refused: error bodies differ by design (docs/compatibility.md), statuses agree
    out = []
    for key in sorted(set(ours.view) | set(theirs.view)):
        a, b = ours.view.get(key), theirs.view.get(key)
        if key == "model":
            continue
        if not row.texts:
            a, b = strip_texts(key, a), strip_texts(key, b)
        if a != b:
            out.append(f"{key}: {short(a)} vs vLLM {short(b)}")
    return out


def strip_texts(key: str, value: Any) -> Any:
    """A sampled row's view without what sampling decides (texts, tokens, lengths)."""
    if key == "choices":
        return [{"index": c["index"],
                 "logprobs": None if c["logprobs"] is None else "present"} for c in value]
    if key in ("texts", "finish_reasons"):
        return sorted(value)
    if key == "logprobs":
        return sorted(value) if isinstance(value, dict) else value
    if key == "usage" and value:
        return {k: v for k, v in value.items() if k == "prompt_tokens"}
    return value


def short(value: Any, limit: int = 160) -> str:
    text_ = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text_ if len(text_) <= limit else text_[:limit] + "..."


@dataclass
class Outcome:
    row: Row
    ours: Seen
    theirs: Seen
    diffs: list[str]
    bad_error_body: str | None  # ours must always be OpenAI's shape


def run(graph: str, vllm: str, rows: list[Row] = ROWS, progress=print) -> list[Outcome]:
    """Each row to both servers, one request at a time (so each engine batches alone and greedy
    texts cannot differ by batch composition)."""
    outcomes = []
    with httpx.Client(timeout=120) as http:
        for i, row in enumerate(rows, 1):
            ours, theirs = observe(http, graph, row, True), observe(http, vllm, row, False)
            outcome = Outcome(row, ours, theirs, differences(row, ours, theirs),
                              error_shape(ours.error) if ours.status != 200 else None)
            outcomes.append(outcome)
            mark = "=" if not outcome.diffs else "D" if row.name in DELIBERATE else "X"
            progress(f"[{i:3d}/{len(rows)}] {mark} {row.name}: {ours.status}/{theirs.status}"
                     + "".join(f"\n        {d}" for d in outcome.diffs))
    return outcomes


def summary(outcomes: list[Outcome]) -> dict:
    equal = [o.row.name for o in outcomes if not o.diffs]
    deliberate = [o.row.name for o in outcomes if o.diffs and o.row.name in DELIBERATE]
    unexplained = [o.row.name for o in outcomes if o.diffs and o.row.name not in DELIBERATE]
    stale = [o.row.name for o in outcomes if not o.diffs and o.row.name in DELIBERATE]
    return {"rows": len(outcomes), "equal": len(equal), "deliberate": deliberate,
            "unexplained": unexplained, "stale_deliberate": stale,
            "bad_error_bodies": [o.row.name for o in outcomes if o.bad_error_body]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default="http://127.0.0.1:8000")
    parser.add_argument("--vllm", default="http://127.0.0.1:8100")
    parser.add_argument("--only", help="rows whose name contains this")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or args.only in r.name]
    print(json.dumps(summary(run(args.graph, args.vllm, rows)), indent=1))


if __name__ == "__main__":
    main()
