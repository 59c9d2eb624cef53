"""Calibrate the quality gate on what a served model actually says (`make calibrate`).

    python -m benchmarks.calibrate collect --questions FILE.jsonl [--tier T --next-tier N]
    python -m benchmarks.calibrate relabel     # re-judge stored answers with the current matcher
    python -m benchmarks.calibrate fit [--answers FILE.jsonl ...] [--out CALIBRATION.json]

`collect` sends every question of a labelled JSONL (id, prompt, expected, aliases, judge, and a
`kind` or `topic`) to the running graph as a user's request (greedy, 64 tokens, one attempt, the
graph's consistency samples), judges each answer with the matcher (benchmarks/questions.py), and
stores answer, label, every signal the router computed, the answer's likelihood under the next
tier, and the model, dtype and sampling it was made with, in data/answers_<set>.jsonl (beside
that model's answers in other dtypes: run it once per dtype the tier is served in).

`fit` is offline and deterministic. Training rows: the `fit` split of every answers file, each
file weighing the same (the hand-written half counts as much as the larger templated set). The
feature set and regularisation are chosen by the mean AUC *within* a kind of question, on
predictions for kinds left out of the fit (so the score ranks answers, not kinds); a Platt map
fitted on those left-out predictions turns the logit into a probability that holds off the
fit's kinds. Reported (results/quality_calibration.{json,md}, a reliability diagram): the
templated set's test split and held-out kind, and the hand-written set's test half scored
leave-one-topic-out, each with AUC beside answer length, a constant per kind, the within-kind
AUC, Brier against the base rate, ECE, and the pass rates at the threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import httpx

from benchmarks import load
from benchmarks.report import write_results
from benchmarks.questions import HELD_OUT, Question, judge

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
RESULTS = ROOT / "results"
QUESTION_SETS = {"templated": DATA / "templated_questions.jsonl",
                 "natural": DATA / "natural_questions.jsonl"}
MAX_TOKENS = 64
# Signal sets the fit chooses among (answer length is the baseline, never a feature). The
# narrower ones leave out what tells kinds of question apart more than right from wrong.
_HEAD = ["head_mean_logprob", "head_min_logprob", "head_mean_entropy"]
_ANSWER = ["key_logprob", "key_min_logprob", "key_entropy", "key_margin", "content_mean_logprob",
           "content_mean_entropy"]
_CONFIDENCE = ["mean_logprob", "min_logprob", "p10_logprob", "mean_entropy", "agreement", "overlap",
               "consistency"]
FEATURE_SETS = {
    "all": [*_CONFIDENCE, *_HEAD, *_ANSWER, "relevance", "repetition", "completeness"],
    "confidence": [*_CONFIDENCE, *_HEAD, *_ANSWER],
    "confidence+form": [*_CONFIDENCE, *_HEAD, *_ANSWER, "repetition", "completeness"],
    "answer+agreement": [*_ANSWER, "agreement", "overlap", "consistency"],
}
# Signals that need consistency samples drawn beside the answer (`router.quality.samples` > 0).
SAMPLE_SIGNALS = {"agreement", "overlap", "consistency"}
C_GRID = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
# The operating point: the highest threshold that still passes this share of right answers
# (out-of-kind predictions on the fit split): blocking good answers costs retries for nothing.
RIGHT_PASS_TARGET = 0.85
# The off-topic guard's floor: below the relevance of all but this share of the fit's right answers.
RELEVANCE_FLOOR_SHARE = 0.01
BINS = 10  # equal-width probability bins for ECE and the reliability diagram
CASCADE_BANDS = (0.2, 0.3, 0.4, 0.5)  # sample_below values whose sampled share is reported


# ---------------------------------------------------------------------------------------------
# Questions and answers
# ---------------------------------------------------------------------------------------------


def load_questions(path: Path) -> list[dict]:
    """A labelled JSONL as question rows: `kind` is the topic for hand-written sets."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{**r, "kind": r.get("kind") or r["topic"], "aliases": r.get("aliases", []),
             "split": r.get("split") or half_split(r["id"]), "set": set_name(path)} for r in rows]


def set_name(question_file: Path) -> str:
    return question_file.stem.removesuffix("_questions")


