"""The calibrated gate on the served model's own answers (benchmarks/data/answers_*.jsonl), offline.

The answers and their signals are committed, so the fit is reproducible here without Ray or vLLM;
`make calibrate` regenerates them against a running graph. The synthetic set
(tests/data/calibration.jsonl) stays only as a regression test of the degenerate-output detectors.
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import calibrate
from benchmarks.questions import HELD_OUT, build_questions, split_of
from deployments.quality import CALIBRATION_FILE, Calibration, completeness, repetition

SYNTHETIC = Path(__file__).parent / "data" / "calibration.jsonl"
RESULTS = calibrate.RESULTS / "quality_calibration.json"


@pytest.fixture(scope="module")
def rows():
    return calibrate.load_rows()


@pytest.fixture(scope="module")
def fitted(rows):
    return calibrate.fit_gate(rows)


def test_the_templated_questions_file_is_the_builder_s_output():
    stored = calibrate.load_questions(calibrate.QUESTION_SETS["templated"])
    built = build_questions()
    assert [(r["id"], r["prompt"], r["expected"], r["split"]) for r in stored] == [
        (q.id, q.prompt, q.expected, split_of(q)) for q in built]


def test_the_hand_written_set_is_natural_questions_over_many_topics():
    questions = calibrate.load_questions(calibrate.QUESTION_SETS["natural"])
    assert len(questions) >= 400 and len({q["id"] for q in questions}) == len(questions)
    topics = Counter(q["kind"] for q in questions)
    assert len(topics) >= 20 and min(topics.values()) >= 15, topics
    for q in questions:
        assert q["judge"] in ("name", "number", "year") and q["expected"]
        if q["judge"] != "name":
            assert q["expected"].isdigit(), q["id"]
        else:  # the answer is not given away by the question
            assert q["expected"].lower() not in q["prompt"].lower(), q["id"]
    assert {q["split"] for q in questions} == {"fit", "test"}


def test_every_stored_answer_is_labelled_by_the_current_matcher(rows):
    sets = Counter(r["set"] for r in rows)
    assert sets["templated"] >= 800 and sets["natural"] >= 400, sets
    assert {r["kind"] for r in rows if r["split"] == "heldout"} == {HELD_OUT}
    for r in rows:  # every stored label is what the matcher says of the stored answer
        assert r["right"] == calibrate.judge(calibrate.question_of(r), r["answer"]), r["id"]
        assert r["made_with"]["model"] and r["made_with"]["dtype"], r["id"]
    counts = Counter(r["right"] for r in rows)
    assert counts[True] >= 100 and counts[False] >= 100, counts


def assert_same_fit(shipped: Calibration, fitted: Calibration) -> None:
    """Equal up to float rounding: the fit's last bits differ between CPUs (AVX2, AVX-512)."""
    assert shipped.features == fitted.features
    for name in ("mean", "scale", "coef", "platt"):
        assert getattr(shipped, name) == pytest.approx(getattr(fitted, name), abs=1e-6), name
    assert shipped.intercept == pytest.approx(fitted.intercept, abs=1e-6)
    assert shipped.threshold == pytest.approx(fitted.threshold, abs=1e-6)
    assert (shipped.operating_point, shipped.relevance_floor) == (
        fitted.operating_point, fitted.relevance_floor)


def test_shipped_calibration_is_the_fit_of_the_committed_answers(rows, fitted):
    shipped = Calibration.load()
    assert_same_fit(shipped, fitted)
    assert json.loads(CALIBRATION_FILE.read_text())["answers"] == len(rows)
    # It says what the answers were made with, so a tier serving something else is told apart.
    assert shipped.fitted_for == calibrate.fitted_for(rows, fitted)
    # and the fit without sample signals, the cascade's first look at an answer
    assert_same_fit(shipped.free, fitted.free)
    assert shipped.relevance_floor == fitted.relevance_floor == shipped.free.relevance_floor
    assert not set(shipped.free.features) & calibrate.SAMPLE_SIGNALS
    assert shipped.fitted_for["model"] == "smollm2-135m-instruct"
    assert shipped.fitted_for["features"] == shipped.features


