"""The metric names the dashboard and README use are the ones the code defines."""

import json
import re

import yaml

from deployments.metrics import SPECS

# vLLM's metric names the dashboard may use; tests/e2e/test_observability.py checks them against a
# live scrape of the real graph.
VLLM_SCRAPED = {
    "ray_vllm_time_to_first_token_seconds_bucket", "ray_vllm_inter_token_latency_seconds_bucket",
    "ray_vllm_e2e_request_latency_seconds_bucket", "ray_vllm_prompt_tokens_total",
    "ray_vllm_generation_tokens_total", "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting", "ray_vllm_request_success_total",
}


def test_dashboard_and_readme_name_only_metrics_that_exist():
    exported = {s.exported for s in SPECS.values()}
    with open("cluster/grafana-dashboard.json") as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(ray_[a-z0-9_]+)", e)}
    ours = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used if m.startswith("ray_graphserve")}
    assert ours and ours <= exported, ours - exported
    vllm = {m for m in used if m.startswith("ray_vllm")}
    assert vllm and vllm <= VLLM_SCRAPED, vllm - VLLM_SCRAPED
    # Recording rules' series must be recorded by cluster/prometheus-rules.yml.
    with open("cluster/prometheus-rules.yml") as f:
        records = {r["record"] for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "record" in r}
    rules = {m for e in exprs for m in re.findall(r"\bgraphserve:[a-z0-9_:]+", e)}
    assert rules and rules <= records, rules - records
    with open("README.md") as f:
        readme = f.read()
    assert all(s.name in readme for s in SPECS.values())


def test_dashboard_file_is_the_generated_one():
    from tests.helpers import generator

    with open("cluster/grafana-dashboard.json") as f:
        assert json.load(f) == generator().dashboard()  # else run `python cluster/generate.py`
