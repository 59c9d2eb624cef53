"""Calibrate the quality gate on what the served model actually says (`make calibrate`).

    python -m benchmarks.calibrate collect [--url URL]   # ask the running graph, label, store
    python -m benchmarks.calibrate fit                   # fit on the fit split, report on the rest

`collect` sends every question of benchmarks/questions.py to the running graph (greedy, 64 tokens,
one attempt: the entry tier's answer as a user gets it), judges each answer with the matcher, and
stores the answer, its label and every signal the router computed (`quality.components`), plus the
answer's likelihood under the next tier (`/v1/quality/score`, a prefill) in
benchmarks/data/answers.jsonl. `fit` is offline and deterministic: a logistic regression on the fit
split, written to deployments/quality_calibration.json with the threshold for the stated operating
point; the report (AUC of each signal alone and of the calibrated score beside an answer-length
baseline, on the test split and the held-out kind, pass rates at the threshold) goes to
benchmarks/results/quality_calibration.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path

import httpx

from benchmarks import load
from benchmarks.questions import Question, build_questions, judge, split_of

ROOT = Path(__file__).resolve().parent
ANSWERS = ROOT / "data" / "answers.jsonl"
RESULTS = ROOT / "results"
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 64
NEXT_TIER = "careful"  # the tier after the entry one in serve_config.yaml
# Signals the calibrated score may use (all generic). Answer length is the baseline, never a feature.
FEATURES = ["mean_logprob", "min_logprob", "p10_logprob", "mean_entropy", "agreement", "overlap",
            "consistency", "relevance", "repetition", "completeness"]
# Regularisation strengths tried; the one with the best leave-one-kind-out AUC on the fit split
# wins, so the choice favours what carries over to a kind of question the fit never saw.
C_GRID = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
# The operating point: the highest threshold that still passes this share of right answers on
# the fit split (a gate that blocks good answers costs retries and latency for nothing).
RIGHT_PASS_TARGET = 0.85


async def ask(client: httpx.AsyncClient, q: Question, tier: str | None) -> dict:
    quality = {"max_attempts": 1, **({"tier": tier} if tier else {})}
    r = await client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": q.prompt}], "temperature": 0,
        "max_tokens": MAX_TOKENS, "quality": quality})
    r.raise_for_status()
    body = r.json()
    choice = body["choices"][0]
    answer = choice["message"]["content"]
    return {**q.to_dict(), "split": split_of(q), "answer": answer,
            "finish_reason": choice["finish_reason"],
            "completion_tokens": body["usage"]["completion_tokens"], "right": judge(q, answer),
            "signals": body["quality"]["components"], "served_score": body["quality"]["score"]}


async def cross_tier(client: httpx.AsyncClient, rows: list[dict], next_tier: str) -> None:
    """The next tier's mean logprob of each answer (in the default graph: the same model)."""
    for i in range(0, len(rows), 32):
        chunk = rows[i:i + 32]
        r = await client.post("/v1/quality/score", json={
            "model": MODEL, "tier": next_tier,
            "pairs": [{"prompt": x["prompt"], "answer": x["answer"] or " "} for x in chunk]})
        r.raise_for_status()
        for row, report in zip(chunk, r.json()["data"]):
            if "mean_logprob" in report["components"]:
                row["signals"]["cross_tier_logprob"] = report["components"]["mean_logprob"]


async def collect(url: str, concurrency: int, out: Path, tier: str | None) -> list[dict]:
    from tqdm import tqdm

    questions = build_questions()
    order = {q.id: i for i, q in enumerate(questions)}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        bar = tqdm(total=len(questions), desc="questions", unit="q")

        async def one(i: int) -> dict:
            row = await ask(client, questions[i], tier)
            bar.update()
            return row

        rows, _ = await load.run_concurrent(one, len(questions), concurrency)
        rows.sort(key=lambda r: order[r["id"]])  # the file in question order, as before
        bar.close()
        await cross_tier(client, rows, NEXT_TIER)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    right = sum(r["right"] for r in rows)
    print(f"{len(rows)} answers, {right} right ({right / len(rows):.1%}) -> {out}")
    return rows


# ---------------------------------------------------------------------------------------------
# Fitting and the report (offline, deterministic)
# ---------------------------------------------------------------------------------------------


