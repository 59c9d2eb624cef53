"""The default weights and threshold hold on the labelled calibration set (real MiniLM, no Ray)."""

from benchmarks.quality_auc import auc_report


def test_score_separates_good_from_bad_answers():
    report = auc_report()
    assert report["pairs"] >= 200
    assert report["auc"] >= 0.95, report
    assert min(report["by_kind"].values()) >= 0.9, report
    assert report["accuracy_at_threshold"] >= 0.95, report
