"""`/v1/embeddings` of the graph against Infinity, a dedicated embedding server, in one run.

Both serve the same packaged MiniLM folder on the same cores, one at a time (no other Ray on the
host: `make stop` first). Each is measured on one sentence per request at c=1 (p50, p95) and c=32
(sentences/s), and 32 sentences per request at c=4; every request's status is counted. Two load
generators, one after the other on each server: this process's Python client (httpx, a fixed
number of requests), which takes a core's third at c=32 from the two the server runs on, and wrk
(C, 10 s per scenario, `benchmarks.load.wrk_embed_level`), which takes next to none. Before the
servers: the embedder's encoder in this process (deployments/encoder.py, each backend, the graph's
thread count), one sentence per call and 32: what the graph's HTTP path is measured against.
Writes benchmarks/results/NAME.{json,md,png}.

    python -m benchmarks.embeddings_peer --infinity /path/to/venv/bin/infinity_emb

Infinity's pins differ from this venv's, so it lives in its own:
    python3.11 -m venv ~/infinity && ~/infinity/bin/pip install "infinity-emb[server,torch]"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import httpx
import yaml

from benchmarks import load
from benchmarks.load import SENTENCES
from benchmarks.peers import GraphServer, InfinityServer, graph_args
from deployments.config import EmbedderConfig, GraphConfig
from deployments.encoder import SentenceEncoder
from deployments.models import embedder_folder

RESULTS = Path(__file__).resolve().parent / "results"
# (name, sentences per request, concurrency, requests)
SCENARIOS = [("1 sentence, c=1", 1, 1, 64), ("1 sentence, c=32", 1, 32, 512),
             ("32 sentences, c=4", 32, 4, 64)]
# (load generator, its results' key): each server is measured under each, in this order
CLIENTS = (("Python client", "servers"), ("wrk", "servers_wrk"))


async def measure(url: str, model: str) -> dict:
    out = {}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        for _ in range(8):  # warm the path and the model
            await load.embed_http(client, url, model, SENTENCES[:4])
        for name, per_request, concurrency, total in SCENARIOS:
            out[name] = await load.embed_level(client, url, model, total, concurrency, per_request)
    return out


def measure_wrk(url: str, model: str) -> dict:
    load.wrk_embed_level(url, model, 32, 1, seconds=3)  # warm the path and the model
    return {name: load.wrk_embed_level(url, model, concurrency, per_request)
            for name, per_request, concurrency, _ in SCENARIOS}


def in_process(config: EmbedderConfig, seconds: float = 5.0) -> dict:
    """Sentences/s of the encoder alone, per backend, at the graph's embedder config (threads)."""
    out = {}
    for backend in ("torch", "onnx"):
        encoder = SentenceEncoder(embedder_folder(config.model_source), "cpu", "float32",
                                  threads=config.threads or 1, backend=backend,
                                  max_batch_tokens=config.max_batch_tokens)
        for per_call in (1, 32):
            texts = [SENTENCES[i % len(SENTENCES)] for i in range(per_call)]
            encoder.encode(texts)  # warm
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                encoder.encode(texts)
                calls += 1
            out[f"{backend}, {per_call} per call"] = round(
                calls * per_call / (time.perf_counter() - started), 1)
    return out


def scenario_table(first: str, runs: list[tuple[str, dict]]) -> list[str]:
    """One row per scenario of each run (`measure`'s results), every request's status counted."""
    lines = [f"| {first} | scenario | sentences/s | p50 ms | p95 ms | failed |",
             "|---|---|---|---|---|---|"]
    for label, scenarios in runs:
        for name, r in scenarios.items():
            lines.append(f"| {label} | {name} | {r['sentences_per_s']} | {r['p50_ms']} | "
                         f"{r['p95_ms']} | {r['failed']} of {r['requests']} |")
    return lines