def load_rows(path: Path = ANSWERS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def matrix(rows: list[dict], features: list[str], means: list[float]) -> list[list[float]]:
    """Feature rows; a missing signal takes its fit-split mean, as the served score does."""
    return [[r["signals"].get(f, m) for f, m in zip(features, means)] for r in rows]


def auc(labels: list[int], scores: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return None if len(set(labels)) < 2 else float(roc_auc_score(labels, scores))


def fit(rows: list[dict]):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from deployments.quality import Calibration

    train = [r for r in rows if r["split"] == "fit"]
    present = [f for f in FEATURES if any(f in r["signals"] for r in train)]
    means = [float(np.mean([r["signals"][f] for r in train if f in r["signals"]])) for f in present]
    x = np.array(matrix(train, present, means))
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - means) / scale
    y = np.array([int(r["right"]) for r in train])
    kinds = [r["kind"] for r in train]
    cv = {c: leave_one_kind_out_auc(z, y, kinds, c) for c in C_GRID}
    c = max(C_GRID, key=lambda k: (round(cv[k], 3), -k))  # ties: the stronger regularisation
    model = LogisticRegression(C=c, max_iter=1000).fit(z, y)
    calibration = Calibration(features=present, mean=means, scale=scale.tolist(),
                              coef=model.coef_[0].tolist(), intercept=float(model.intercept_[0]),
                              threshold=0.5)
    calibration.selection = {"C": c, "leave_one_kind_out_auc": {str(k): round(v, 4)
                                                                 for k, v in cv.items()}}
    right_scores = sorted(score_rows(calibration, [r for r in train if r["right"]]))
    # The highest threshold that passes RIGHT_PASS_TARGET of the right answers on the fit split.
    cut = right_scores[int(math.floor((1 - RIGHT_PASS_TARGET) * len(right_scores)))]
    calibration.threshold = round(cut - 1e-6, 6)
    calibration.operating_point = (f"passes {RIGHT_PASS_TARGET:.0%} of right answers on the fit "
                                   f"split ({len(train)} answers of {MODEL})")
    return calibration


def leave_one_kind_out_auc(z, y, kinds: list[str], c: float) -> float:
    """Mean AUC over the kinds of the fit split, each scored by a model fitted without it."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    aucs = []
    for kind in sorted(set(kinds)):
        held = np.array([k == kind for k in kinds])
        if len(set(y[held])) < 2:
            continue  # a kind answered all right (or all wrong) has no AUC
        model = LogisticRegression(C=c, max_iter=1000).fit(z[~held], y[~held])
        aucs.append(auc(list(y[held]), list(model.decision_function(z[held]))))
    return float(np.mean(aucs))


def score_rows(calibration, rows: list[dict]) -> list[float]:
    from deployments.quality import score_signals

    return [score_signals(r["signals"], calibration).score for r in rows]


def report(rows: list[dict], calibration) -> dict:
    out: dict = {"answers": len(rows), "right": sum(r["right"] for r in rows),
                 "threshold": calibration.threshold, "operating_point": calibration.operating_point,
                 "selection": getattr(calibration, "selection", None),
                 "features": dict(zip(calibration.features, calibration.coef)), "splits": {}}
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    out["accuracy_by_kind"] = {k: round(sum(r["right"] for r in v) / len(v), 3)
                               for k, v in sorted(by_kind.items())}
    signal_names = sorted({k for r in rows for k in r["signals"]})
    for split in ("fit", "test", "heldout"):
        part = [r for r in rows if r["split"] == split]
        labels = [int(r["right"]) for r in part]
        scores = score_rows(calibration, part)
        passed = [s >= calibration.threshold for s in scores]
        right = [p for p, y in zip(passed, labels) if y]
        wrong = [p for p, y in zip(passed, labels) if not y]
        entry = {
            "answers": len(part), "right": sum(labels),
            "auc_calibrated": auc(labels, scores),
            # Baseline: shorter answers are more often right here (or the reverse); either way
            # a gate must beat what length alone tells.
            "auc_answer_length": _best_direction(auc(labels, [-r["completion_tokens"] for r in part])),
            "right_passed": sum(right) / len(right) if right else None,
            "wrong_passed": sum(wrong) / len(wrong) if wrong else None,
            "signals": {},
        }
        for name in signal_names:
            have = [(int(r["right"]), r["signals"][name]) for r in part if name in r["signals"]]
            if have:
                entry["signals"][name] = _best_direction(auc(*map(list, zip(*have))))
        out["splits"][split] = entry
    return out


def _best_direction(value: float | None) -> float | None:
    """A signal alone, read in its better direction (an AUC of 0.3 is 0.7 upside down)."""
    return None if value is None else round(max(value, 1 - value), 4)


def markdown(r: dict) -> str:
    test, held = r["splits"]["test"], r["splits"]["heldout"]
    pct = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
    num = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"{r['answers']} answers of {MODEL} (greedy, {MAX_TOKENS} tokens), {r['right']} right "
        f"({r['right'] / r['answers']:.1%}). Threshold {r['threshold']:.3f}: {r['operating_point']}.",
        "",
        f"Logistic regression over {len(r['features'])} signals, C = {r['selection']['C']} chosen by "
        f"leave-one-kind-out AUC on the fit split ({r['selection']['leave_one_kind_out_auc']}).",
        "",
        "| ROC AUC, right vs wrong | test split | held-out kind |",
        "|---|---|---|",
        f"| **calibrated score** | **{num(test['auc_calibrated'])}** | **{num(held['auc_calibrated'])}** |",
        f"| answer length (baseline) | {num(test['auc_answer_length'])} | {num(held['auc_answer_length'])} |",
    ]
    for name in sorted(test["signals"], key=lambda n: -(test["signals"][n] or 0)):
        lines.append(f"| {name} alone | {num(test['signals'][name])} | "
                     f"{num(held['signals'].get(name))} |")
    lines += ["", "| at the threshold | test split | held-out kind |", "|---|---|---|",
              f"| right answers passed | {pct(test['right_passed'])} | {pct(held['right_passed'])} |",
              f"| wrong answers passed | {pct(test['wrong_passed'])} | {pct(held['wrong_passed'])} |",
              "", "| kind | greedy accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.0%} |" for k, v in r["accuracy_by_kind"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--url", default="http://127.0.0.1:8000")
    c.add_argument("--concurrency", type=int, default=16)
    c.add_argument("--tier", default=None, help="ask this tier (default: the model's first)")
    c.add_argument("--out", type=Path, default=ANSWERS)
    f = sub.add_parser("fit")
    f.add_argument("--answers", type=Path, default=ANSWERS)
    args = parser.parse_args()
    if args.command == "collect":
        asyncio.run(collect(args.url, args.concurrency, args.out, args.tier))
        return
    rows = load_rows(args.answers)
    calibration = fit(rows)
    result = report(rows, calibration)
    calibration.save(fitted_on=str(args.answers.relative_to(ROOT.parent)), answers=len(rows),
                     selection=calibration.selection)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality_calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "quality_calibration.md").write_text(markdown(result))
    sys.stdout.write(markdown(result))


if __name__ == "__main__":
    main()
