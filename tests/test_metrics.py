"""The metric names the dashboard and the docs use are the ones the code defines."""

import glob
import json
import re

import yaml

from deployments.metrics import SPECS
from tests.support.metrics import VLLM_SCRAPED

# vLLM's metric names the dashboard may use; tests/e2e/test_observability.py checks them against a
# live scrape of the real graph.


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
    readme = ""
    for name in ["README.md", *sorted(glob.glob("docs/*.md"))]:
        with open(name) as f:
            readme += f.read() + "\n"
    assert all(s.name in readme for s in SPECS.values())


def test_dashboard_file_is_the_generated_one():
    from tests.helpers import generator

    with open("cluster/grafana-dashboard.json") as f:
        assert json.load(f) == generator().dashboard()  # else run `python cluster/generate.py`