def markdown(results: dict) -> str:
    lines: list[str] = []
    for client, key in CLIENTS:
        if results.get(key):
            lines += ([""] if lines else []) + scenario_table(f"server, {client}",
                                                              list(results[key].items()))
    lines += ["", "| ratio (graph / Infinity unless named) | value |", "|---|---|"]
    for name, value in results["ratios"].items():
        lines.append(f"| {name} | {value} |")
    lines += ["", "| encoder in-process (sentences/s) | value |", "|---|---|"]
    for name, value in results["in_process"].items():
        lines.append(f"| {name} | {value} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Sentences/s and p50 of each scenario, each server under each load generator, beside the
    encoder in this process (32 sentences per call): the figure RESULTS.md shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(f"{server}, {client}", scenarios)
            for client, key in CLIENTS
            for server, scenarios in results.get(key, {}).items()]
    names = [name for name, *_ in SCENARIOS]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(runs)
    for i, (label, scenarios) in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(names))]
        axes[0].bar(xs, [scenarios[n]["sentences_per_s"] for n in names], width, label=label)
        axes[1].bar(xs, [scenarios[n]["p50_ms"] for n in names], width, label=label)
    best = max(v for k, v in results["in_process"].items() if k.endswith("32 per call"))
    axes[0].axhline(best, color="black", linestyle="--", label="encoder in-process, 32 per call")
    axes[0].set(ylabel="sentences / s", title="Throughput")
    axes[1].set(ylabel="ms", title="p50 latency", yscale="log")
    for ax in axes:
        ax.set_xticks(range(len(names)), names)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"/v1/embeddings: the graph against Infinity ({path.stem})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infinity", required=True, help="Infinity's `infinity_emb` script")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--embedder", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the graph's embedder config changed for this run (YAML values), "
                        "e.g. threads=2 batch_wait_timeout_s=0")
    parser.add_argument("--serve-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment of the graph's Ray and `serve run` (Serve's data paths, "
                        "e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1)")
    parser.add_argument("--name", default="embeddings_peer", help="results file name")
    parser.add_argument("--plot-only", action="store_true",
                        help="draw NAME.png from the NAME.json of an earlier run, measure nothing")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / f"{args.name}.json").read_text()), args.out / f"{args.name}.png")
        return
    embedder = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.embedder)}
    serve_env = dict(kv.split("=", 1) for kv in args.serve_env)
    args.out.mkdir(parents=True, exist_ok=True)
    config = GraphConfig.model_validate(
        {**graph_args(), "embedder": {**graph_args()["embedder"], **embedder}}).embedder
    model = config.model_id
    results = {"machine": {"cpu": platform.processor() or platform.machine()}, "servers": {},
               "servers_wrk": {},
               "cold_start_s": {}, "embedder": embedder, "serve_env": serve_env,
               "in_process": in_process(config)}
    print("in-process", json.dumps(results["in_process"]))
    for name, server, path in (
            ("infinity", InfinityServer(18400, args.out, args.infinity, model), "/embeddings"),
            ("graph", GraphServer(18300, args.out, canary=False, embedder=embedder, env=serve_env),
             "/v1/embeddings")):
        results["cold_start_s"][name] = round(server.start(), 1)
        try:
            results["servers"][name] = asyncio.run(measure(server.base + path, model))
            results["servers_wrk"][name] = measure_wrk(server.base + path, model)
        finally:
            server.stop()
        print(name, json.dumps(results["servers"][name]), json.dumps(results["servers_wrk"][name]))
    backend = "onnx" if config.backend == "auto" else config.backend  # auto on a CPU in float32
    results["ratios"] = {}
    for client, key in CLIENTS:
        graph, infinity = results[key]["graph"], results[key]["infinity"]
        results["ratios"].update({
            f"1 sentence, c=32, sentences/s ({client})": round(
                graph["1 sentence, c=32"]["sentences_per_s"]
                / infinity["1 sentence, c=32"]["sentences_per_s"], 3),
            f"32 sentences, c=4, sentences/s ({client})": round(
                graph["32 sentences, c=4"]["sentences_per_s"]
                / infinity["32 sentences, c=4"]["sentences_per_s"], 3),
            f"1 sentence, c=1, p50 difference (ms) ({client})": round(
                graph["1 sentence, c=1"]["p50_ms"] - infinity["1 sentence, c=1"]["p50_ms"], 1),
            f"graph 1 sentence c=32 / in-process 32 per call (same backend) ({client})": round(
                graph["1 sentence, c=32"]["sentences_per_s"]
                / results["in_process"][f"{backend}, 32 per call"], 3)})
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(results))
    plot(results, args.out / f"{args.name}.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
