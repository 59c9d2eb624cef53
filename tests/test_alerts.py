"""The alerts in cluster/prometheus-rules.yml, run by `promtool test rules` on synthetic series:
each one fires when its objective is broken and is quiet before, and again after (it resolves).

The promtool test file is built here from SCENARIOS; each expected alert's annotations are
rendered from the rules file itself, so the runbook text lives in one place.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deployments.metrics import SPECS
from tests.support.metrics import VLLM_SCRAPED

RULES = Path(__file__).resolve().parents[1] / "cluster" / "prometheus-rules.yml"
PROMTOOL = shutil.which("promtool")
# .ci/run installs Debian's prometheus package and sets this: there, no promtool is a failure.
if PROMTOOL is None and os.environ.get("GRAPHSERVE_REQUIRE_PROMTOOL") != "1":
    pytest.skip("promtool not installed (Debian: apt-get install prometheus)", allow_module_level=True)

# Serve's own metric used by the rules (each replica exports its starts counter once).
SERVE_SCRAPED = {"ray_serve_deployment_replica_starts_total"}
# vLLM's KV cache gauge, besides the series the dashboard reads.
VLLM_RULES_ONLY = {"ray_vllm_kv_cache_usage_perc"}

OK = 'ray_graphserve_requests_total{route="/v1/chat/completions", status="200"}'
ERR = 'ray_graphserve_requests_total{route="/v1/chat/completions", status="503"}'
TYPO = 'ray_graphserve_requests_total{route="other", status="404"}'


def ttft(le: str) -> str:
    return f'ray_vllm_time_to_first_token_seconds_bucket{{model_name="m", le="{le}"}}'


def starts(replica: str) -> str:
    return (f'ray_serve_deployment_replica_starts_total{{application="graphserve", '
            f'deployment="fast", replica="{replica}"}}')


# alert -> (input series at 1-minute steps, [(minute, labels of the expected alert or None)]).
# Per minute: 600 requests; 5xx at the share each scenario names.
SCENARIOS = {
    # 17 % errors from minute 60 to 120: fires, then resolves once the 5-minute window is clean.
    # A stream of 404s on unknown paths never counts.
    "GraphserveAvailabilityFastBurn": (
        {OK: "0+600x180", ERR: "0x60 0+120x60 7200x60", TYPO: "0+600x180"},
        [(50, None), (118, {}), (135, None)]),
    # No 5xx series at all: the ratios are 0 (quiet), not absent.
    "GraphserveAvailabilityFastBurn/no errors yet": (
        {OK: "0+600x60"}, [(10, None), (60, None)]),
    # 8 % errors for five hours: too few for the fast burn; the slow one fires once they are
    # over 6 % of the 6-hour window (minute ~230, then 15 minutes pending).
    "GraphserveAvailabilitySlowBurn": (
        {OK: "0+600x460", ERR: "0x60 0+52x300 15600x100"},
        [(50, None), (200, None), (320, {}), (400, None)]),
    # First tokens under 0.5 s, then between 2.5 and 5 s (p95 ~4.9 s), then fast again.
    "GraphserveTimeToFirstTokenHigh": (
        {ttft("0.5"): "0+10x60 600x60 600+10x60", ttft("2.5"): "0+10x60 600x60 600+10x60",
         ttft("5"): "0+10x180", ttft("+Inf"): "0+10x180"},
        [(50, None), (90, {"model_name": "m"}), (140, None)]),
    # Three failed health checks in minutes 11-13.
    "GraphserveEngineUnhealthy": (
        {'ray_graphserve_health_check_failures_total{reason="stalled"}': "0x10 1 2 3 3x40"},
        [(5, None), (14, {"reason": "stalled"}), (30, None)]),
    # One replica all along; four more start in minutes 20-26 (a crash loop).
    "GraphserveReplicaRestarts": (
        {starts("a"): "1x90", starts("b"): "_x20 1x70", starts("c"): "_x22 1x68",
         starts("d"): "_x24 1x66", starts("e"): "_x26 1x64"},
        [(10, None), (30, {"application": "graphserve", "deployment": "fast"}), (60, None)]),
    # Requests waiting in the engine: none, then one more every minute, then flat at 30.
    "GraphserveEngineQueueGrowing": (
        {'ray_vllm_num_requests_waiting{model_name="m"}': "0x20 0+1x30 30x40"},
        [(15, None), (45, {"model_name": "m"}), (80, None)]),
    "GraphserveKVCacheNearlyFull": (
        {'ray_vllm_kv_cache_usage_perc{model_name="m"}': "0.5x20 0.95x30 0.5x30"},
        [(15, None), (40, {"model_name": "m"}), (70, None)]),
    # A day at 10 % of answers failing the gate, then 100 minutes at 50 %, then 10 % again.
    "GraphserveGateFailuresJump": (
        {'ray_graphserve_quality_score_count{tier="fast"}': "0+10x1800",
         'ray_graphserve_quality_gate_failures_total{tier="fast"}': "0+1x1500 1500+5x100 2000+1x200"},
        [(1490, None), (1560, {"tier": "fast"}), (1650, None)]),
    "GraphserveEscalationsJump": (
        {'ray_graphserve_quality_score_count{tier="fast"}': "0+10x1800",
         'ray_graphserve_quality_escalations_total{tier="careful"}': "0+1x1500 1500+5x100 2000+1x200"},
        [(1490, None), (1560, {}), (1650, None)]),
    # Answers scored without relevance for 20 minutes.
    "GraphserveEmbedderDown": (
        {'ray_graphserve_quality_degraded_total{component="relevance"}': "0x20 0+5x20 100x40"},
        [(15, None), (35, {}), (60, None)]),
    # Four checks a minute: all right, then all wrong for an hour, then right again.
    "GraphserveCanaryFailing": (
        {'ray_graphserve_canary_checks_total{tier="fast", correct="true"}': "0+4x60 240x60 240+4x60",
         'ray_graphserve_canary_checks_total{tier="fast", correct="false"}': "0x60 0+4x60 240x60"},
        [(50, None), (100, {"tier": "fast"}), (165, None)]),
    # A tier deployed broken: it never answered right, so it has no correct="true" series at all,
    # until it is fixed at minute 60.
    "GraphserveCanaryFailing/never right": (
        {'ray_graphserve_canary_checks_total{tier="new", correct="false"}': "0+4x60 240x60",
         'ray_graphserve_canary_checks_total{tier="new", correct="true"}': "_x60 0+4x60"},
        [(5, None), (45, {"tier": "new"}), (100, None)]),
}


# Recording rules whose numerator may not exist yet: (series, minute, rule, labels, value).
RECORDED = [
    ({OK: "0+600x60"}, 10, "graphserve:request_errors:ratio_rate5m", {}, 0),
    ({'ray_graphserve_canary_checks_total{tier="new", correct="false"}': "0+4x60"}, 45,
     "graphserve:canary_correct:ratio_30m", {"tier": "new"}, 0),
    ({'ray_graphserve_quality_score_count{tier="fast"}': "0+10x60"}, 30,
     "graphserve:gate_failures:ratio_rate15m", {"tier": "fast"}, 0),
    ({'ray_graphserve_quality_score_count{tier="fast"}': "0+10x60",
      'ray_graphserve_quality_escalations_total{tier="careful"}': "0+5x60"}, 30,
     "graphserve:gate_escalations:ratio_rate15m", {}, 0.5),
]


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def rendered(annotations: dict[str, str], labels: dict[str, str]) -> dict[str, str]:
    """Alert annotations as Prometheus renders them (the rules use `$labels` only)."""
    return {k: re.sub(r"{{\s*\$labels\.(\w+)\s*}}", lambda m: labels[m.group(1)], v)
            for k, v in annotations.items()}


def promtool_tests() -> dict:
    """promtool's test file: every scenario's alert checks, then the RECORDED values."""
    alerts, tests = rules(), []
    for scenario, (series, checks) in SCENARIOS.items():
        name = scenario.split("/")[0]
        rule = alerts[name]
        tests.append({
            "name": scenario, "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [{
                "eval_time": f"{minute}m", "alertname": name,
                "exp_alerts": [] if labels is None else [{
                    "exp_labels": {**labels, **rule.get("labels", {})},
                    "exp_annotations": rendered(rule["annotations"], labels)}],
            } for minute, labels in checks],
        })
    for series, minute, rule, labels, value in RECORDED:
        tests.append({
            "name": f"{rule} at minute {minute}", "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": [{"expr": rule, "eval_time": f"{minute}m", "exp_samples": [{
                "labels": rule + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                "value": value}]}],
        })
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL or "promtool", *args], capture_output=True, text=True,
                          timeout=120)


def test_the_rules_file_is_valid():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_runbook_a_scenario_that_fires_and_one_that_resolves():
    alerts = rules()
    assert set(alerts) == {s.split("/")[0] for s in SCENARIOS}
    for name, (_, checks) in ((s, c) for s, c in SCENARIOS.items() if "/" not in s):
        assert {"summary", "runbook"} <= set(alerts[name]["annotations"]), name
        assert alerts[name]["labels"]["severity"] in ("page", "ticket"), name
        fired = [m for m, labels in checks if labels is not None]
        assert fired and any(m < fired[0] for m, labels in checks if labels is None), name
        assert any(m > fired[-1] for m, labels in checks if labels is None), name  # resolves


def test_every_alert_fires_and_resolves_in_promtool(tmp_path):
    spec = tmp_path / "prometheus-rules.test.yml"
    spec.write_text(yaml.safe_dump(promtool_tests(), sort_keys=False))
    out = promtool("test", "rules", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_rules_name_only_metrics_that_exist():
    exported = set()
    for s in SPECS.values():
        exported |= ({s.exported} if s.kind == "counter"
                     else {f"{s.exported}_{x}" for x in ("bucket", "sum", "count")})
    named = set(re.findall(r"\bray_[a-z0-9_]+", RULES.read_text()))
    unknown = named - exported - VLLM_SCRAPED - VLLM_RULES_ONLY - SERVE_SCRAPED
    assert not unknown, unknown
