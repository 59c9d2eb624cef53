"""Does self-consistency beat greedy decoding for this model, and at which sample temperature?

    python -m benchmarks.consensus_sweep [--url URL] [--questions N] [--temperatures 0.5 0.8]

For N questions of the test split: the greedy answer (temperature 0), then k samples per
temperature through the graph's own `n` (gate off); the consensus answer is picked among
greedy + samples by `deployments.quality.consensus` (most shared normalised answer, ties to the
greedy one) with text only, and every answer is judged by the matcher. The result chose the
`careful` tier's consensus settings in serve_config.yaml (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx

from benchmarks import load
from benchmarks.quality_gate import MAX_TOKENS, MODEL, RESULTS, pick_questions
from benchmarks.questions import Question, judge
from deployments.quality import consensus


async def texts(client: httpx.AsyncClient, q: Question, n: int, temperature: float) -> list[str]:
    r = await client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": q.prompt}], "n": n,
        "temperature": temperature, "max_tokens": MAX_TOKENS, "quality": {"enabled": False}})
    r.raise_for_status()
    return [c["message"]["content"] for c in r.json()["choices"]]


async def sweep(url: str, questions: list[Question], k: int, temperatures: list[float],
                concurrency: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(i: int) -> dict:
            q = questions[i]
            greedy = (await texts(client, q, 1, 0.0))[0]
            row = {"greedy": judge(q, greedy)}
            for t in temperatures:
                samples = await texts(client, q, k, t)
                pool = [greedy, *samples]
                row[f"sample@{t}"] = sum(judge(q, s) for s in samples) / k
                row[f"consensus@{t}"] = judge(q, pool[consensus(pool, q.prompt)])
            return row

        rows, _ = await load.run_concurrent(one, len(questions), concurrency)
    keys = rows[0].keys()
    return {"questions": len(rows), "k": k,
            "accuracy": {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    result = asyncio.run(sweep(args.url, pick_questions(args.questions), args.k,
                               args.temperatures, args.concurrency))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "consensus_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
