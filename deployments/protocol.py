"""OpenAI wire protocol and the messages deployments pass each other, in one place.

Requests are validated here so routes stay thin; a validation failure becomes a 400 whose
`param` names the offending field. Every client-visible failure is an `APIError` subclass that
knows its status and OpenAI error body; the router maps them in one handler.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class APIError(Exception):
    """A failure the client sees, as an HTTP status plus the OpenAI error body."""

    status = 500
    type = "server_error"
    code: str | None = None
    retry_after_s: int | None = None  # seconds, sent as Retry-After

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.retry_after_s = retry_after_s or self.retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def __reduce__(self):  # keeps the fields when Ray pickles it between replicas
        return (_rebuild_error, (type(self), self.message, self.param, self.code, self.retry_after_s))


def _rebuild_error(cls, message, param, code, retry_after_s):
    return cls(message, param=param, code=code, retry_after_s=retry_after_s)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BadRequest(APIError):
    status, type = 400, "invalid_request_error"


class Unauthorized(APIError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class ModelNotFound(APIError):
    status, type, code = 404, "invalid_request_error", "model_not_found"

    @classmethod
    def named(cls, model: str, available: list[str], kind: str = "model") -> ModelNotFound:
        return cls(f"the {kind} {model!r} does not exist; available: {', '.join(available)}",
                   param="model")


class PayloadTooLarge(APIError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnsupportedMediaType(APIError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class Overloaded(APIError):
    """Busy: a queue is full, so retrying soon will work (Serve's own backpressure answer too)."""

    status, type, code, retry_after_s = 429, "rate_limit_error", "overloaded", 1


class ServiceUnavailable(APIError):
    """Down: no replica can answer until one is replaced or loaded."""

    status, type, code, retry_after_s = 503, "service_unavailable", "service_unavailable", 5


class ClientClosedRequest(APIError):
    """The client went away before the answer (nginx's 499): its work was cancelled."""

    status, type, code = 499, "client_closed_request", "client_closed_request"


class RequestTimeout(APIError):
    status, type, code = 504, "timeout", "request_timeout"


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


class Lenient(BaseModel):
    """OpenAI clients send fields we do not use (user, metadata, ...): ignore them."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class QualityOverride(Lenient):
    """Per-request override of the quality gate, sent as `extra_body={"quality": {...}}`."""

    enabled: bool | None = None
    threshold: float | None = Field(None, ge=0, le=1)
    max_attempts: int | None = Field(None, ge=1, le=8, description="attempts over all tiers")
    gate_mode: Literal["report", "buffered"] | None = None
    tier: str | None = Field(None, description="start at this tier (by name), not the model's first")
    samples: int | None = Field(None, ge=0, le=16, description="consistency samples per answer")
    sample_below: float | None = Field(None, ge=0, le=1,
                                       description="draw samples only below this sample-free score")
    vote: bool | None = Field(None, description="serve the candidate the samples agree with most")


class StreamOptions(Lenient):
    include_usage: bool = False


class JsonSchemaFormat(Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Lenient):
    """`response_format`: free text, any JSON object, or JSON matching a schema (vLLM's
    structured outputs constrain the decoding; the quality report checks the answer)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self

    def structured(self) -> dict | None:
        """vLLM's StructuredOutputsParams fields for this format; None for free text."""
        if self.type == "json_object":
            return {"json_object": True}
        if self.type == "json_schema":
            return {"json": self.json_schema.json_schema or {}}
        return None


class SamplingFields(Lenient):
    """Fields shared by chat and text completions; None means "the tier's default". Besides
    OpenAI's, vLLM's own sampling extras that clients of `vllm serve` send (top_k, min_p,
    min_tokens, repetition_penalty)."""

    model: str | None = Field(None, min_length=1, description="None: the first tier's model")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16, description="choices per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    min_tokens: int = Field(0, ge=0)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    quality: QualityOverride | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        return self

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v):
        if v is not None and not all(key.lstrip("-").isdigit() for key in v):
            raise ValueError("logit_bias keys must be token ids (integers as strings)")
        return v

    def sampling(self) -> Sampling:
        """The engine's sampling for this request (vLLM's `to_sampling_params`): the fields both
        models share by name, plus the few that change shape. Unset fields stay None: the tier's
        defaults fill them (`Sampling.with_defaults`)."""
        shared = (set(Sampling.model_fields) & set(SamplingFields.model_fields)) - {"stop", "logit_bias"}
        return Sampling(
            **self.model_dump(include=shared, exclude_none=True),
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            logit_bias={int(k): b for k, b in self.logit_bias.items()} if self.logit_bias else None,
            structured=self.response_format.structured() if self.response_format else None,
            top_logprobs=self.top_logprobs_asked(),
        )

    def top_logprobs_asked(self) -> int | None:
        """Candidates per token the client wants back; None: no logprobs at all."""
        return None


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        # Only an assistant turn may have no content (OpenAI: it made tool calls instead).
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        """Text content; image/audio parts are refused rather than silently dropped."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        for i, m in enumerate(self.messages):
            try:
                m.text()
            except ValueError as e:
                raise ValueError(f"messages[{i}].content: {e}") from None
        if self.max_completion_tokens is not None:  # the newer field wins, as in vLLM
            self.max_tokens = self.max_completion_tokens
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def top_logprobs_asked(self) -> int | None:
        """Candidates per token the client wants back; None: no logprobs at all."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, description="OpenAI's default for completions")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        prompts = [v] if isinstance(v, str) else v
        if not prompts:
            raise ValueError("prompt must not be an empty list")
        if any(not p for p in prompts):
            raise ValueError("prompt must not be empty")
        return v

    @model_validator(mode="after")
    def _unsupported(self):
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix is not None:
            raise ValueError("suffix is not supported")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs


