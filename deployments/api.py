"""The OpenAI protocol at the edge: a request becomes a `Job` for the gate, and what the gate and
the embedder return becomes an OpenAI response (the pydantic models in `protocol.py`), streamed or
not. The router translates through these functions only; the gate never sees an OpenAI request.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from deployments.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    GenerationDelta,
    GenerationResult,
    Job,
    ModelCard,
    ModelList,
    Sampling,
    TokenLogprob,
    TopLogprob,
    Usage,
)

# ---------------------------------------------------------------------------------------------
# Requests -> jobs
# ---------------------------------------------------------------------------------------------


def job_of(request: ChatCompletionRequest | CompletionRequest, request_id: str) -> Job:
    """What the gate needs of a chat or text completion request, and nothing else."""
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    sampling = Sampling(
        n=request.n, max_tokens=request.max_tokens, temperature=request.temperature,
        top_p=request.top_p, stop=stop, seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        top_logprobs=request.top_logprobs_asked(),
    )
    if isinstance(request, CompletionRequest):
        return Job(request_id=request_id, model=request.model, prompt=request.prompt,
                   relevance_text=request.prompt, sampling=sampling, quality=request.quality)
    users = [m.text() for m in request.messages if m.role == "user"]
    return Job(request_id=request_id, model=request.model, messages=request.chat(),
               relevance_text=users[-1] if users else request.messages[-1].text(),
               sampling=sampling, quality=request.quality)


# ---------------------------------------------------------------------------------------------
# Results -> responses
# ---------------------------------------------------------------------------------------------


def chat_logprobs(tokens: list[TokenLogprob], top: int) -> ChatLogprobs:
    """The client's view: the gate may have asked the engine for more candidates than `top`."""
    return ChatLogprobs(content=[
        ChatTokenLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
                         top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=list(s.encode()))
                                       for s, lp in t.top[:top]])
        for t in tokens])


def completion_logprobs(tokens: list[TokenLogprob], top: int) -> CompletionLogprobs:
    return CompletionLogprobs(tokens=[t.token for t in tokens],
                              token_logprobs=[t.logprob for t in tokens],
                              top_logprobs=[dict(t.top[:top]) for t in tokens])


def completion_of(job: Job, result: GenerationResult,
                  quality: dict | None) -> ChatCompletion | Completion:
    """A whole answer: a chat completion when the job is a chat, else a text completion."""
    top = job.sampling.top_logprobs
    usage = Usage.of(result.prompt_tokens, result.completion_tokens)
    if job.messages is not None:
        return ChatCompletion(id=job.request_id, model=result.model_id, usage=usage, quality=quality,
                              choices=[ChatChoice(
                                  index=i, message=AssistantMessage(content=c.text),
                                  logprobs=chat_logprobs(c.logprobs, top) if top is not None else None,
                                  finish_reason=c.finish_reason)
                                  for i, c in enumerate(result.choices)])
    return Completion(id=job.request_id, model=result.model_id, usage=usage, quality=quality,
                      choices=[CompletionChoice(
                          index=i, text=c.text, finish_reason=c.finish_reason,
                          logprobs=completion_logprobs(c.logprobs, top) if top is not None else None)
                          for i, c in enumerate(result.choices)])


def sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


class Chunks:
    """The chunks of one streamed answer, as OpenAI shapes them for a chat or a text completion."""

    def __init__(self, job: Job, model: str):
        self.job, self.model, self.created = job, model, int(time.time())
        self.chat = job.messages is not None
        self.top = job.sampling.top_logprobs

    def _chunk(self, text: str | None, logprobs: list[TokenLogprob] | None = None,
               finish_reason: str | None = None, role: bool = False, usage: Usage | None = None,
               quality: dict | None = None, no_choice: bool = False) -> bytes:
        with_logprobs = self.top is not None and bool(logprobs)
        if self.chat:
            choices = [] if no_choice else [ChatChunkChoice(
                delta=ChatDelta(role="assistant" if role else None, content=text),
                logprobs=chat_logprobs(logprobs, self.top) if with_logprobs else None,
                finish_reason=finish_reason)]
            out = ChatCompletionChunk(id=self.job.request_id, created=self.created, model=self.model,
                                      choices=choices, usage=usage, quality=quality)
        else:
            choices = [] if no_choice else [CompletionChoice(
                text=text or "", finish_reason=finish_reason,
                logprobs=completion_logprobs(logprobs, self.top) if with_logprobs else None)]
            out = Completion(id=self.job.request_id, created=self.created, model=self.model,
                             choices=choices, usage=usage, quality=quality)
        return sse(out.model_dump_json())

    def opening(self) -> bytes | None:
        """A chat stream opens with the assistant's role and no text (as OpenAI's does)."""
        return self._chunk("", role=True) if self.chat else None

    def delta(self, delta: GenerationDelta) -> bytes:
        return self._chunk(delta.text, delta.logprobs)

    def closing(self, last: GenerationDelta | None, quality: dict | None,
                include_usage: bool) -> list[bytes]:
        """The finish reason, then the usage chunk when asked for; the quality report rides on
        the last of them. Then [DONE]."""
        finish = last.finish_reason if last else "stop"
        if not include_usage or last is None:
            return [self._chunk(None, finish_reason=finish, quality=quality), sse("[DONE]")]
        return [self._chunk(None, finish_reason=finish),
                self._chunk(None, usage=Usage.of(last.prompt_tokens, last.completion_tokens),
                            quality=quality, no_choice=True),
                sse("[DONE]")]


async def stream_of(chunks: Chunks, events: AsyncIterator[dict], include_usage: bool,
                    error_body: Callable[[Exception], dict]) -> AsyncIterator[bytes]:
    """Server-sent events from the gate's stream events ({"delta"}..., {"quality"}). A failure
    after the status line went out is reported in-band (its OpenAI error body), then [DONE]."""
    last, report = None, None  # the last delta carries the finish reason and token counts
    opening = chunks.opening()
    if opening is not None:
        yield opening
    try:
        async for event in events:
            if "delta" in event:
                last = event["delta"]
                if last.text:
                    yield chunks.delta(last)
            elif "quality" in event:
                report = event["quality"]
    except Exception as e:
        yield sse(json.dumps(error_body(e)))
        yield sse("[DONE]")
        return
    for chunk in chunks.closing(last, report, include_usage):
        yield chunk


def embedding_list(model: str, vectors: np.ndarray, tokens: np.ndarray,
                   encoding_format: str) -> EmbeddingList:
    if encoding_format == "base64":
        encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        encoded = vectors.astype(np.float64).tolist()
    total = int(tokens.sum())
    return EmbeddingList(data=[Embedding(index=i, embedding=e) for i, e in enumerate(encoded)],
                         model=model, usage=EmbeddingUsage(prompt_tokens=total, total_tokens=total))


def model_list(ids: list[str]) -> ModelList:
    return ModelList(data=[ModelCard(id=i) for i in ids])
