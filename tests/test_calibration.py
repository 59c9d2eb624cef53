"""The calibrated gate on the served model's own answers (benchmarks/data/answers.jsonl), offline.

The answers and their signals are committed, so the fit is reproducible here without Ray or vLLM;
`make calibrate` regenerates them against a running graph. The synthetic set
(tests/data/calibration.jsonl) stays only as a regression test of the degenerate-output detectors.
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import calibrate
from benchmarks.questions import HELD_OUT, Question, judge
from deployments.quality import CALIBRATION_FILE, Calibration, completeness, repetition

SYNTHETIC = Path(__file__).parent / "data" / "calibration.jsonl"


@pytest.fixture(scope="module")
def rows():
    return calibrate.load_rows()


def test_the_labelled_set_is_real_answers_judged_by_the_matcher(rows):
    assert len(rows) >= 800 and len({r["kind"] for r in rows}) >= 8
    assert {r["split"] for r in rows} == {"fit", "test", "heldout"}
    assert {r["kind"] for r in rows if r["split"] == "heldout"} == {HELD_OUT}
    fields = Question.__dataclass_fields__
    for r in rows:  # every stored label is what the matcher says of the stored answer
        assert r["right"] == judge(Question(**{k: r[k] for k in fields}), r["answer"]), r["id"]
    counts = Counter(r["right"] for r in rows)
    assert counts[True] >= 100 and counts[False] >= 100, counts


def test_shipped_calibration_is_the_fit_of_the_committed_answers(rows):
    shipped, refit = Calibration.load(), calibrate.fit(rows)
    assert shipped.features == refit.features
    assert shipped.coef == pytest.approx(refit.coef, abs=1e-6)
    assert shipped.threshold == pytest.approx(refit.threshold, abs=1e-6)
    assert json.loads(CALIBRATION_FILE.read_text())["answers"] == len(rows)


def test_calibrated_score_beats_answer_length_on_unseen_questions(rows):
    report = calibrate.report(rows, Calibration.load())
    for split in ("test", "heldout"):
        part = report["splits"][split]
        assert part["auc_calibrated"] > part["auc_answer_length"] + 0.05, (split, part)
    test = report["splits"]["test"]
    # The operating point holds off the fit split: most right answers pass, fewer wrong ones do.
    assert test["right_passed"] > test["wrong_passed"] + 0.2, test


def test_degenerate_detectors_on_the_synthetic_set():
    pairs = [json.loads(line) for line in SYNTHETIC.read_text().splitlines() if line.strip()]
    by_kind: dict[str, list[dict]] = {}
    for p in pairs:
        by_kind.setdefault(p["kind"], []).append(p)
    assert all(repetition(p["answer"]) < 0.5 for p in by_kind["repetition"])
    assert all(completeness(p["answer"], p["finish_reason"]) == 0 for p in by_kind["empty"])
    assert all(completeness(p["answer"], p["finish_reason"]) <= 0.5 for p in by_kind["truncated"])
    assert all(repetition(p["answer"]) == 1 and completeness(p["answer"], "stop") == 1
               for p in by_kind["good"])