class EmbeddingRequest(Lenient):
    model: str = Field(min_length=1)
    input: str | list[str] = Field()
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v):
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("input must not be an empty list")
        if any(not s for s in items):
            raise ValueError("input strings must not be empty")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ScorePair(Lenient):
    prompt: str = Field(min_length=1)
    answer: str
    finish_reason: Literal["stop", "length"] = "stop"


class QualityScoreRequest(Lenient):
    """`POST /v1/quality/score`: score given answers without generating them.

    With `model`, the answer's likelihood under that tier's model (one prefill, no generation)
    gives the token signals; with `samples` too, that tier draws k answers to the prompt and the
    given answer's agreement with them is measured. Without `model`, only text signals.
    """

    pairs: list[ScorePair] = Field(min_length=1, max_length=256)
    threshold: float | None = Field(None, ge=0, le=1)
    model: str | None = Field(None, description="a tier's model id: score under that model")
    tier: str | None = Field(None, description="which of the tiers serving `model` (by name)")
    samples: int = Field(0, ge=0, le=16, description="consistency samples per pair (needs model)")

    @model_validator(mode="after")
    def _samples_need_model(self):
        if self.samples and self.model is None:
            raise ValueError("samples needs a model to draw them from")
        return self


# ---------------------------------------------------------------------------------------------
# Between deployments
# ---------------------------------------------------------------------------------------------


class Sampling(BaseModel):
    """Sampling for one attempt, named as vLLM's SamplingParams names it; None: the tier's
    default, filled in one place (`with_defaults`)."""

    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int = 0
    logit_bias: dict[int, float] | None = None
    structured: dict | None = None  # vLLM StructuredOutputsParams fields (response_format)
    top_logprobs: int | None = None  # top candidates per token the client asked for

    def with_defaults(self, defaults) -> Sampling:
        """Unset fields from a tier's `SamplingDefaults`, and vLLM's "off" for top_k and min_p.
        `max_tokens` stays as asked: unset, the engine fits the default into the context left
        (`llm.resolve_max_tokens`)."""
        return self.model_copy(update={
            "temperature": defaults.temperature if self.temperature is None else self.temperature,
            "top_p": defaults.top_p if self.top_p is None else self.top_p,
            "repetition_penalty": (defaults.repetition_penalty if self.repetition_penalty is None
                                   else self.repetition_penalty),
            "top_k": self.top_k or 0, "min_p": self.min_p or 0.0})

    def engine_fields(self) -> dict:
        """The fields vLLM's SamplingParams takes as they are (the rest change shape there)."""
        return self.model_dump(exclude={"max_tokens", "structured", "top_logprobs", "stop"})


