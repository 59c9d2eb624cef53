"""Load generators: the same requests against every peer, measured the same way.

Chat is streamed, so time to first token (TTFT) is seen by the client exactly as an application sees
it; time per output token (TPOT: from the first token to the last, over the tokens after the first)
is vLLM's benchmark definition and does not depend on how many tokens a chunk carries. Throughput is
completion tokens per wall-clock second.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

T = TypeVar("T")

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe a walk through a forest in autumn.",
    "Write a letter to a friend about learning to cook.",
    "Explain why the sky is blue to a child.",
    "Describe the life of a honeybee.",
    "Write a poem about the sea at night.",
    "Explain how bread is made, from wheat to loaf.",
]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ray Serve scales model serving across a cluster.",
    "A cup of coffee in the morning helps me focus.",
    "The museum opens at nine and closes at five.",
    "Photosynthesis turns sunlight into chemical energy.",
    "She plays the violin in the city orchestra.",
    "Heavy rain is expected over the weekend.",
    "The library lends books, films and music.",
]


@dataclass
class Sample:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    tokens: int = 0
    itl: list[float] = field(default_factory=list)  # gaps between chunks, not tokens
    last: float = 0.0  # seconds from the request to its last token
    extra: dict = field(default_factory=dict)


def failures(statuses) -> dict[str, int]:
    """Requests that did not answer 200, by status (an HTTP code or an exception's name)."""
    out: dict[str, int] = {}
    for status in statuses:
        if status != 200:
            out[str(status)] = out.get(str(status), 0) + 1
    return out


def failures_text(by_status: dict[str, int]) -> str:
    """'2× 504, 1× ReadTimeout': a table cell."""
    return ", ".join(f"{n}× {status}" for status, n in sorted(by_status.items()))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(samples: list[Sample], wall: float) -> dict:
    good = [s for s in samples if s.ok]
    itl = [x for s in good for x in s.itl]
    tpot = [(s.last - s.ttft) / (s.tokens - 1) for s in good if s.tokens > 1 and s.last > s.ttft]
    tokens = sum(s.tokens for s in good)
    return {
        "requests": len(samples), "failed": len(samples) - len(good),
        "wall_s": round(wall, 3), "tokens": tokens,
        "throughput_tok_s": round(tokens / wall, 2) if wall else 0.0,
        "requests_per_s": round(len(good) / wall, 2) if wall else 0.0,
        "ttft_p50_ms": round(pct([s.ttft for s in good], 50) * 1000, 2),
        "ttft_p95_ms": round(pct([s.ttft for s in good], 95) * 1000, 2),
        "tpot_p50_ms": round(pct(tpot, 50) * 1000, 2),
        "tpot_p95_ms": round(pct(tpot, 95) * 1000, 2),
        "itl_p50_ms": round(pct(itl, 50) * 1000, 2),
        "itl_mean_ms": round(statistics.fmean(itl) * 1000, 2) if itl else float("nan"),
        "e2e_p50_ms": round(pct([s.e2e for s in good], 50) * 1000, 2),
        "e2e_p95_ms": round(pct([s.e2e for s in good], 95) * 1000, 2),
    }


async def run_concurrent(one: Callable[[int], Awaitable[T]], total: int,
                         concurrency: int) -> tuple[list[T], float]:
    """`total` calls of `one(i)`, at most `concurrency` at a time; returns their results (in the
    order they finished) and the wall time."""
    queue = iter(range(total))
    samples: list[T] = []

    async def worker():
        for i in queue:
            samples.append(await one(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def chat_http(client: httpx.AsyncClient, url: str, model: str, prompt: str,
                    max_tokens: int, extra: dict | None = None) -> Sample:
    """One streamed chat completion over HTTP (OpenAI protocol), timed by the client."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **(extra or {})}
    started = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    tokens, quality = 0, None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return Sample(ok=False, extra={"status": r.status_code})
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                quality = chunk.get("quality", quality)
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    else:
                        gaps.append(now - last)
                    last = now
    except httpx.HTTPError as e:
        return Sample(ok=False, extra={"error": type(e).__name__})
    end = time.perf_counter()
    return Sample(ok=first is not None, ttft=(first or end) - started, e2e=end - started,
                  tokens=tokens, itl=gaps, last=(last or end) - started,
                  extra={"quality": quality} if quality else {})


async def embed_http(client: httpx.AsyncClient, url: str, model: str, texts: list[str]) -> Sample:
    started = time.perf_counter()
    try:
        r = await client.post(url, json={"model": model, "input": texts})
    except httpx.HTTPError as e:
        return Sample(ok=False, extra={"error": type(e).__name__})
    took = time.perf_counter() - started
    return Sample(ok=r.status_code == 200, ttft=took, e2e=took, tokens=len(texts))


async def chat_level(client: httpx.AsyncClient, url: str, model: str, max_tokens: int, total: int,
                     concurrency: int, extra: dict | None = None) -> tuple[dict, list[Sample]]:
    """`total` streamed chats over PROMPTS, `concurrency` at a time: the summary and the samples."""
    samples, wall = await run_concurrent(
        lambda i: chat_http(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens, extra),
        total, concurrency)
    return summarize(samples, wall), samples


def request_texts(i: int, per_request: int) -> list[str]:
    """The sentences of the `i`-th embeddings request: SENTENCES in turn, the same for every peer."""
    return [SENTENCES[(i * per_request + j) % len(SENTENCES)] for j in range(per_request)]


async def embed_level(client: httpx.AsyncClient, url: str, model: str, total: int,
                      concurrency: int, per_request: int = 1) -> dict:
    """`total` embedding requests of `per_request` sentences each, `concurrency` at a time."""
    samples, wall = await run_concurrent(
        lambda i: embed_http(client, url, model, request_texts(i, per_request)), total, concurrency)
    summary = summarize(samples, wall)  # a sample's tokens: its sentences, when answered
    return {"sentences_per_s": round(summary["tokens"] / wall, 2) if wall else 0.0,
            "requests": summary["requests"], "failed": summary["failed"],
            "p50_ms": summary["e2e_p50_ms"], "p95_ms": summary["e2e_p95_ms"]}


# wrk (Debian's `wrk`): a C load generator, so the client takes next to nothing from the cores it
# shares with the server. Every response is classified in Lua as it arrives: a 200 that carries
# embeddings, or its status; socket errors are counted apart. Printed as one JSON line at the end.
WRK_SCRIPT = r"""
local bodies = {%(bodies)s}
local i = 0
counts = {}
request = function()
  i = i + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
response = function(status, headers, body)
  local key = tostring(status)
  if status == 200 and not string.find(body, '"embedding"', 1, true) then key = "200 without embeddings" end
  counts[key] = (counts[key] or 0) + 1
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    for key, n in pairs(thread:get("counts")) do table.insert(parts, string.format('"%%s": %%d', key, n)) end
  end
  local e = summary.errors
  io.write(string.format('WRK {"seconds": %%f, "statuses": {%%s}, "errors": {"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d}, "p50_ms": %%f, "p95_ms": %%f}\n',
    summary.duration / 1e6, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3))
end
"""


def wrk_embed_level(url: str, model: str, concurrency: int, per_request: int = 1,
                    seconds: float = 10) -> dict:
    """Embedding requests of `per_request` sentences each, `concurrency` connections for
    `seconds`, driven by wrk: sentences/s of the answers that carried embeddings, every other
    response and socket error counted as failed (requests still open at the end are not counted)."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    bodies = [json.dumps({"model": model, "input": request_texts(i, per_request)})
              for i in range(len(SENTENCES))]
    script = WRK_SCRIPT % {"bodies": ", ".join(f"[==[{b}]==]" for b in bodies)}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(script)
        f.flush()
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s",
                              "-s", f.name, url], capture_output=True, text=True, timeout=seconds + 90)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    result = json.loads(line[4:])
    ok = result["statuses"].get("200", 0)
    failed = sum(n for k, n in result["statuses"].items() if k != "200") + sum(result["errors"].values())
    return {"sentences_per_s": round(ok * per_request / result["seconds"], 2),
            "requests": ok + failed, "failed": failed,
            "p50_ms": round(result["p50_ms"], 1), "p95_ms": round(result["p95_ms"], 1),
            "statuses": result["statuses"], "socket_errors": result["errors"]}
