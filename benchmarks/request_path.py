"""Microseconds the router spends per streamed chunk, in its own code, without Ray.

`python -m benchmarks.request_path` times, in one process: building one SSE chunk from the pydantic
models (`api.Chunks.delta`) against the plain dict + json.dumps it replaced, and the stall watch
around each chunk (`Downstream._unless_down`: two tasks per chunk) against one waiter per stream and a
bare await. Compare these with the hops' CPU-ms per request in `make bench-overhead`.
"""

from __future__ import annotations

import asyncio
import json
import time
import timeit

from deployments import api
from deployments.availability import Availability
from deployments.config import LLMConfig
from deployments.protocol import ChatCompletionRequest, GenerationDelta
from deployments.tier import Tier

N = 20_000


def chunk_costs() -> dict[str, float]:
    [job] = api.jobs_of(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}), "chatcmpl-1", "m")
    chunks, delta = api.Chunks(job.request_id, job, "m"), GenerationDelta(text=" Paris is")

    def as_dict() -> bytes:
        out = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
               "model": "m", "choices": [{"index": 0, "delta": {"content": delta.text},
                                          "finish_reason": None, "logprobs": None}]}
        return f"data: {json.dumps(out)}\n\n".encode()

    return {"pydantic_chunk_us": timeit.timeit(lambda: chunks.delta(0, delta), number=N) / N * 1e6,
            "dict_chunk_us": timeit.timeit(as_dict, number=N) / N * 1e6}


async def watch_costs() -> dict[str, float]:
    availability = Availability(["fast"])
    tier = Tier(LLMConfig(name="fast"), handle=None, availability=availability)

    async def step() -> int:
        await asyncio.sleep(0)
        return 1

    async def timed(one_chunk) -> float:
        started = time.perf_counter()
        for _ in range(N):
            await one_chunk()
        return (time.perf_counter() - started) / N * 1e6

    fell = asyncio.ensure_future(availability.fell("fast").wait())

    async def one_waiter() -> int:
        s = asyncio.ensure_future(step())
        await asyncio.wait({s, fell}, return_when=asyncio.FIRST_COMPLETED)
        return s.result()

    out = {"unless_down_us": await timed(lambda: tier._unless_down(step())),
           "one_waiter_per_stream_us": await timed(one_waiter),
           "bare_await_us": await timed(step)}
    fell.cancel()
    return out


if __name__ == "__main__":
    costs = {**chunk_costs(), **asyncio.run(watch_costs())}
    print(json.dumps({k: round(v, 1) for k, v in costs.items()}, indent=1))
