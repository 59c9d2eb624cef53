"""Soak: mixed traffic at about 70 % of the graph's measured capacity for a long while, with
nothing lost and nothing leaking.

    python -m benchmarks.soak --minutes 15     # `make soak`: starts its own graph (no other Ray)
    python -m benchmarks.soak --base http://127.0.0.1:8000 --minutes 2   # against a running one

First a closed-loop run of the same mix measures capacity (requests/s); then requests arrive at
`load` times that rate (Poisson) for the duration: streamed and whole chats through the quality
gate, embeddings, quality scoring, malformed requests (each must be a 4xx with the OpenAI error
body), and clients that leave mid-stream. The resident memory of every replica and engine is
sampled on a period. It passes when no request got a 5xx or a broken connection, no process grew
more than `max_growth` after the warm-up, and at the end every engine is idle again (no running
request, KV cache empty). Results: benchmarks/results/soak.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from benchmarks.load import PROMPTS, SENTENCES, pct
from benchmarks.questions import CAPITALS

RESULTS = Path(__file__).parent / "results"
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
ERROR_KEYS = {"message", "type", "param", "code"}
MALFORMED = [  # what real clients get wrong
    {"model": CHAT, "messages": "hello"},
    {"model": CHAT, "messages": [{"role": "user"}]},
    {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
    {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
    {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
]
MIX = {"chat": 3, "chat_stream": 3, "embed": 3, "score": 1, "malformed": 1, "leave_mid_stream": 1}


def chat_body(rng: random.Random, stream: bool, max_tokens: int) -> dict:
    """A question with a short answer (whole chats: the gate retries and escalates the ones it
    doubts), or an open prompt (streams: sent as made, scored at the end)."""
    prompt = rng.choice(PROMPTS) if stream else \
        f"What is the capital of {rng.choice(list(CAPITALS))}?"
    return {"model": CHAT, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": prompt}]}


async def one(client: httpx.AsyncClient, kind: str, rng: random.Random, max_tokens: int) -> str:
    """Sends one request of `kind`; returns its outcome: "ok", or what went wrong."""
    try:
        if kind == "chat":
            r = await client.post("/v1/chat/completions", json=chat_body(rng, False, max_tokens))
            return "ok" if r.status_code == 200 else f"http {r.status_code}"
        if kind in ("chat_stream", "leave_mid_stream"):
            async with client.stream("POST", "/v1/chat/completions",
                                     json=chat_body(rng, True, max_tokens)) as r:
                if r.status_code != 200:
                    return f"http {r.status_code}"
                text = ""
                async for chunk in r.aiter_text():
                    text += chunk
                    if kind == "leave_mid_stream" and text.count("data: ") >= 3:
                        return "ok"  # leaving the block closes the connection mid-stream
            return "ok" if text.endswith("data: [DONE]\n\n") and '"error"' not in text \
                else "stream error"
        if kind == "embed":
            r = await client.post("/v1/embeddings", json={
                "model": EMBED, "input": rng.sample(SENTENCES, rng.randint(1, 4))})
            return "ok" if r.status_code == 200 else f"http {r.status_code}"
        if kind == "score":
            r = await client.post("/v1/quality/score", json={"pairs": [
                {"prompt": "What is the capital of France?",
                 "answer": "The capital of France is Paris."}]})
            return "ok" if r.status_code == 200 else f"http {r.status_code}"
        r = await client.post("/v1/chat/completions", json=rng.choice(MALFORMED))
        good = 400 <= r.status_code < 500 and set(r.json().get("error", {})) == ERROR_KEYS
        return "ok" if good else f"malformed answered {r.status_code}"
    except httpx.HTTPError as e:
        return type(e).__name__


def kinds(rng: random.Random):
    names, weights = zip(*MIX.items())
    while True:
        yield rng.choices(names, weights)[0]


async def capacity(base: str, seconds: float, concurrency: int, max_tokens: int) -> float:
    """Requests per second of the mix, closed loop at `concurrency`: the answers that came back
    within `seconds` (those still running then are abandoned, as clients that leave)."""
    rng, done = random.Random(1), 0
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        async def worker():
            nonlocal done
            for kind in kinds(rng):
                outcome = await one(client, kind, rng, max_tokens)  # then count: never `done +=
                done += outcome == "ok"                             # await`, which reads first

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(seconds)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return done / seconds


def served_processes() -> dict[str, psutil.Process]:
    """Every Serve replica and vLLM process on this host, by a name that survives a sample."""
    found = {}
    for process in psutil.process_iter():
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if title.startswith(("ray::ServeReplica", "VLLM::")):
            found[f"{title.split()[0]} ({process.pid})"] = process
    return found


def rss_mib(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, process in processes.items():
        try:
            out[name] = round(process.memory_info().rss / 2**20, 1)
        except psutil.Error:
            out[name] = float("nan")  # gone: a replica was replaced
    return out


async def engines_idle(base: str, wait_s: float = 30) -> dict:
    """After the load: each tier's running requests and KV-cache use, from a probe taken after the
    load ended. One 1-token request per tier first, so that each engine steps once and its
    figures are current (an aborted request frees its KV blocks without a step)."""
    deadline = time.monotonic() + wait_s
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        tiers = [n for n, d in (await client.get("/health")).json()["deployments"].items()
                 if d.get("role") == "llm"]
        for tier in tiers:
            await client.post("/v1/chat/completions", json={
                "model": CHAT, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}],
                "quality": {"enabled": False, "tier": tier}})
        while True:
            await asyncio.sleep(3)  # past one probe period
            health = (await client.get("/health")).json()["deployments"]
            seen = {t: {"running_requests": health[t].get("running_requests"),
                        "kv_cache_usage": health[t].get("kv_cache_usage")} for t in tiers}
            idle = all(v == {"running_requests": 0, "kv_cache_usage": 0} for v in seen.values())
            if idle or time.monotonic() > deadline:
                return {"tiers": seen, "idle": idle}


async def sample_memory(processes: dict[str, psutil.Process], samples: list[dict],
                        started: float, warmup_s: float, every_s: float) -> None:
    """RSS of every process, after the warm-up and then every `every_s`, until cancelled."""
    await asyncio.sleep(warmup_s)
    while True:
        samples.append({"t_s": round(time.monotonic() - started), **rss_mib(processes)})
        await asyncio.sleep(every_s)


async def soak(base: str, minutes: float, load: float = 0.7, sample_every_s: float = 60,
               warmup_s: float = 180, calibrate_s: float = 60, concurrency: int = 8,
               max_tokens: int = 48, max_growth: float = 0.05) -> dict:
    cap = await capacity(base, calibrate_s, concurrency, max_tokens)
    rate = load * cap
    print(f">> capacity {cap:.2f} requests/s; soaking at {rate:.2f}/s for {minutes:g} min",
          flush=True)
    rng = random.Random(2)
    outcomes: Counter = Counter()
    by_kind: Counter = Counter()
    processes = served_processes()
    samples: list[dict] = []
    in_flight: set[asyncio.Task] = set()
    seconds: dict[str, list[float]] = {kind: [] for kind in MIX}
    started = time.monotonic()
    end = started + minutes * 60
    sampler = asyncio.create_task(
        sample_memory(processes, samples, started, warmup_s, sample_every_s))

    # The client waits past router.request_timeout_s (120 s), so the server's 504 is recorded.
    async with httpx.AsyncClient(base_url=base, timeout=150,
                                 limits=httpx.Limits(max_connections=256)) as client:
        async def send(kind: str):
            sent = time.monotonic()
            outcome = await one(client, kind, rng, max_tokens)
            seconds[kind].append(time.monotonic() - sent)
            outcomes[outcome] += 1
            if outcome != "ok":
                by_kind[f"{kind}: {outcome}"] += 1

        async def report():
            while True:
                await asyncio.sleep(30)
                print(f"   {time.monotonic() - started:5.0f} s: {dict(outcomes)}, "
                      f"{len(in_flight)} in flight", flush=True)

        progress = asyncio.create_task(report())
        for kind in kinds(rng):
            if time.monotonic() >= end:
                break
            task = asyncio.create_task(send(kind))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await asyncio.sleep(min(rng.expovariate(rate), max(0.0, end - time.monotonic())))
        await asyncio.gather(*in_flight)
        progress.cancel()
    sampler.cancel()
    samples.append({"t_s": round(time.monotonic() - started), **rss_mib(processes)})
    growth = {name: round(samples[-1][name] / samples[0][name] - 1, 4) for name in processes
              if len(samples) > 1}
    idle = await engines_idle(base)
    failures = {k: v for k, v in outcomes.items() if k != "ok"}
    return {
        "minutes": minutes, "capacity_rps": round(cap, 2), "rate_rps": round(rate, 2),
        "requests": sum(outcomes.values()), "failures": failures, "failures_by_kind": dict(by_kind),
        "latency_s": {kind: latency(values) for kind, values in seconds.items() if values},
        "rss_mib": samples, "rss_growth_after_warmup": growth, "max_growth": max_growth,
        "end": idle,
        "passed": not failures and bool(growth) and all(g < max_growth for g in growth.values())
        and idle["idle"],
    }


def latency(values: list[float]) -> dict:
    return {"p50": round(pct(values, 50), 2), "p95": round(pct(values, 95), 2),
            "max": round(max(values), 2)}


def write(result: dict, name: str = "soak") -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Soak: {result['minutes']:g} min at {result['rate_rps']} requests/s "
             f"(capacity {result['capacity_rps']}/s)", "",
             f"- requests: {result['requests']}; failures: {result['failures'] or 'none'}",
             f"- engines idle at the end: {result['end']}",
             "- seconds per request by kind (p50 / p95 / max): " + "; ".join(
                 f"{kind} {v['p50']} / {v['p95']} / {v['max']}"
                 for kind, v in result.get("latency_s", {}).items()), "",
             "| process | RSS first (MiB) | RSS last (MiB) | growth |", "|---|---|---|---|"]
    first, last = result["rss_mib"][0], result["rss_mib"][-1]
    for proc, g in result["rss_growth_after_warmup"].items():
        lines.append(f"| {proc} | {first[proc]} | {last[proc]} | {g:+.1%} |")
    lines += ["", f"**{'passed' if result['passed'] else 'FAILED'}**"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="a running graph; default: start one (serve_config.yaml)")
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--load", type=float, default=0.7, help="share of measured capacity")
    parser.add_argument("--sample-every", type=float, default=60, help="seconds between RSS samples")
    # Three minutes: an engine's worker fills its working set (batch shapes, sequence lengths) for
    # its first minutes at this load (the second 15-minute soak: +4 % by minute 4, then level).
    parser.add_argument("--warmup", type=float, default=180, help="seconds before the first sample")
    args = parser.parse_args()
    server = None
    base = args.base
    if base is None:
        import tempfile

        from benchmarks.peers import GraphServer

        server = GraphServer(18700, Path(tempfile.mkdtemp()))
        print(f">> starting the graph: {server.start():.0f} s", flush=True)
        base = server.base
    try:
        result = asyncio.run(soak(base, args.minutes, args.load, args.sample_every, args.warmup))
    finally:
        if server is not None:
            server.stop()
    write(result)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mib"}, indent=2))
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