class Job(BaseModel):
    """A chat or text completion as the gate sees it: made from the client's request at the edge
    (`api.py`), whatever the endpoint. The gate reads nothing of the OpenAI request but this."""

    request_id: str
    model: str
    messages: list[dict[str, str]] | None = None  # a chat, or
    prompt: str | None = None  # a raw completion prompt
    relevance_text: str  # what the answer should be relevant to: the last user turn, or the prompt
    sampling: Sampling
    quality: QualityOverride | None = None

    def prompt_fields(self) -> dict:
        """The prompt as a tier request carries it (`GenerationRequest`, `LikelihoodRequest`)."""
        return {"messages": self.messages} if self.messages is not None else {"prompt": self.prompt}


class GenerationRequest(BaseModel):
    """What the router asks an LLM tier for: chat messages or a raw prompt, plus sampling.

    `samples` extra answers are drawn at `sample_temperature` in the same engine, alongside the
    client's (vLLM parallel sampling, one request sharing the prompt's KV cache): the gate's
    consistency signal. `signal_top_k` candidates per token are kept for the entropy signal.
    """

    request_id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    sampling: Sampling
    samples: int = 0
    sample_temperature: float = 0.8
    signal_top_k: int = 0


class LikelihoodRequest(BaseModel):
    """How likely a tier's model finds a given answer to a prompt: one prefill, no generation."""

    request_id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    answer: str
    top_k: int = 0


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    top: list[tuple[str, float]] = Field(default_factory=list)


class Candidate(BaseModel):
    """One generated answer: a client's choice or a consistency sample."""

    text: str = ""
    logprobs: list[TokenLogprob] = Field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


class GenerationDelta(BaseModel):
    """One streamed step of one choice (`index`, of the request's `n`): new text and the
    logprobs of its tokens. The last delta carries the consistency samples, if any were asked
    for."""

    index: int = 0
    text: str = ""
    logprobs: list[TokenLogprob] = Field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # this choice's so far
    samples: list[Candidate] = Field(default_factory=list)


class StreamStart(BaseModel):
    """A gated stream's first event: which tier answers."""

    tier: str
    model: str


class StreamReport(BaseModel):
    """A gated stream's last event: the quality report of choice 0 (None: the gate is off)."""

    report: dict | None = None


class GenerationResult(BaseModel):
    """A tier's whole answer: the client's `n` choices, plus samples the client never sees."""

    choices: list[Candidate] = Field(min_length=1)
    samples: list[Candidate] = Field(default_factory=list)
    prompt_tokens: int
    model_id: str
    tier: str

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def logprobs(self) -> list[TokenLogprob]:
        return self.choices[0].logprobs

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    @property
    def completion_tokens(self) -> int:
        """Tokens billed to the client: its choices, not the gate's samples."""
        return sum(c.completion_tokens for c in self.choices)

    @property
    def tokens_generated(self) -> int:
        """Every token the engine produced for this attempt, samples included."""
        return self.completion_tokens + sum(s.completion_tokens for s in self.samples)


# ---------------------------------------------------------------------------------------------
# Responses (built from internal results by `api.py`)
# ---------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int] = Field(default_factory=list)


def omitted_if_none():
    """A field left out of the JSON when None, as OpenAI leaves out what does not apply."""
    return Field(None, exclude_if=lambda v: v is None)


class AnswerBody(BaseModel):
    """What every completion response and streamed chunk starts with. After its `object` and
    `choices`, each has `usage` (left out of the chunks before the last) and `quality` (the
    gate's report, one per prompt for a list of prompts, left out of answers the gate did not
    score), in OpenAI's order."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(AnswerBody):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    quality: dict | list[dict | None] | None = omitted_if_none()


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = omitted_if_none()
    content: str | None = omitted_if_none()


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(AnswerBody):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = omitted_if_none()
    quality: dict | list[dict | None] | None = omitted_if_none()


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(AnswerBody):
    """A whole text completion, and (as OpenAI streams them) each of its chunks."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = omitted_if_none()
    quality: dict | list[dict | None] | None = omitted_if_none()


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "graphserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class QualityScores(BaseModel):
    """`POST /v1/quality/score`'s answer: one report per pair, in order."""

    object: Literal["list"] = "list"
    data: list[dict]