def half_split(question_id: str) -> str:
    """Hand-written sets: half of each set fits, half is reported on (leave-one-topic-out)."""
    return "fit" if int(hashlib.sha1(question_id.encode()).hexdigest(), 16) % 2 == 0 else "test"


def question_of(row: dict) -> Question:
    return Question(**{k: row[k] for k in Question.__dataclass_fields__})


def answers_file(question_file: Path) -> Path:
    return DATA / f"answers_{set_name(question_file)}.jsonl"


def load_rows(paths: list[Path] | None = None) -> list[dict]:
    paths = paths or [answers_file(p) for p in QUESTION_SETS.values()]
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]


def relabel(path: Path) -> int:
    """Judge a stored answers file again with the current matcher; returns how many changed."""
    rows = load_rows([path])
    changed = 0
    for r in rows:
        right = judge(question_of(r), r["answer"])
        changed += right != r["right"]
        r["right"] = right
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return changed


async def ask(client: httpx.AsyncClient, q: dict, model: str, tier: str | None,
              samples: int) -> dict:
    # samples drawn with every answer (sample_below 1), whatever the graph's cascade default
    quality = {"max_attempts": 1, "samples": samples, "sample_below": 1.0 if samples else 0.0,
               **({"tier": tier} if tier else {})}
    r = await client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": q["prompt"]}], "temperature": 0,
        "max_tokens": MAX_TOKENS, "quality": quality})
    r.raise_for_status()
    body = r.json()
    choice = body["choices"][0]
    answer = choice["message"]["content"]
    return {**q, "answer": answer, "finish_reason": choice["finish_reason"],
            "completion_tokens": body["usage"]["completion_tokens"],
            "right": judge(question_of(q), answer), "signals": body["quality"]["components"],
            "served_score": body["quality"]["score"], "tier": body["quality"]["tier"]}


async def cross_tier(client: httpx.AsyncClient, rows: list[dict], model: str,
                     next_tier: str) -> None:
    """The next tier's mean logprob of each answer (in the default graph: the same model)."""
    for i in range(0, len(rows), 32):
        chunk = rows[i:i + 32]
        r = await client.post("/v1/quality/score", json={
            "model": model, "tier": next_tier,
            "pairs": [{"prompt": x["prompt"], "answer": x["answer"] or " "} for x in chunk]})
        r.raise_for_status()
        for row, report in zip(chunk, r.json()["data"]):
            if "mean_logprob" in report["components"]:
                row["signals"]["cross_tier_logprob"] = report["components"]["mean_logprob"]


