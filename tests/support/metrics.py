"""Prometheus samples of the running graph, as the e2e tests read them."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import METRICS_PORT

APP = "graphserve"

# vLLM's own series, as Ray's exporter names them: what the dashboard and the rules may use.
VLLM_SCRAPED = {
    "ray_vllm_time_to_first_token_seconds_bucket", "ray_vllm_inter_token_latency_seconds_bucket",
    "ray_vllm_e2e_request_latency_seconds_bucket", "ray_vllm_prompt_tokens_total",
    "ray_vllm_generation_tokens_total", "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting", "ray_vllm_request_success_total",
}


def scrape(app: str = APP) -> dict[tuple[str, frozenset], float]:
    """Every sample of one app (and vLLM's), summed over replicas: (name, labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items()
                      if k not in ("replica", "ReplicaId", "SessionName", "NodeAddress",
                                   "Version", "Component", "WorkerId", "JobId", "engine")}
            if labels.get("application", app) != app:
                continue
            key = (s.name, frozenset(labels.items()))
            out[key] = out.get(key, 0.0) + s.value
    return out


def value(samples, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
