"""The OpenAI protocol at the edge: a request becomes a `Job` for the gate, and what the gate and
the embedder return becomes an OpenAI response (the pydantic models in `protocol.py`), streamed or
not. The router translates through these functions only; the gate never sees an OpenAI request.
"""

from __future__ import annotations

import asyncio
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
    StreamReport,
    StreamStart,
    ModelCard,
    ModelList,
    TokenLogprob,
    TopLogprob,
    Usage,
)

# ---------------------------------------------------------------------------------------------
# Requests -> jobs
# ---------------------------------------------------------------------------------------------


def jobs_of(request: ChatCompletionRequest | CompletionRequest, request_id: str,
            model: str) -> list[Job]:
    """What the gate needs of a chat or text completion request, and nothing else: one job per
    prompt (a text completion may send a list of them, as vLLM and OpenAI take)."""
    sampling = request.sampling()
    if isinstance(request, CompletionRequest):
        prompts = request.prompts()
        return [Job(request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
                    model=model, prompt=prompt, relevance_text=prompt, sampling=sampling,
                    quality=request.quality) for i, prompt in enumerate(prompts)]
    users = [m.text() for m in request.messages if m.role == "user"]
    return [Job(request_id=request_id, model=model, messages=request.chat(),
                relevance_text=users[-1] if users else request.messages[-1].text(),
                sampling=sampling, quality=request.quality)]


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
    """OpenAI's legacy shape: each position's top candidates and the chosen token among them."""
    return CompletionLogprobs(tokens=[t.token for t in tokens],
                              token_logprobs=[t.logprob for t in tokens],
                              top_logprobs=[{**dict(t.top[:top]), t.token: t.logprob}
                                            for t in tokens])


def completion_of(request_id: str, jobs: list[Job],
                  answers: list[tuple[GenerationResult, dict | None]]) -> ChatCompletion | Completion:
    """A whole answer: a chat completion when the job is a chat, else a text completion whose
    choices are every prompt's `n` in turn (choice i*n + j: prompt i's j-th), as vLLM numbers
    them. `quality`: the gate's report, or one per prompt when there were several."""
    job, top = jobs[0], jobs[0].sampling.top_logprobs
    results = [result for result, _ in answers]
    reports = [report for _, report in answers]
    quality = reports[0] if len(reports) == 1 else reports if any(reports) else None
    usage = Usage.of(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results))
    choices = [c for r in results for c in r.choices]
    if job.messages is not None:
        return ChatCompletion(id=request_id, model=results[0].model_id, usage=usage,
                              quality=quality, choices=[ChatChoice(
                                  index=i, message=AssistantMessage(content=c.text),
                                  logprobs=chat_logprobs(c.logprobs, top) if top is not None else None,
                                  finish_reason=c.finish_reason)
                                  for i, c in enumerate(choices)])
    return Completion(id=request_id, model=results[0].model_id, usage=usage, quality=quality,
                      choices=[CompletionChoice(
                          index=i, text=c.text, finish_reason=c.finish_reason,
                          logprobs=completion_logprobs(c.logprobs, top) if top is not None else None)
                          for i, c in enumerate(choices)])


def sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


