"""A real Prometheus (Debian's package) scrapes the graph's Ray metrics endpoint with our rules
loaded: its HTTP API finds the graph's request, TTFT and quality series soon after the traffic,
the recording rules and alerts evaluate without error on the real series, and every Ray and vLLM
metric the rules name exists."""

import os
import re
import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from tests.e2e.conftest import METRICS_PORT, PORT, wait_until

RULES = os.path.join(os.path.dirname(__file__), "..", "..", "cluster", "prometheus-rules.yml")
PROMETHEUS_PORT = PORT + 90
SCRAPE_S = 2
EXPORT_S = 5  # Ray's export period in this session (conftest)
CHAT = "smollm2-135m-instruct"

if shutil.which("prometheus") is None and os.environ.get("GRAPHSERVE_REQUIRE_PROMTOOL") != "1":
    pytest.skip("prometheus not installed (Debian: apt-get install prometheus)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def prometheus(base_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [os.path.abspath(RULES)],
        "scrape_configs": [{"job_name": "ray",
                            "static_configs": [{"targets": [f"127.0.0.1:{METRICS_PORT}"]}]}],
    }))
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}"
    with open(folder / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 30,
                   "Prometheus to start", 0.5, retry_on=(httpx.HTTPError,))
        # A first scrape before any test sends traffic: a rate needs a sample from before it.
        wait_until(lambda: query(url, 'up{job="ray"}') == 1, 30, "the first scrape", 0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def query(url: str, expr: str) -> float | None:
    """The instant value of a scalar-like expression; None when it has no sample."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


SERIES = {
    "requests": 'sum(ray_graphserve_requests_total{route="/v1/chat/completions", status="200"})',
    "ttft": "sum(ray_vllm_time_to_first_token_seconds_count)",
    "quality": "sum(ray_graphserve_quality_score_count)",
}


def test_prometheus_finds_the_graph_series_soon_after_the_traffic(http, prometheus):
    before = {k: query(prometheus, e) or 0.0 for k, e in SERIES.items()}
    for i in range(3):
        r = http.post("/v1/chat/completions", json={
            "model": CHAT, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": f"Say the number {i}."}]})
        assert r.status_code == 200
    sent = time.monotonic()
    seen = {}
    for name, expr in SERIES.items():
        wait_until(lambda: (query(prometheus, expr) or 0) >= before[name] + 3, 30,
                   f"Prometheus to see the {name} series grow", 0.25)
        seen[name] = round(time.monotonic() - sent, 1)
    print(f"\nseconds from the last answer until Prometheus has it: {seen}")
    # Ray exports every EXPORT_S, Prometheus scrapes every SCRAPE_S; one more second for the query.
    assert max(seen.values()) <= EXPORT_S + SCRAPE_S + 1, seen


def number(value: float | None) -> float | None:
    return value if value is not None and value == value else None  # not absent, not NaN


def test_the_rules_evaluate_on_the_real_series(http, prometheus):
    # A rate needs a counter seen rising between two scrapes (the fixture waited for one): one
    # chat for the TTFT histogram, then a little traffic until both rules have a number.
    assert http.post("/v1/chat/completions", json={
        "model": CHAT, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    ).status_code == 200

    def ratio() -> float | None:
        assert http.get("/v1/models").status_code == 200
        return number(query(prometheus, "graphserve:request_errors:ratio_rate5m"))

    wait_until(lambda: ratio() is not None and number(query(
        prometheus, "graphserve:time_to_first_token_seconds:p95_5m")) is not None, 60,
        "the availability and TTFT recording rules", 0.5)
    assert ratio() == 0.0  # no 5xx
    assert query(prometheus, "graphserve:time_to_first_token_seconds:p95_5m") > 0
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    with open(RULES) as f:
        declared = {r.get("alert") or r["record"] for g in yaml.safe_load(f)["groups"]
                    for r in g["rules"]}
    assert set(loaded) == declared
    broken = {n: r.get("lastError") for n, r in loaded.items() if r["health"] not in ("ok", "unknown")}
    assert not broken, broken
    firing = {n for n, r in loaded.items() if r.get("state") == "firing"}
    assert not firing, firing  # a healthy graph under light traffic pages no one


def test_every_ray_and_vllm_metric_the_rules_name_exists(http, prometheus):
    with open(RULES) as f:
        named = set(re.findall(r"\bray_(?:vllm|serve)_[a-z0-9_]+", f.read()))
    missing = {n for n in named if not httpx.get(
        f"{prometheus}/api/v1/series", params={"match[]": n}, timeout=10).json()["data"]}
    assert not missing, missing