async def loaded(client: httpx.AsyncClient, tier: str | None, limit_s: float = 900) -> dict:
    """/health's deployments once the tier (else every tier) has loaded its model."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        try:
            health = (await client.get("/health")).json().get("deployments", {})
        except (httpx.HTTPError, ValueError):
            health = {}
        tiers = [n for n, d in health.items() if d.get("role") == "llm" and (tier in (None, n))]
        if tiers and all("model" in health[n] for n in tiers):
            return health
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"no loaded tier after {limit_s:.0f} s: {health}")
        await asyncio.sleep(5)


async def collect(url: str, questions_file: Path, model: str | None, tier: str | None,
                  next_tier: str | None, samples: int, sample_temperature: float,
                  concurrency: int, out: Path) -> list[dict]:
    from tqdm import tqdm

    questions = load_questions(questions_file)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        health = await loaded(client, tier)
        tiers = [name for name, d in health.items() if d.get("role") == "llm"]
        tier = tier or tiers[0]
        model = model or health[tier]["model"]
        made_with = {"model": model, "dtype": health[tier].get("dtype"), "tier": tier,
                     "sampling": {"temperature": 0, "max_tokens": MAX_TOKENS},
                     "samples": {"k": samples, "temperature": sample_temperature}}
        bar = tqdm(total=len(questions), desc=f"{questions_file.name} -> {tier}", unit="q")

        failed: list[str] = []

        async def one(i: int) -> dict | None:
            try:
                row = await ask(client, questions[i], model, tier, samples)
            except httpx.HTTPError as e:  # counted and left out: no answer to label
                failed.append(f"{questions[i]['id']}: {e}")
                row = None
            bar.update()
            return row

        rows, _ = await load.run_concurrent(one, len(questions), concurrency)
        rows = [r for r in rows if r is not None]
        bar.close()
        if failed:
            print(f"{len(failed)} of {len(questions)} requests failed (left out):",
                  *failed[:10], sep="\n  ")
        order = {q["id"]: i for i, q in enumerate(questions)}
        rows.sort(key=lambda r: order[r["id"]])
        if next_tier:
            await cross_tier(client, rows, model, next_tier)
    rows = [{**r, "made_with": made_with} for r in rows]
    kept = other_dtypes(out, made_with)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in kept + rows))
    right = sum(r["right"] for r in rows)
    print(f"{len(rows)} answers, {right} right ({right / len(rows):.1%}) -> {out}"
          + (f" (beside {len(kept)} of the same model in another dtype)" if kept else ""))
    return rows


def other_dtypes(path: Path, made_with: dict) -> list[dict]:
    """The answers in `path` that a new collection keeps: the same model's in another dtype (a
    calibration fitted on both holds for both; AVX2 hosts serve float32, AVX-512 BF16 ones
    bfloat16). Another model's answers, or this dtype's, are replaced."""
    if not path.exists():
        return []
    return [r for r in load_rows([path]) if (r.get("made_with") or {}).get("model")
            == made_with["model"] and r["made_with"].get("dtype") != made_with["dtype"]]


# ---------------------------------------------------------------------------------------------
# Fitting (offline, deterministic)
# ---------------------------------------------------------------------------------------------


def auc(labels, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    return None if len(set(labels)) < 2 else float(roc_auc_score(labels, scores))


def set_weights(rows: list[dict]):
    """Each labelled set weighs the same in a fit, whatever its number of answers: the
    hand-written questions (what users ask) count as much as the templated battery."""
    import numpy as np

    sizes = {name: sum(r["set"] == name for r in rows) for name in {r["set"] for r in rows}}
    return np.array([len(rows) / (len(sizes) * sizes[r["set"]]) for r in rows])


class Model:
    """Standardised logistic regression over `features` with strength `c`: fit and logits."""

    def __init__(self, features: list[str], c: float, rows: list[dict]):
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        self.features, self.c = features, c
        self.mean = [float(np.mean([r["signals"][f] for r in rows if f in r["signals"]] or [0.0]))
                     for f in features]
        x = self.matrix(rows)
        self.scale = x.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        self.lr = LogisticRegression(C=c, max_iter=2000).fit(
            (x - self.mean) / self.scale, [int(r["right"]) for r in rows],
            sample_weight=set_weights(rows))

    def matrix(self, rows: list[dict]):
        import numpy as np

        return np.array([[r["signals"].get(f, m) for f, m in zip(self.features, self.mean)]
                         for r in rows])

    def logits(self, rows: list[dict]):
        return self.lr.decision_function((self.matrix(rows) - self.mean) / self.scale)


def out_of_group_logits(rows: list[dict], features: list[str], c: float):
    """Each row's logit from a model fitted without its kind of question."""
    import numpy as np

    out = np.zeros(len(rows))
    kinds = np.array([r["kind"] for r in rows])
    for kind in sorted(set(kinds)):
        held = kinds == kind
        train = [r for r, h in zip(rows, held) if not h]
        if len({r["right"] for r in train}) < 2:
            continue
        out[held] = Model(features, c, train).logits([r for r, h in zip(rows, held) if h])
    return out