class Chunks:
    """The chunks of one streamed answer, as OpenAI shapes them for a chat or a text completion;
    `index`: which choice a chunk belongs to (prompt i's j-th choice is i*n + j)."""

    def __init__(self, request_id: str, job: Job, model: str):
        self.request_id, self.model, self.created = request_id, model, int(time.time())
        self.chat = job.messages is not None
        self.top = job.sampling.top_logprobs

    def _chunk(self, index: int, text: str | None, logprobs: list[TokenLogprob] | None = None,
               finish_reason: str | None = None, role: bool = False, usage: Usage | None = None,
               quality: dict | list | None = None, no_choice: bool = False) -> bytes:
        with_logprobs = self.top is not None and bool(logprobs)
        if self.chat:
            choices = [] if no_choice else [ChatChunkChoice(
                index=index, delta=ChatDelta(role="assistant" if role else None, content=text),
                logprobs=chat_logprobs(logprobs, self.top) if with_logprobs else None,
                finish_reason=finish_reason)]
            out = ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model,
                                      choices=choices, usage=usage, quality=quality)
        else:
            choices = [] if no_choice else [CompletionChoice(
                index=index, text=text or "", finish_reason=finish_reason,
                logprobs=completion_logprobs(logprobs, self.top) if with_logprobs else None)]
            out = Completion(id=self.request_id, created=self.created, model=self.model,
                             choices=choices, usage=usage, quality=quality)
        return sse(out.model_dump_json())

    def opening(self, choices: int) -> list[bytes]:
        """A chat stream opens with the assistant's role and no text, for each choice (as
        OpenAI's and vLLM's do)."""
        return [self._chunk(i, "", role=True) for i in range(choices)] if self.chat else []

    def delta(self, index: int, delta: GenerationDelta) -> bytes:
        return self._chunk(index, delta.text, delta.logprobs)

    def closing(self, last: dict[int, GenerationDelta], prompt_tokens: int,
                quality: dict | list | None, include_usage: bool) -> list[bytes]:
        """Each choice's finish reason, then the usage chunk when asked for; the quality report
        rides on the last of them. Then [DONE]."""
        ends = sorted(last.items()) or [(0, GenerationDelta())]
        out = [self._chunk(i, None, finish_reason=d.finish_reason or "stop",
                           quality=quality if k == len(ends) - 1 and not include_usage else None)
               for k, (i, d) in enumerate(ends)]
        if include_usage:
            usage = Usage.of(prompt_tokens, sum(d.completion_tokens for d in last.values()))
            out.append(self._chunk(0, None, usage=usage, quality=quality, no_choice=True))
        return [*out, sse("[DONE]")]


Event = StreamStart | GenerationDelta | StreamReport  # what a gated stream yields, in order


async def merged(streams: list[AsyncIterator[Event]]) -> AsyncIterator[tuple[int, Event]]:
    """The events of several streams as they come, each tagged with its stream's position."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue = asyncio.Queue()
    END = object()

    async def pump(i: int, stream: AsyncIterator[Event]) -> None:
        try:
            async for event in stream:
                await queue.put((i, event))
            await queue.put((i, END))
        except BaseException as e:  # handed to the reader, which raises it
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_ = len(streams)
        while open_:
            i, event = await queue.get()
            if event is END:
                open_ -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield i, event
    finally:
        for task in tasks:
            task.cancel()


async def stream_of(chunks: Chunks, streams: list[AsyncIterator[Event]], n: int,
                    include_usage: bool, error_body: Callable[[Exception], dict]
                    ) -> AsyncIterator[bytes]:
    """Server-sent events from the gate's stream events (deltas, then the report), one stream
    per prompt, each past its `StreamStart`. A failure after the status line went out is reported
    in-band (its OpenAI error body), then [DONE]."""
    last: dict[int, GenerationDelta] = {}  # per choice: its finish reason and token count
    prompt_tokens: dict[int, int] = {}
    reports: dict[int, dict] = {}
    for chunk in chunks.opening(n * len(streams)):
        yield chunk
    try:
        async for i, event in merged(streams):
            if isinstance(event, GenerationDelta):
                index = i * n + event.index
                last[index] = event
                prompt_tokens[i] = event.prompt_tokens
                if event.text:
                    yield chunks.delta(index, event)
            elif isinstance(event, StreamReport) and event.report is not None:
                reports[i] = event.report
    except Exception as e:
        yield sse(json.dumps(error_body(e)))
        yield sse("[DONE]")
        return
    quality = (reports.get(0) if len(streams) == 1
               else [reports.get(i) for i in range(len(streams))] if reports else None)
    for chunk in chunks.closing(last, sum(prompt_tokens.values()), quality, include_usage):
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
