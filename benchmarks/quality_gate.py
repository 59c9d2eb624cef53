"""The gate where it acts: accuracy, escalation, latency and tokens per answer, per policy.

    python -m benchmarks.quality_gate [--url URL] [--questions N]   # against a running graph

Questions come from the test split of benchmarks/questions.py (and the held-out kind), spread over
the kinds, and are answered non-streamed at temperature 0 under each policy:
- `greedy, no gate`: the entry tier's greedy answer, nothing scored (what `vllm serve` gives);
- `gate, scored once`: the same answer plus its consistency samples and score (the gate's cost);
- `gate, default attempts`: below the threshold the router escalates to the `careful` tier, whose
  consensus answer is served;
- `consensus tier`: the `careful` tier's consensus answer for every question.
Each answer is judged by the matcher; every request is recorded with its status and latency
(`results/quality_gate.json`, "requests"), and a failed one counts as a wrong answer. Also run by
`make bench` against the graph it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

from benchmarks import load
from benchmarks.questions import Question, build_questions, judge, split_of

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 64
POLICIES = {
    "greedy, no gate": {"enabled": False},
    "gate, scored once": {"max_attempts": 1},
    "gate, default attempts": {},
    "consensus tier": {"tier": "careful", "max_attempts": 1},
}


def pick_questions(n: int) -> list[Question]:
    """n questions from the test split and the held-out kind, round-robin over the kinds."""
    by_kind: dict[str, list[Question]] = {}
    for q in build_questions():
        if split_of(q) != "fit":
            by_kind.setdefault(q.kind, []).append(q)
    out: list[Question] = []
    while len(out) < n and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(out) < n:
                out.append(by_kind[kind].pop(0))
    return out


async def answer(client: httpx.AsyncClient, q: Question, policy: dict) -> dict:
    """One request under a policy, whatever its outcome: its status and latency always, the
    judged answer when there is one. A failure is a wrong answer in every accuracy figure."""
    started = time.perf_counter()
    try:
        r = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": q.prompt}],
            "temperature": 0, "max_tokens": MAX_TOKENS, "quality": policy})
        status = r.status_code
    except httpx.HTTPError as e:
        status, r = type(e).__name__, None
    row = {"id": q.id, "status": status, "latency_s": time.perf_counter() - started,
           "right": False, "tokens": 0, "escalated": False, "passed": None}
    if status != 200:
        return row
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    report = body.get("quality")
    return {**row, "right": judge(q, text),
            "tokens": report["timing"]["tokens"] if report else body["usage"]["completion_tokens"],
            "escalated": bool(report) and report["tier"] != "fast" and "tier" not in policy,
            "passed": report["passed"] if report else None}


def summarise(rows: list[dict]) -> dict:
    """A policy's figures over every request sent: accuracy and escalation over all of them
    (a failure is wrong), latency over all of them (a failure took what it took), failures by
    status, tokens per answer over the answered."""
    answered = [r for r in rows if r["status"] == 200]
    lat = [r["latency_s"] * 1000 for r in rows]
    failed: dict[str, int] = {}
    for r in rows:
        if r["status"] != 200:
            failed[str(r["status"])] = failed.get(str(r["status"]), 0) + 1
    return {
        "requests": len(rows), "failed": sum(failed.values()), "failed_by_status": failed,
        "accuracy": round(sum(r["right"] for r in rows) / max(len(rows), 1), 4),
        "escalated": round(sum(r["escalated"] for r in rows) / max(len(rows), 1), 4),
        "latency_p50_ms": round(load.pct(lat, 50), 1) if lat else None,
        "latency_p95_ms": round(load.pct(lat, 95), 1) if lat else None,
        "tokens_per_answer": round(sum(r["tokens"] for r in answered) / max(len(answered), 1), 1),
    }


async def run(base: str, questions: list[Question], concurrency: int = 8, bar=None) -> dict:
    out: dict = {"questions": len(questions), "concurrency": concurrency, "policies": {},
                 "requests": {}}
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        for name, policy in POLICIES.items():
            rows, _ = await load.run_concurrent(
                lambda i, policy=policy: answer(client, questions[i], policy), len(questions),
                concurrency)
            out["policies"][name] = summarise(rows)
            out["requests"][name] = sorted(rows, key=lambda r: r["id"])
            if bar is not None:
                bar.update()
    policies = out["policies"]
    base_acc = policies["greedy, no gate"]["accuracy"]
    out["accuracy_gain_points"] = {
        name: round(100 * (p["accuracy"] - base_acc), 1) for name, p in policies.items()}
    plain, scored = policies["greedy, no gate"], policies["gate, scored once"]
    if plain["latency_p50_ms"] and scored["latency_p50_ms"]:
        # What scoring (samples in the engine + the embedder + the signals) adds to an answer.
        out["gate_cost_pct_p50"] = round(
            100 * (scored["latency_p50_ms"] / plain["latency_p50_ms"] - 1), 1)
    return out


def markdown(r: dict) -> str:
    lines = [f"{r['questions']} questions (test split + held-out kind), temperature 0, "
             f"{MAX_TOKENS} tokens, concurrency {r['concurrency']}. Every request counts: a "
             "failed one is a wrong answer, and its latency is in the percentiles.", "",
             "| policy | accuracy (all requests) | vs greedy | failed (by status) | escalated | "
             "p50 ms | p95 ms | tokens/answer |", "|---|---|---|---|---|---|---|---|"]
    for name, p in r["policies"].items():
        failed = ", ".join(f"{n}× {s}" for s, n in sorted(p.get("failed_by_status", {}).items()))
        lines.append(f"| {name} | {p['accuracy']:.1%} | {r['accuracy_gain_points'][name]:+.1f} pt | "
                     f"{p['failed']}{f' ({failed})' if failed else ''} | {p['escalated']:.0%} | "
                     f"{p['latency_p50_ms']} | {p['latency_p95_ms']} | {p['tokens_per_answer']} |")
    if "gate_cost_pct_p50" in r:
        lines += ["", f"Gate cost at p50 (scored once vs no gate): +{r['gate_cost_pct_p50']} % latency."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, p in r["policies"].items():
        ax.scatter(p["tokens_per_answer"], 100 * p["accuracy"], s=60)
        ax.annotate(name, (p["tokens_per_answer"], 100 * p["accuracy"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("tokens generated per answer (samples included)")
    ax.set_ylabel("accuracy on checkable questions (%)")
    ax.set_title("Quality gate: cost vs accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, pick_questions(args.questions), args.concurrency))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality_gate.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "quality_gate.md").write_text(markdown(result))
    plot(result, args.out / "quality_gate.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