def within_kind_auc(rows: list[dict], scores) -> tuple[float | None, dict[str, float]]:
    """Mean AUC within each kind that has both right and wrong answers, and each kind's."""
    per: dict[str, float] = {}
    for kind in sorted({r["kind"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        value = auc([int(rows[i]["right"]) for i in idx], [scores[i] for i in idx])
        if value is not None:
            per[kind] = round(value, 4)
    return (round(sum(per.values()) / len(per), 4) if per else None), per


def platt(logits, labels, weights=None) -> list[float]:
    """Slope and intercept mapping logits to probabilities (near-unregularised 1-D fit)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=2000).fit([[z] for z in logits], labels,
                                                      sample_weight=weights)
    return [float(lr.coef_[0][0]), float(lr.intercept_[0])]


def feature_sets(train: list[dict], samples: bool = True) -> dict[str, list[str]]:
    """FEATURE_SETS less the signals most training answers lack (answers collected before a
    signal existed, or without samples): a fit must not lean on a fill-in mean. Without
    `samples`, for a gate that draws none, less the signals samples give."""
    def present(f: str) -> bool:
        return (sum(f in r["signals"] for r in train) >= 0.9 * len(train)
                and (samples or f not in SAMPLE_SIGNALS))

    sets = {name: [f for f in features if present(f)] for name, features in FEATURE_SETS.items()}
    unique = {}
    for name, features in sets.items():  # a set that became another one's twin is tried once
        if features and features not in unique.values():
            unique[name] = features
    return unique


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def fit(rows: list[dict], choose: tuple[str, float] | None = None, samples: bool = True):
    """The calibration from the fit split of `rows`; `choose` fixes the feature set and C
    (leave-one-topic-out refits reuse the full fit's choice); `samples`: whether the gate it is
    for draws consistency samples."""
    from deployments.quality import Calibration

    train = [r for r in rows if r["split"] == "fit"]
    labels = [int(r["right"]) for r in train]
    selection: dict[str, float] = {}
    sets = feature_sets(train, samples)
    if choose is None:
        for name, features in sets.items():
            for c in C_GRID:
                mean, _ = within_kind_auc(train, out_of_group_logits(train, features, c))
                selection[f"{name} C={c}"] = mean or 0.0
        best = max(selection, key=lambda k: (round(selection[k], 3), -float(k.split("C=")[1])))
        choose = (best.split(" C=")[0], float(best.split("C=")[1]))
    name, c = choose
    features = sets[name]
    model = Model(features, c, train)
    held_out = out_of_group_logits(train, features, c)
    slope, offset = platt(held_out, labels, set_weights(train))
    calibration = Calibration(features=features, mean=model.mean, scale=model.scale.tolist(),
                              coef=model.lr.coef_[0].tolist(),
                              intercept=float(model.lr.intercept_[0]), threshold=0.5,
                              platt=[slope, offset])
    # The operating point, on the probabilities of answers of kinds the regression did not see.
    right = sorted(sigmoid(slope * z + offset) for z, y in zip(held_out, labels) if y)
    calibration.threshold = round(right[int(math.floor((1 - RIGHT_PASS_TARGET) * len(right)))]
                                  - 1e-6, 6)
    calibration.operating_point = (f"passes {RIGHT_PASS_TARGET:.0%} of right answers of kinds "
                                   f"left out of the fit ({len(train)} answers)")
    calibration.selection = {"features": name, "C": c, "within_kind_auc": {
        k: round(v, 4) for k, v in selection.items() if v is not None}}
    calibration.relevance_floor = relevance_floor(train)
    return calibration


def relevance_floor(train: list[dict]) -> float | None:
    """The off-topic guard: the relevance that all but RELEVANCE_FLOOR_SHARE of the right answers
    reach, rounded down to 0.05. Fitted on right answers alone: the labelled sets hold no answers
    to other questions, so the regression cannot learn to reject them (benchmarks/offtopic.py
    measures the guard on such pairs)."""
    values = sorted(r["signals"]["relevance"] for r in train
                    if r["right"] and "relevance" in r["signals"])
    if not values:
        return None
    return math.floor(values[int(RELEVANCE_FLOOR_SHARE * (len(values) - 1))] * 20) / 20


def fit_gate(rows: list[dict], samples: bool = True):
    """What the gate loads: the fit, what it was made with, and (for a gate that draws samples)
    the fit without sample signals, which the cascade scores an answer with first."""
    calibration = fit(rows, samples=samples)
    calibration.fitted_for = fitted_for(rows, calibration, samples)
    if samples:
        free = fit(rows, samples=False)
        free.fitted_for = fitted_for(rows, free, False)
        calibration.without_samples = free
    return calibration


def fitted_for(rows: list[dict], calibration, samples: bool = True) -> dict:
    """What the answers were made with: the model, dtypes, sampling, and the samples the gate
    draws (none when the fit left their signals out)."""
    made = [r.get("made_with") or {} for r in rows if r["split"] == "fit"]
    dtypes = sorted({m.get("dtype") for m in made if m.get("dtype")})
    first = next((m for m in made if m), {})
    return {"model": first.get("model"), "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "tier": first.get("tier"), "sampling": first.get("sampling"),
            "samples": first.get("samples") if samples else {"k": 0},
            "features": calibration.features,
            "answers": len(made)}


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def probabilities(calibration, rows: list[dict]) -> list[float]:
    from deployments.quality import score_signals

    return [score_signals(r["signals"], calibration).score for r in rows]


def evaluate(rows: list[dict], probs: list[float], threshold: float, base_rate: float,
             kind_rate: dict[str, float]) -> dict:
    """Ranking and calibration figures of predicted probabilities against the labels."""
    labels = [int(r["right"]) for r in rows]
    n = len(rows)
    within, per_kind = within_kind_auc(rows, probs)
    bins = [[] for _ in range(BINS)]
    for p, y in zip(probs, labels):
        bins[min(int(p * BINS), BINS - 1)].append((p, y))
    ece = sum(len(b) / n * abs(sum(p for p, _ in b) / len(b) - sum(y for _, y in b) / len(b))
              for b in bins if b)
    passed = [p >= threshold for p in probs]
    right = [p for p, y in zip(passed, labels) if y]
    wrong = [p for p, y in zip(passed, labels) if not y]
    kinds = {}
    for kind in sorted({r["kind"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        ys, ps = [labels[i] for i in idx], [probs[i] for i in idx]
        kinds[kind] = {
            "answers": len(idx), "accuracy": round(sum(ys) / len(ys), 3),
            "mean_predicted": round(sum(ps) / len(ps), 3), "auc_within": per_kind.get(kind),
            "brier": round(sum((p - y) ** 2 for p, y in zip(ps, ys)) / len(ys), 4),
            "brier_base_rate": round(sum((base_rate - y) ** 2 for y in ys) / len(ys), 4),
            "right_passed": _share([passed[i] for i in idx if labels[i]]),
            "wrong_passed": _share([passed[i] for i in idx if not labels[i]])}
    return {
        "answers": n, "right": sum(labels), "auc": _round(auc(labels, probs)),
        "auc_answer_length": _round(_best_direction(
            auc(labels, [-r["completion_tokens"] for r in rows]))),
        "auc_constant_per_kind": _round(auc(labels, [kind_rate.get(r["kind"], base_rate)
                                                     for r in rows])),
        "auc_within_kind_mean": within,
        "brier": round(sum((p - y) ** 2 for p, y in zip(probs, labels)) / n, 4),
        "brier_base_rate": round(sum((base_rate - y) ** 2 for y in labels) / n, 4),
        "ece": round(ece, 4), "right_passed": _share(right), "wrong_passed": _share(wrong),
        # the cascade: the share of answers that would draw samples at each sample_below
        "below": {str(b): _share([p < b for p in probs]) for b in CASCADE_BANDS},
        "reliability": [[round(sum(p for p, _ in b) / len(b), 4),
                         round(sum(y for _, y in b) / len(b), 4), len(b)] for b in bins if b],
        "kinds": kinds,
    }


def report(rows: list[dict], calibration, samples: bool = True, nested: bool = False) -> dict:
    """The calibration on questions it was not fitted on: the templated test split, the
    templated held-out kind, the hand-written test half leave-one-topic-out."""
    train = [r for r in rows if r["split"] == "fit"]
    base = sum(r["right"] for r in train) / len(train)
    rate = {k: sum(r["right"] for r in train if r["kind"] == k) /
            len([r for r in train if r["kind"] == k]) for k in {r["kind"] for r in train}}
    made_in = Counter(str((r.get("made_with") or {}).get("dtype")) for r in rows)
    out = {"answers": len(rows), "right": sum(r["right"] for r in rows), "fit_answers": len(train),
           "dtypes": dict(made_in),
           "base_rate": round(base, 4), "threshold": calibration.threshold,
           "operating_point": calibration.operating_point, "platt": calibration.platt,
           "relevance_floor": calibration.relevance_floor,
           "selection": getattr(calibration, "selection", None),
           "features": dict(zip(calibration.features, calibration.coef)), "sets": {}}
    held_out = f"templated held-out kind ({HELD_OUT})"
    for name, part in (("templated test", _part(rows, "templated", "test")),
                       (held_out, _part(rows, "templated", "heldout"))):
        if part:
            out["sets"][name] = evaluate(part, probabilities(calibration, part),
                                         calibration.threshold, base, rate)
    natural = _part(rows, "natural", "test")
    if natural:
        choose = (calibration.selection["features"], calibration.selection["C"])
        probs: dict[str, float] = {}
        for topic in sorted({r["kind"] for r in natural}):
            without = [r for r in rows if not (r["set"] == "natural" and r["kind"] == topic)]
            refit = fit(without, choose, samples)
            for r, p in zip([r for r in natural if r["kind"] == topic],
                            probabilities(refit, [r for r in natural if r["kind"] == topic])):
                probs[r["id"]] = p
        out["sets"]["hand-written test half, leave-one-topic-out"] = evaluate(
            natural, [probs[r["id"]] for r in natural], calibration.threshold, base, rate)
    if getattr(calibration, "without_samples", None) is not None:
        out["without_samples"] = report(rows, calibration.without_samples, False, nested=True)
    if not nested:
        out["signals"] = signal_aucs(rows)
    return out


def signal_aucs(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Each signal alone: its mean within-kind AUC over every answer of each set, read in its
    better direction (an entropy ranks right answers low). What each one brings to the fit."""
    names = sorted({k for r in rows for k in r["signals"]} - {"cross_tier_logprob"})
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        out[name] = {}
        for set_ in sorted({r["set"] for r in rows}):
            have = [r for r in rows if r["set"] == set_ and name in r["signals"]]
            value, _ = within_kind_auc(have, [r["signals"][name] for r in have])
            out[name][set_] = _best_direction(value)
    return out


def _part(rows: list[dict], set_name: str, split: str) -> list[dict]:
    return [r for r in rows if r["set"] == set_name and r["split"] == split]


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _best_direction(value: float | None) -> float | None:
    """A baseline read in its better direction (an AUC of 0.3 is 0.7 upside down)."""
    return None if value is None else max(value, 1 - value)


def markdown(r: dict) -> str:
    pct = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
    num = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    sets = r["sets"]
    sel = r["selection"]
    lines = [
        f"{r['answers']} answers ({r['right']} right; "
        + ", ".join(f"{n} in {d}" for d, n in sorted(r.get("dtypes", {}).items()))
        + f"); fitted on {r['fit_answers']} (base rate "
        f"{r['base_rate']:.1%}). Features: {sel['features']} ({len(r['features'])} signals), "
        f"C = {sel['C']}, chosen by the mean within-kind AUC of out-of-kind predictions on the "
        f"fit split; Platt map {r['platt'][0]:.3f} × logit + {r['platt'][1]:.3f}. Threshold "
        f"{r['threshold']:.3f}: {r['operating_point']}. Off-topic guard: relevance below "
        f"{r.get('relevance_floor')} scores 0.", "",
        "| | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    rows = [("answers (right)", lambda s: f"{s['answers']} ({s['right']})"),
            ("**AUC, calibrated score**", lambda s: f"**{num(s['auc'])}**"),
            ("AUC, answer length (baseline)", lambda s: num(s["auc_answer_length"])),
            ("AUC, a constant per kind (fit accuracy)", lambda s: num(s["auc_constant_per_kind"])),
            ("**AUC within a kind, mean**", lambda s: f"**{num(s['auc_within_kind_mean'])}**"),
            ("Brier score", lambda s: num(s["brier"])),
            ("Brier, base rate", lambda s: num(s["brier_base_rate"])),
            ("ECE (10 bins)", lambda s: num(s["ece"])),
            ("right answers passed", lambda s: pct(s["right_passed"])),
            ("wrong answers passed", lambda s: pct(s["wrong_passed"]))]
    lines += [f"| {label} | " + " | ".join(cell(s) for s in sets.values()) + " |"
              for label, cell in rows]
    free = r.get("without_samples")
    if free:  # the cascade's first look: the same answers, scored without their samples
        lines += ["", f"Without samples (the CPU default's score, and the cascade's first look at "
                  f"an answer; threshold {free['threshold']:.3f}, features: "
                  f"{free['selection']['features']}, C = {free['selection']['C']}):", "",
                  "| | " + " | ".join(free["sets"]) + " |", "|---|" + "---|" * len(free["sets"])]
        lines += [f"| {label} | " + " | ".join(cell(s) for s in free["sets"].values()) + " |"
                  for label, cell in rows[1:]]
        lines += [f"| would draw samples at sample_below {b} | " + " | ".join(
            pct(s["below"][str(b)]) for s in free["sets"].values()) + " |" for b in CASCADE_BANDS]
    if r.get("signals"):
        sets_ = sorted({k for v in r["signals"].values() for k in v})
        lines += ["", "Each signal alone, mean within-kind AUC over every answer of a set (in its "
                  "better direction):", "", "| signal | " + " | ".join(sets_) + " |",
                  "|---|" + "---|" * len(sets_)]
        lines += [f"| {name} | " + " | ".join(num(v.get(x)) for x in sets_) + " |"
                  for name, v in sorted(r["signals"].items(),
                                        key=lambda kv: -max(x or 0 for x in kv[1].values()))]
    for label, report_ in (("", r), (", without samples", free)):
        for name, s in (report_ or {}).get("sets", {}).items():
            lines += per_kind(f"**{name}**{label}, per kind:", s, num, pct)
    return "\n".join(lines) + "\n"


def per_kind(title: str, s: dict, num, pct) -> list[str]:
    """One report set's table by kind (or topic)."""
    lines = ["", title, "",
             "| kind | n | accuracy | predicted | AUC within | Brier | Brier base rate | "
             "right passed | wrong passed |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['answers']} | {v['accuracy']:.0%} | {v['mean_predicted']:.2f} | "
              f"{num(v['auc_within'])} | {v['brier']:.3f} | {v['brier_base_rate']:.3f} | "
              f"{pct(v['right_passed'])} | {pct(v['wrong_passed'])} |"
              for k, v in s["kinds"].items()]
    return lines


def reliability_plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for label, style, report_ in (("", "-", r), (", no samples", "--", r.get("without_samples"))):
        for i, (name, s) in enumerate((report_ or {}).get("sets", {}).items()):
            xs, ys, ns = zip(*s["reliability"])
            ax.plot(xs, ys, marker="o", linestyle=style, color=f"C{i}",
                    label=f"{name}{label} (ECE {s['ece']:.3f})")
    ax.set_xlabel("predicted P(right), bin mean")
    ax.set_ylabel("observed share right")
    ax.set_title("Reliability of the calibrated score")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--url", default="http://127.0.0.1:8000")
    c.add_argument("--questions", type=Path, default=QUESTION_SETS["natural"])
    c.add_argument("--model", default=None, help="default: the tier's model")
    c.add_argument("--tier", default=None, help="the tier to calibrate (default: the first)")
    c.add_argument("--next-tier", default=None, help="score each answer's likelihood there")
    c.add_argument("--samples", type=int, default=4, help="consistency samples (the config's)")
    c.add_argument("--config", type=Path, default=ROOT.parent / "serve_config.yaml",
                   help="the running graph's config: its samples' temperature is recorded")
    c.add_argument("--concurrency", type=int, default=6,
                   help="more only queues behind the engine (and times out) on a small host")
    c.add_argument("--out", type=Path, default=None)
    sub.add_parser("relabel")
    f = sub.add_parser("fit")
    f.add_argument("--answers", type=Path, nargs="*", default=None)
    f.add_argument("--out", type=Path, default=None, help="default: the shipped calibration")
    f.add_argument("--samples", type=int, default=4,
                   help="router.quality.samples of the gate it is for; 0: no sample signals")
    f.add_argument("--results", type=Path, default=RESULTS, help="where the report goes")
    args = parser.parse_args()
    if args.command == "collect":
        import yaml

        from deployments.config import GraphConfig

        graph = GraphConfig.model_validate(
            yaml.safe_load(args.config.read_text())["applications"][0]["args"])
        asyncio.run(collect(args.url, args.questions, args.model, args.tier, args.next_tier,
                            args.samples, graph.router.quality.sample_temperature,
                            args.concurrency, args.out or answers_file(args.questions)))
        return
    if args.command == "relabel":
        for path in QUESTION_SETS.values():
            print(f"{answers_file(path)}: {relabel(answers_file(path))} labels changed")
        return
    rows = load_rows(args.answers)
    samples = args.samples > 0
    calibration = fit_gate(rows, samples)
    result = report(rows, calibration, samples)
    calibration.save(args.out, selection=calibration.selection, answers=len(rows))
    write_results(args.results, "quality_calibration", result, markdown(result))
    reliability_plot(result, args.results / "quality_calibration.png")


if __name__ == "__main__":
    main()
