"""The gate where it acts: accuracy, escalation, latency and tokens per answer, per policy.

    python -m benchmarks.quality_gate [--url URL] [--questions N]   # against a running graph

Questions alternate between the hand-written set's test half (benchmarks/data/
natural_questions.jsonl: questions as people type them) and the templated test split plus its
held-out kind, spread over the topics and kinds; each is answered non-streamed at temperature 0
under each policy:
- `greedy, no gate`: the entry tier's greedy answer, nothing scored (what `vllm serve` gives);
- `samples with every answer, scored once`: 4 samples drawn with the answer in the same engine
  request, the greedy answer served, no retry (the gate before the cascade);
- `scored once, no samples`: the answer's sample-free score and guards, nothing more;
- `cascade, scored once`: the answer's sample-free score first; samples only below
  `sample_below`; no retry;
- `... + vote`: the same, and the candidate the answer and its samples agree on most is served
  (`quality.vote`);
- `gate, default config`: the config as shipped: below the threshold the router retries and
  escalates to the `careful` tier, whose consensus answer is served;
- `gate, default config, no samples`: the same with `sample_below` 0 (every answer scored on its
  sample-free score).
Each answer is judged by the matcher; every request is recorded with its status and latency
(`results/quality_gate.json`, "requests"), and a failed one counts as a wrong answer. Also run by
`make bench` against the graph it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx

from benchmarks import load
from benchmarks.report import write_results
from benchmarks.questions import Question, build_questions, judge, split_of

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 64
CASCADE_BELOW = 0.3  # the cascade policy's sample_below (docs/quality-gate.md: how it was chosen)
POLICIES = {
    "greedy, no gate": {"enabled": False},
    "samples with every answer, scored once": {"max_attempts": 1, "sample_below": 1.0},
    "cascade, scored once": {"max_attempts": 1, "sample_below": CASCADE_BELOW},
    "samples with every answer + vote": {"max_attempts": 1, "sample_below": 1.0, "vote": True},
    "cascade + vote": {"max_attempts": 1, "sample_below": CASCADE_BELOW, "vote": True},
    "scored once, no samples": {"max_attempts": 1, "sample_below": 0.0},
    "gate, default config": {},
    "gate, default config, no samples": {"sample_below": 0.0},
}
BASELINE = "greedy, no gate"


def _round_robin(by_kind: dict[str, list[Question]]):
    while any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind]:
                yield by_kind[kind].pop(0)


def pick_questions(n: int) -> list[Question]:
    """n questions, alternately hand-written (test half) and templated (test split and the
    held-out kind), each set round-robin over its topics or kinds."""
    from benchmarks.calibrate import QUESTION_SETS, load_questions, question_of

    templated: dict[str, list[Question]] = {}
    for q in build_questions():
        if split_of(q) != "fit":
            templated.setdefault(q.kind, []).append(q)
    natural: dict[str, list[Question]] = {}
    for row in load_questions(QUESTION_SETS["natural"]):
        if row["split"] == "test":
            natural.setdefault(row["kind"], []).append(question_of(row))
    sets = [_round_robin(natural), _round_robin(templated)]
    out: list[Question] = []
    while len(out) < n and sets:
        for it in list(sets):
            if len(out) == n:
                break
            q = next(it, None)
            if q is None:
                sets.remove(it)
            else:
                out.append(q)
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
           "right": False, "tokens": 0, "escalated": False, "passed": None, "sampled": False,
           "out_of_budget": False}
    if status != 200:
        return row
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    report = body.get("quality")
    return {**row, "right": judge(q, text),
            "tokens": report["timing"]["tokens"] if report else body["usage"]["completion_tokens"],
            "escalated": bool(report) and report["tier"] != "fast" and "tier" not in policy,
            "passed": report["passed"] if report else None,
            "sampled": bool(report) and report.get("samples", 0) > 0,
            "out_of_budget": bool(report) and report.get("budget_exhausted", False)}


def summarise(rows: list[dict]) -> dict:
    """A policy's figures over every request sent: accuracy and escalation over all of them
    (a failure is wrong), latency over all of them (a failure took what it took), failures by
    status, tokens per answer over the answered."""
    answered = [r for r in rows if r["status"] == 200]
    lat = [r["latency_s"] * 1000 for r in rows]
    failed = load.failures(r["status"] for r in rows)

    def share(key: str) -> float:
        return round(sum(r.get(key, False) for r in rows) / max(len(rows), 1), 4)

    return {
        "requests": len(rows), "failed": sum(failed.values()), "failed_by_status": failed,
        "accuracy": share("right"), "escalated": share("escalated"), "sampled": share("sampled"),
        # the gate stopped short (a retry, an escalation or samples cut by gate_budget_s)
        "out_of_budget": share("out_of_budget"),
        "latency_p50_ms": round(load.pct(lat, 50), 1) if lat else None,
        "latency_p95_ms": round(load.pct(lat, 95), 1) if lat else None,
        "tokens_per_answer": round(sum(r["tokens"] for r in answered) / max(len(answered), 1), 1),
    }


async def run(base: str, questions: list[Question], concurrency: int = 8, bar=None,
              policies: list[str] | None = None) -> dict:
    out: dict = {"questions": len(questions), "concurrency": concurrency, "policies": {},
                 "requests": {}}
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        for name, policy in POLICIES.items():
            if policies and name not in policies and name != BASELINE:
                continue
            rows, _ = await load.run_concurrent(
                lambda i, policy=policy: answer(client, questions[i], policy), len(questions),
                concurrency)
            out["policies"][name] = summarise(rows)
            out["requests"][name] = sorted(rows, key=lambda r: r["id"])
            if bar is not None:
                bar.update()
    policies = out["policies"]
    plain = policies[BASELINE]
    out["accuracy_gain_points"] = {
        name: round(100 * (p["accuracy"] - plain["accuracy"]), 1) for name, p in policies.items()}
    if plain["latency_p50_ms"]:
        out["p50_vs_greedy"] = {name: round(p["latency_p50_ms"] / plain["latency_p50_ms"], 2)
                                for name, p in policies.items() if p["latency_p50_ms"]}
    return out


def markdown(r: dict) -> str:
    lines = [f"{r['questions']} questions (hand-written test half and templated test split, "
             f"alternately), temperature 0, {MAX_TOKENS} tokens, concurrency {r['concurrency']}. "
             "Every request counts: a failed one is a wrong answer, and its latency is in the "
             "percentiles.", "",
             "| policy | accuracy (all requests) | vs greedy | failed (by status) | sampled | "
             "escalated | out of budget | p50 ms | p50 vs greedy | p95 ms | tokens/answer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = r.get("p50_vs_greedy", {})
    for name, p in r["policies"].items():
        failed = load.failures_text(p.get("failed_by_status", {}))
        ratio = f"{ratios[name]:.2f}×" if name in ratios else "–"
        lines.append(f"| {name} | {p['accuracy']:.1%} | {r['accuracy_gain_points'][name]:+.1f} pt | "
                     f"{p['failed']}{f' ({failed})' if failed else ''} | "
                     f"{p.get('sampled', 0):.0%} | {p['escalated']:.0%} | "
                     f"{p.get('out_of_budget', 0):.0%} | "
                     f"{p['latency_p50_ms']} | {ratio} | {p['latency_p95_ms']} | "
                     f"{p['tokens_per_answer']} |")
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
    parser.add_argument("--policies", nargs="*", choices=list(POLICIES), default=None,
                        help="only these (and the greedy baseline)")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, pick_questions(args.questions), args.concurrency,
                             policies=args.policies))
    write_results(args.out, "quality_gate", result, markdown(result))
    plot(result, args.out / "quality_gate.png")


if __name__ == "__main__":
    main()
