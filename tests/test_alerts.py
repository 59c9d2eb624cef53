"""The alerts in cluster/prometheus-rules.yml, run by `promtool test rules` on synthetic series:
each one fires when its objective is broken and is quiet before, and again after (it resolves).

The promtool test file is built here from SCENARIOS; each expected alert's annotations are
rendered from the rules file itself, so the runbook text lives in one place. MUTANTS are the
rules as they were before issue 28 (and other plausible regressions): each must make promtool
fail on the scenarios written against it, so those scenarios can fail.
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

# Serve's own metrics used by the rules, as Ray 2.60 defines them (ray/serve/_private/):
# replica.py (a replica's starts counter, once per replica), request_ingress_metrics.py (the
# proxy's requests by application, route, method and status_code), deployment_state.py (the
# controller's per-replica health gauge, 1 or 0, and the deployment's target replica count).
SERVE_SCRAPED = {"ray_serve_deployment_replica_starts_total", "ray_serve_num_http_requests_total",
                 "ray_serve_deployment_replica_healthy", "ray_serve_autoscaling_target_replicas"}
# vLLM's KV cache gauge, besides the series the dashboard reads.
VLLM_RULES_ONLY = {"ray_vllm_kv_cache_usage_perc"}



def proxy(status: str, application: str = "graphserve", route: str = "/v1/chat/completions") -> str:
    """Serve's proxy's request counter (summed over every node's proxy by the rules)."""
    return (f'ray_serve_num_http_requests_total{{application="{application}", route="{route}", '
            f'method="POST", status_code="{status}"}}')


def router(status: str) -> str:
    """The router's own counter: it never sees what the proxy answers itself."""
    return f'ray_graphserve_requests_total{{route="/v1/chat/completions", status="{status}"}}'


OK, ERR = proxy("200"), proxy("503")
TYPO = proxy("404", application="", route="")  # a path no application serves


def ttft(le: str) -> str:
    return f'ray_vllm_time_to_first_token_seconds_bucket{{model_name="m", le="{le}"}}'


def starts(replica: str) -> str:
    return (f'ray_serve_deployment_replica_starts_total{{application="graphserve", '
            f'deployment="fast", replica="{replica}"}}')


TARGET = 'ray_serve_autoscaling_target_replicas{application="graphserve", deployment="fast"}'


def started(first_minutes: list[int], until: int) -> dict[str, str]:
    """One replica's starts series per minute given, from that minute until `until`."""
    return {starts(f"r{i}"): (f"_x{m} " if m else "") + f"1x{until - m}"
            for i, m in enumerate(first_minutes)}


def up(instance: str) -> str:
    return f'up{{job="ray", instance="{instance}"}}'


def healthy(replica: str, deployment: str = "router", application: str = "graphserve") -> str:
    return (f'ray_serve_deployment_replica_healthy{{application="{application}", '
            f'deployment="{deployment}", replica="{replica}"}}')


EMBEDDER_UP = {healthy("e", "embedder", "embeddings"): "1x70"}


# alert -> (input series at 1-minute steps, [(minute, labels of the expected alert or None)]).
# Per minute: 600 requests; 5xx at the share each scenario names.
SCENARIOS = {
    # 17 % errors from minute 60 to 120: fires, then resolves once the 5-minute window is clean.
    # A stream of 404s on paths no application serves never counts.
    "GraphserveAvailabilityFastBurn": (
        {OK: "0+600x180", ERR: "0x60 0+120x60 7200x60", TYPO: "0+600x180"},
        [(50, None), (118, {}), (135, None)]),
    # The proxy answers them itself (past request_timeout_s, queues full): the router's own
    # counter sees only its 200s, and the budget burns all the same, on 408s and on 429s.
    "GraphserveAvailabilityFastBurn/timeouts at the proxy": (
        {OK: "0+600x120", proxy("408"): "0x60 0+120x60", router("200"): "0+600x120"},
        [(50, None), (118, {})]),
    "GraphserveAvailabilityFastBurn/server-side 429s": (
        {OK: "0+600x120", proxy("429"): "0x60 0+120x60", router("200"): "0+600x120"},
        [(50, None), (118, {})]),
    # /v1/embeddings is an application of its own (serve_config.yaml): its errors burn the
    # same budget.
    "GraphserveAvailabilityFastBurn/embeddings errors": (
        {OK: "0+600x120", proxy("503", application="embeddings", route="/v1/embeddings"):
         "0x60 0+120x60"},
        [(50, None), (118, {})]),
    # Clients that hang up (499) and bad requests (400) are theirs, not an outage.
    "GraphserveAvailabilityFastBurn/client errors": (
        {OK: "0+600x120", proxy("499"): "0+120x120", proxy("400"): "0+120x120"},
        [(60, None), (118, None)]),
    # No 5xx series at all: the ratios are 0 (quiet), not absent.
    "GraphserveAvailabilityFastBurn/no errors yet": (
        {OK: "0+600x60"}, [(10, None), (60, None)]),
    # 8 % errors for five hours: too few for the fast burn; the slow one fires once they are
    # over 6 % of the 6-hour window (minute ~230, then 15 minutes pending).
    "GraphserveAvailabilitySlowBurn": (
        {OK: "0+600x460", ERR: "0x60 0+52x300 15600x100"},
        [(50, None), (200, None), (320, {}), (400, None)]),
    "GraphserveAvailabilitySlowBurn/proxy 504s and 500s": (
        {OK: "0+600x400", proxy("504"): "0x60 0+26x300", proxy("500"): "0x60 0+26x300"},
        [(200, None), (320, {})]),
    # A total outage: both nodes stop answering at minute 20 (up == 0), then at minute 50 their
    # pods are gone (no target at all); back at minute 80.
    "GraphserveMetricsAbsent": (
        {up("head:8080"): "1x20 0x30 _x30 1x20", up("worker:8080"): "1x20 0x30 _x30 1x20"},
        [(10, None), (23, None), (30, {}), (60, {}), (90, None)]),
    # Prometheus never found a target (a PodMonitor that selects nothing).
    "GraphserveMetricsAbsent/no target ever": (
        {'up{job="other"}': "1x20"}, [(3, None), (10, {})]),
    # One node of two stops answering for 20 minutes.
    "GraphserveTargetDown": (
        {up("head:8080"): "1x60", up("worker:8080"): "1x10 0x20 1x30"},
        [(5, None), (20, {"instance": "worker:8080", "job": "ray"}), (40, None)]),
    # The router's only replica fails at minute 20 (the controller's gauge goes to 0); a new one
    # is healthy at minute 40. The fast tier's replica is healthy all along: no help.
    "GraphserveNotServing": (
        {healthy("a"): "1x20 0x50", healthy("b"): "_x40 1x30", healthy("f", "fast"): "1x70",
         **EMBEDDER_UP},
        [(10, None), (23, None), (30, {}), (50, None)]),
    # The application is deleted at minute 20 (or never deployed): no series of it at all.
    "GraphserveNotServing/application gone": (
        {healthy("a"): "1x20", 'up{job="ray", instance="head:8080"}': "1x60", **EMBEDDER_UP},
        [(10, None), (23, None), (40, {})]),
    # /v1/embeddings is its own application: its only embedder replica fails at minute 20 while
    # the router is healthy all along; a new one is healthy at minute 40.
    "GraphserveNotServing/embeddings down": (
        {healthy("a"): "1x70", healthy("e", "embedder", "embeddings"): "1x20 0x50",
         healthy("e2", "embedder", "embeddings"): "_x40 1x30"},
        [(10, None), (23, None), (30, {}), (50, None)]),
    # First tokens under 0.5 s, then between 2.5 and 5 s (p95 ~4.9 s), then fast again.
    "GraphserveTimeToFirstTokenHigh": (
        {ttft("0.5"): "0+10x60 600x60 600+10x60", ttft("2.5"): "0+10x60 600x60 600+10x60",
         ttft("5"): "0+10x180", ttft("+Inf"): "0+10x180"},
        [(50, None), (90, {"model_name": "m"}), (140, None)]),
    # A failed health check every two minutes from minute 10 to 40: the replacements fail too.
    "GraphserveEngineUnhealthy": (
        {'ray_graphserve_health_check_failures_total{reason="stalled"}': "0x10 0+0.5x30 15x40"},
        [(5, None), (15, None), (25, {"reason": "stalled"}), (60, None)]),
    # Three failed checks in minutes 11-13, then Serve's replacement is healthy: no page.
    "GraphserveEngineUnhealthy/one replacement": (
        {'ray_graphserve_health_check_failures_total{reason="engine_dead"}': "0x10 1 2 3 3x40"},
        [(12, None), (14, None), (17, None), (30, None)]),
    # Two replicas wanted all along; four replacements start in minutes 20-26 (a crash loop).
    "GraphserveReplicaRestarts": (
        {TARGET: "2x90", **started([0, 0, 20, 22, 24, 26], 90)},
        [(10, None), (31, {"application": "graphserve", "deployment": "fast"}), (60, None)]),
    # The autoscaler goes from 2 to 8 at minute 20; the six replicas start in minutes 21-26.
    "GraphserveReplicaRestarts/scale-up": (
        {TARGET: "2x20 8x70", **started([0, 0, 21, 22, 23, 24, 25, 26], 90)},
        [(25, None), (30, None), (36, None), (40, None), (60, None)]),
    # The same, with the new replicas waiting 12 minutes for GPU nodes, then back down to 2.
    "GraphserveReplicaRestarts/slow scale-up, then down": (
        {TARGET: "2x20 8x40 2x30", **started([0, 0, 32, 32, 33, 33, 34, 34], 90)},
        [(35, None), (45, None), (50, None), (70, None)]),
    # A scale-up from 2 to 4 (two starts) while four replicas crash and are replaced.
    "GraphserveReplicaRestarts/crashes during a scale-up": (
        {TARGET: "2x20 4x70", **started([0, 0, 21, 21, 22, 23, 24, 25], 90)},
        [(15, None), (31, {"application": "graphserve", "deployment": "fast"}), (60, None)]),
    # Prometheus starts next to a running deployment of 8 replicas: nothing was "new" before.
    "GraphserveReplicaRestarts/fresh Prometheus": (
        {TARGET: "8x60", **started([0] * 8, 60)}, [(1, None), (10, None), (40, None)]),
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
    # 60 of 600 requests a minute time out at the proxy, 60 more are shed with a 429.
    ({OK: "0+480x60", proxy("408"): "0+60x60", proxy("429"): "0+60x60", TYPO: "0+600x60"}, 30,
     "graphserve:request_errors:ratio_rate5m", {}, 0.2),
    ({TARGET: "2x20 8x70", **started([0, 0, 21, 22, 23, 24, 25, 26], 90)}, 30,
     "graphserve:replica_restarts:15m", {"application": "graphserve", "deployment": "fast"}, 0),
    ({TARGET: "2x90", **started([0, 0, 20, 22, 24, 26], 90)}, 30,
     "graphserve:replica_restarts:15m", {"application": "graphserve", "deployment": "fast"}, 4),
    # Without the target gauge, every start counts (as before issue 28).
    ({**started([0, 0, 20, 22, 24, 26], 90)}, 30,
     "graphserve:replica_restarts:15m", {"application": "graphserve", "deployment": "fast"}, 4),
    ({'ray_graphserve_canary_checks_total{tier="new", correct="false"}': "0+4x60"}, 45,
     "graphserve:canary_correct:ratio_30m", {"tier": "new"}, 0),
    ({'ray_graphserve_quality_score_count{tier="fast"}': "0+10x60"}, 30,
     "graphserve:gate_failures:ratio_rate15m", {"tier": "fast"}, 0),
    ({'ray_graphserve_quality_score_count{tier="fast"}': "0+10x60",
      'ray_graphserve_quality_escalations_total{tier="careful"}': "0+5x60"}, 30,
     "graphserve:gate_escalations:ratio_rate15m", {}, 0.5),
]


def rules(path: Path = RULES) -> dict[str, dict]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def rendered(annotations: dict[str, str], labels: dict[str, str]) -> dict[str, str]:
    """Alert annotations as Prometheus renders them (the rules use `$labels` only)."""
    return {k: re.sub(r"{{\s*\$labels\.(\w+)\s*}}", lambda m: labels[m.group(1)], v)
            for k, v in annotations.items()}


# Prometheus evaluates its rule groups each on its own timer, so an alert may read the recording
# rules of this minute or of the last one; promtool picks an order at random unless told. The
# scenarios must hold in both.
GROUP_ORDERS = {"recording first": ["graphserve-recording", "graphserve-alerts"],
                "alerts first": ["graphserve-alerts", "graphserve-recording"]}


def promtool_tests(path: Path = RULES, only: list[str] | None = None,
                   order: str = "recording first") -> dict:
    """promtool's test file: every scenario's alert checks (or those named), then RECORDED's."""
    alerts, tests = rules(path), []
    for scenario, (series, checks) in SCENARIOS.items():
        if only is not None and scenario not in only:
            continue
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
    for series, minute, rule, labels, value in RECORDED if only is None else []:
        tests.append({
            "name": f"{rule} at minute {minute}", "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": [{"expr": rule, "eval_time": f"{minute}m", "exp_samples": [{
                "labels": rule + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                "value": value}]}],
        })
    return {"rule_files": [str(path)], "evaluation_interval": "1m",
            "group_eval_order": GROUP_ORDERS[order], "tests": tests}


# Regressions the scenarios must catch: (text in the rules file, its replacement, the scenarios
# that must then fail). The first ones are the rules as they were before issue 28.
PROXY_ERRORS = ('ray_serve_num_http_requests_total{application=~"graphserve|embeddings", '
                'status_code=~"5..|408|429"}')
PROXY_ALL = 'ray_serve_num_http_requests_total{application=~"graphserve|embeddings"}'
MUTANTS = {
    "availability from the router's own counter": (
        [(PROXY_ERRORS, 'ray_graphserve_requests_total{route!="other", status=~"5.."}'),
         (PROXY_ALL, 'ray_graphserve_requests_total{route!="other"}')],
        ["GraphserveAvailabilityFastBurn/timeouts at the proxy",
         "GraphserveAvailabilityFastBurn/server-side 429s",
         "GraphserveAvailabilitySlowBurn/proxy 504s and 500s"]),
    "not serving watches the router only": (
        [('\n            or absent(ray_serve_deployment_replica_healthy{application="embeddings", '
          'deployment="embedder"} == 1)', '')],
        ["GraphserveNotServing/embeddings down"]),
    "availability of the graph's application only": (
        [('application=~"graphserve|embeddings"', 'application="graphserve"')],
        ["GraphserveAvailabilityFastBurn/embeddings errors"]),
    "availability counting 5xx only": (
        [('status_code=~"5..|408|429"', 'status_code=~"5.."')],
        ["GraphserveAvailabilityFastBurn/timeouts at the proxy",
         "GraphserveAvailabilityFastBurn/server-side 429s"]),
    "availability counting every 4xx": (
        [('status_code=~"5..|408|429"', 'status_code=~"[45].."')],
        ["GraphserveAvailabilityFastBurn/client errors"]),
    "no alert for a total outage, only for all targets down": (
        [('absent(up{job="ray"} == 1)', 'sum(up{job="ray"}) == 0')],
        ["GraphserveMetricsAbsent/no target ever", "GraphserveMetricsAbsent"]),
    "EngineUnhealthy without its for:": (
        [("        for: 10m\n        labels: {severity: page}\n        annotations:\n"
          "          summary: \"LLM replicas keep failing",
          "        labels: {severity: page}\n        annotations:\n"
          "          summary: \"LLM replicas keep failing")],
        ["GraphserveEngineUnhealthy/one replacement"]),
    "restarts counting every start (scale-ups too)": (
        [("expr: graphserve:replica_restarts:15m > 3", "expr: graphserve:replica_starts:new_15m > 3")],
        ["GraphserveReplicaRestarts/scale-up", "GraphserveReplicaRestarts/slow scale-up, then down"]),
    "restarts forgiving scale-ups only within 15 minutes": (
        [("offset 30m", "offset 15m")],
        ["GraphserveReplicaRestarts/slow scale-up, then down"]),
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    # The whole file takes promtool about 30 s of CPU (two scenarios span 30 hours of minutes).
    return subprocess.run([PROMTOOL or "promtool", *args], capture_output=True, text=True,
                          timeout=600)


def test_the_rules_file_is_valid():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_runbook_a_scenario_that_fires_and_one_that_resolves():
    alerts = rules()
    assert set(alerts) == {s.split("/")[0] for s in SCENARIOS}
    for name, (_, checks) in ((s, c) for s, c in SCENARIOS.items() if "/" not in s):
        assert {"summary", "runbook", "runbook_url"} <= set(alerts[name]["annotations"]), name
        assert alerts[name]["labels"]["severity"] in ("page", "ticket"), name
        fired = [m for m, labels in checks if labels is not None]
        assert fired and any(m < fired[0] for m, labels in checks if labels is None), name
        assert any(m > fired[-1] for m, labels in checks if labels is None), name  # resolves


@pytest.mark.parametrize("order", GROUP_ORDERS)
def test_every_alert_fires_and_resolves_in_promtool(order, tmp_path):
    spec = tmp_path / "prometheus-rules.test.yml"
    spec.write_text(yaml.safe_dump(promtool_tests(order=order), sort_keys=False))
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


@pytest.mark.parametrize("mutant", MUTANTS)
def test_the_scenarios_fail_on_the_rules_they_guard_against(mutant, tmp_path):
    edits, scenarios = MUTANTS[mutant]
    text = RULES.read_text()
    for old, new in edits:
        assert old in text, (mutant, old)
        text = text.replace(old, new)
    mutated = tmp_path / "prometheus-rules.yml"
    mutated.write_text(text)
    assert promtool("check", "rules", str(mutated)).returncode == 0, mutant
    for scenario in scenarios:  # each one alone, so each one is shown to fail
        spec = tmp_path / "test.yml"
        spec.write_text(yaml.safe_dump(promtool_tests(mutated, [scenario]), sort_keys=False))
        out = promtool("test", "rules", str(spec))
        assert out.returncode != 0, (mutant, scenario, out.stdout)


def test_each_runbook_url_is_a_section_of_the_operations_doc():
    docs = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
    # GitHub's anchors: a heading lowercased, punctuation dropped, spaces as dashes.
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", docs.read_text(), flags=re.M)}
    for name, rule in rules().items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in anchors, name
        assert "serve deploy" not in rule["annotations"]["runbook"], name