def test_the_committed_report_is_what_the_fit_reports(rows, fitted):
    """benchmarks/results/quality_calibration.json (and RESULTS.md's figures) come from here."""
    assert rounded(json.loads(RESULTS.read_text())) == rounded(
        json.loads(json.dumps(calibrate.report(rows, fitted))))


def rounded(value, digits: int = 9):
    """Floats to `digits` places, all the way down: the fit's last bits differ between CPUs."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def test_calibrated_score_beats_answer_length_on_questions_it_was_not_fitted_on():
    report = json.loads(RESULTS.read_text())
    assert len(report["sets"]) == 3
    for name, part in report["sets"].items():
        assert part["auc"] > part["auc_answer_length"] + 0.05, (name, part)
        assert part["right_passed"] > part["wrong_passed"], (name, part)


def test_the_report_tells_probabilities_from_ranking():
    """Brier and ECE are figures of the probabilities; the within-kind AUC of the ranking."""
    rows = [{"id": str(i), "kind": "k" if i < 4 else "j", "right": i % 2 == 0,
             "completion_tokens": 10 + i} for i in range(8)]
    perfect = calibrate.evaluate(rows, [1.0 if r["right"] else 0.0 for r in rows], 0.5, 0.5, {})
    assert perfect["brier"] == 0 and perfect["ece"] == 0 and perfect["auc_within_kind_mean"] == 1
    assert perfect["right_passed"] == 1 and perfect["wrong_passed"] == 0
    flat = calibrate.evaluate(rows, [0.5] * 8, 0.5, 0.5, {})
    assert flat["brier"] == flat["brier_base_rate"] == 0.25 and flat["ece"] == 0
    assert flat["auc"] == 0.5


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


def test_a_fit_for_a_gate_that_draws_no_samples_uses_no_sample_signal(rows):
    """`fit --samples 0` (router.quality.samples: 0): no feature the gate would lack."""
    train = [r for r in rows if r["split"] == "fit"]
    with_samples = calibrate.feature_sets(train)
    without = calibrate.feature_sets(train, samples=False)
    assert any(set(f) & calibrate.SAMPLE_SIGNALS for f in with_samples.values())
    assert without and not any(set(f) & calibrate.SAMPLE_SIGNALS for f in without.values())
    assert len({tuple(f) for f in without.values()}) == len(without)  # no set tried twice


def test_the_off_topic_floor_is_below_nearly_every_right_answer(rows):
    """Fitted on right answers alone: at most RELEVANCE_FLOOR_SHARE of them fall below it, on a
    0.05 grid; none stored, no guard."""
    train = [r for r in rows if r["split"] == "fit"]
    floor = calibrate.relevance_floor(train)
    right = [r["signals"]["relevance"] for r in train if r["right"]]
    assert 0 < floor and round(floor * 20, 9) == int(round(floor * 20, 9))
    assert sum(x < floor for x in right) <= calibrate.RELEVANCE_FLOOR_SHARE * len(right)
    assert sum(x < floor + 0.05 for x in right) > 0  # the quantile rounded down, not far below
    assert calibrate.relevance_floor([{**r, "signals": {}} for r in train]) is None


def test_a_collection_keeps_the_same_model_s_answers_in_other_dtypes(tmp_path):
    """One answers file per set: a new collection replaces its own model and dtype's answers,
    keeps that model's in another dtype (the fit then holds for both), drops another model's."""
    made = [("smol", "float32"), ("smol", "bfloat16"), ("llama", "float32")]
    path = tmp_path / "answers_x.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "made_with": {"model": m, "dtype": d}})
                            + "\n" for i, (m, d) in enumerate(made)))
    kept = calibrate.other_dtypes(path, {"model": "smol", "dtype": "bfloat16"})
    assert [r["made_with"] for r in kept] == [{"model": "smol", "dtype": "float32"}]
    assert calibrate.other_dtypes(tmp_path / "none.jsonl", {"model": "smol", "dtype": "x"}) == []


def test_each_labelled_set_weighs_the_same_in_the_fit():
    rows = [{"set": "templated"}] * 3 + [{"set": "natural"}]
    w = calibrate.set_weights(rows)
    assert sum(w[:3]) == pytest.approx(sum(w[3:])) and sum(w) == pytest.approx(len(rows))
