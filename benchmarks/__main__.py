"""`python -m benchmarks` (or `make bench`): graphserve against the peers, in one run.

Peers run one at a time on loopback (2 cores cannot host them side by side fairly): sentence-
transformers in-process, vLLM's engine in-process, `vllm serve`, then our graph with the quality gate
off and on. Results go to benchmarks/results/ as JSON, a markdown table and PNG plots; the ratios
against their targets are the headline. `--quick` is a small smoke run of the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from benchmarks import load, quality_gate, report
from benchmarks.load import PROMPTS, SENTENCES, Sample

RESULTS = Path(__file__).resolve().parent / "results"
CHAT_CONCURRENCY = [1, 4, 16, 32]
EMBED_CONCURRENCY = [1, 8, 32, 64]


def requests_for(concurrency: int, quick: bool) -> int:
    return max(2, concurrency) if quick else max(6, 2 * concurrency)


async def chat_over_http(base: str, model: str, max_tokens: int, levels: list[int], quick: bool,
                         extra: dict | None, bar: tqdm) -> dict:
    out = {}
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        url = f"{base}/v1/chat/completions"
        await load.chat_http(client, url, model, PROMPTS[0], 8, extra)  # warm the path
        for c in levels:
            out[c], samples = await load.chat_level(client, url, model, max_tokens,
                                                    requests_for(c, quick), c, extra)
            out[c]["samples"] = [s.extra for s in samples if s.extra]
            bar.update()
    return out


async def chat_in_process(engine, max_tokens: int, levels: list[int], quick: bool,
                          bar: tqdm) -> dict:
    counter = iter(range(10**9))

    async def one(i: int) -> Sample:
        started = time.perf_counter()
        first = last = None
        gaps, tokens = [], 0
        async for at, new in engine.chat(PROMPTS[i % len(PROMPTS)], max_tokens, f"b{next(counter)}"):
            if new and first is None:
                first = at
            elif new:
                gaps.append(at - last)
            last = at if new else last
            tokens += new
        end = time.perf_counter()
        return Sample(ok=first is not None, ttft=(first or end) - started, e2e=end - started,
                      tokens=tokens, itl=gaps, last=(last or end) - started)

    await one(0)  # warm-up
    out = {}
    for c in levels:
        samples, wall = await load.run_concurrent(one, requests_for(c, quick), c)
        out[c] = load.summarize(samples, wall)
        bar.update()
    return out


async def embed_over_http(base: str, model: str, levels: list[int], quick: bool, bar: tqdm) -> dict:
    out = {}
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256)) as client:
        url = f"{base}/v1/embeddings"
        for _ in range(4):
            await load.embed_http(client, url, model, SENTENCES[:1])
        for c in levels:
            total = max(16, 4 * c) if quick else max(64, 16 * c)
            out[c] = await load.embed_level(client, url, model, total, c)
            bar.update()
    return out


def embed_in_process(quick: bool, bar: tqdm) -> dict:
    from benchmarks.peers import InProcessEmbedder

    embedder = InProcessEmbedder()
    texts = (SENTENCES * 64)[: 64 if quick else 512]
    embedder.encode(texts[:64], 64)  # warm-up
    out = {}
    for name, batch, chunks in (("batched", 64, [texts]), ("one_by_one", 1, [[t] for t in texts])):
        started = time.perf_counter()
        for chunk in chunks:
            embedder.encode(chunk, batch)
        out[name] = {"sentences_per_s": round(len(texts) / (time.perf_counter() - started), 2)}
        bar.update()
    return out


def scoring_overhead(gate_on: dict) -> dict:
    """Scoring time against generation time, per request, from the reports the router returns."""
    timings = [s["quality"]["timing"] for level in gate_on.values() for s in level["samples"]
               if s.get("quality", {}).get("timing")]
    ratios = [t["scoring_ms"] / t["generation_ms"] * 100 for t in timings if t["generation_ms"]]
    scoring = [t["scoring_ms"] for t in timings]
    per_level = {c: round(load.pct([s["quality"]["timing"]["scoring_ms"] for s in level["samples"]
                                    if s.get("quality", {}).get("timing")], 50), 2)
                 for c, level in gate_on.items()}
    return {"requests": len(timings), "scoring_ms_p50_by_concurrency": per_level,
            "scoring_ms_p50": round(load.pct(scoring, 50), 2),
            "scoring_ms_p95": round(load.pct(scoring, 95), 2),
            "generation_ms_p50": round(load.pct([t["generation_ms"] for t in timings], 50), 1),
            "overhead_pct_p50": round(load.pct(ratios, 50), 2),
            "overhead_pct_p95": round(load.pct(ratios, 95), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (c = 1 and 4)")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--only", nargs="*", default=["embed", "engine", "vllm", "graph"],
                        choices=["embed", "engine", "vllm", "graph"])
    parser.add_argument("--chat-levels", nargs="*", type=int, default=None,
                        help=f"chat concurrency levels (default {CHAT_CONCURRENCY}; --quick: 1 4)")
    parser.add_argument("--gate-questions", type=int, default=None,
                        help="checkable questions for the quality gate's policies (default 120; "
                        "--quick: 16; 0: skip them)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    from benchmarks.peers import GraphServer, InProcessEngine, VLLMServer, fast_tier, graph_args

    chat_levels = args.chat_levels or ([1, 4] if args.quick else CHAT_CONCURRENCY)
    gate_questions = (16 if args.quick else 120) if args.gate_questions is None \
        else args.gate_questions
    embed_levels = [1, 8] if args.quick else EMBED_CONCURRENCY
    model = fast_tier().model_id
    embed_model = graph_args()["embedder"]["model_id"]
    steps = {"embed": 2, "engine": len(chat_levels), "vllm": len(chat_levels),
             "graph": 2 * len(chat_levels) + len(embed_levels)
             + (len(quality_gate.POLICIES) if gate_questions else 0)}
    bar = tqdm(total=sum(steps[k] for k in args.only), desc="benchmarks", unit="scenario")
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                 "cores": os.cpu_count(), "python": platform.python_version()},
                     "settings": {"max_tokens": args.max_tokens, "quick": args.quick,
                                  "model": model, "embedder": embed_model},
                     "chat": {}, "embeddings": {}, "cold_start_s": {}}

    def run_peer(name: str, scenario) -> None:
        """One peer's scenarios; a peer that fails is recorded and the others still run."""
        try:
            scenario()
        except Exception as e:  # the report says which peer failed and why
            results.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
            bar.write(f"{name} failed: {e}")

    def embed() -> None:
        bar.set_postfix_str("sentence-transformers in-process")
        results["embeddings"]["in_process"] = embed_in_process(args.quick, bar)

    def engine() -> None:
        bar.set_postfix_str("vLLM engine in-process (loading)")
        llm = InProcessEngine()
        try:
            bar.set_postfix_str("vLLM engine in-process")
            results["chat"]["engine_in_process"] = asyncio.run(
                chat_in_process(llm, args.max_tokens, chat_levels, args.quick, bar))
        finally:
            llm.stop()

    def server(peer, port: int, scenarios) -> None:
        bar.set_postfix_str(f"{peer.name} (starting)")
        running = peer(port, args.out)
        try:
            results["cold_start_s"][peer.name.replace("-", "_")] = round(running.start(), 1)
            scenarios(running)
        finally:
            running.stop()

    def vllm_scenarios(running) -> None:
        bar.set_postfix_str("vllm serve")
        results["chat"]["vllm_serve"] = asyncio.run(chat_over_http(
            running.base, model, args.max_tokens, chat_levels, args.quick, None, bar))

    def graph_scenarios(running) -> None:
        # gate on: the config's own gate, as a client gets it by default
        for name, extra in (("graph_gate_off", {"quality": {"enabled": False}}),
                            ("graph_gate_on", None)):
            bar.set_postfix_str(name)
            results["chat"][name] = asyncio.run(chat_over_http(
                running.base, model, args.max_tokens, chat_levels, args.quick, extra, bar))
        bar.set_postfix_str("graph embeddings")
        results["embeddings"]["graph_http"] = asyncio.run(
            embed_over_http(running.base, embed_model, embed_levels, args.quick, bar))
        results["scoring"] = scoring_overhead(results["chat"]["graph_gate_on"])
        if not gate_questions:
            return
        bar.set_postfix_str("quality gate on checkable questions")
        gate = asyncio.run(quality_gate.run(
            running.base, quality_gate.pick_questions(gate_questions), bar=bar))
        results["quality_gate"] = gate
        (args.out / "quality_gate.md").write_text(quality_gate.markdown(gate))
        quality_gate.plot(gate, args.out / "quality_gate.png")

    peers = {"embed": embed, "engine": engine,
             "vllm": lambda: server(VLLMServer, 18200, vllm_scenarios),
             "graph": lambda: server(GraphServer, 18300, graph_scenarios)}
    for name in args.only:
        run_peer(name, peers[name])
    bar.close()

    for peer in results["chat"].values():  # per-request samples were only for the scoring numbers
        for level in peer.values():
            level.pop("samples", None)
    results["ratios"] = report.ratios(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(report.markdown(results))
    report.plots(results, args.out)
    print(report.markdown(results))
    print(f"written to {args.out}/")


if __name__ == "__main__":
    main()
