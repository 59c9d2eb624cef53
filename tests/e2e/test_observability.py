"""Metrics on Ray's Prometheus endpoint match the traffic sent; request ids reach every log."""

import glob
import os
import time
import uuid


from tests.helpers import wait_until
from tests.support.metrics import VLLM_SCRAPED, scrape, value

CHAT = "smollm2-135m-instruct"
APP = "graphserve"
EMBEDDINGS_APP = "embeddings"


EXPORT_S = 6  # longer than the export period set in conftest (5 s)


def wait_for(read, predicate, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        values = read(scrape())
        if predicate(values) or time.monotonic() > deadline:
            return values
        time.sleep(1)


def settled(read) -> tuple:
    """Values once two scrapes one export period apart agree."""
    last = read(scrape())
    for _ in range(10):
        time.sleep(EXPORT_S)
        now = read(scrape())
        if now == last:
            return now
        last = now
    raise AssertionError("metrics never settled")


def test_scraped_metrics_count_the_traffic(http):
    chat = "/v1/chat/completions"

    def read(s) -> tuple:
        return (value(s, "ray_graphserve_requests_total", route=chat, status="200"),
                value(s, "ray_graphserve_request_latency_seconds_count", route=chat),
                value(s, "ray_graphserve_quality_score_count", tier="fast"),
                value(s, "ray_vllm_request_success_total"))  # vLLM's own, via Ray

    before = settled(read)
    for i in range(12):
        r = http.post(chat, json={"model": CHAT, "max_tokens": 4, "temperature": 0,
                                  # one attempt each, no samples: exact counts
                                  "quality": {"threshold": 0, "samples": 0},
                                  "messages": [{"role": "user", "content": f"Say the number {i}."}]})
        assert r.status_code == 200
    expected = tuple(b + 12 for b in before)
    wait_for(read, lambda v: all(a >= e for a, e in zip(v, expected)))
    after = settled(read)
    # requests, latency observations, quality scores, engine requests: 12 each, no more, no less
    assert tuple(a - b for a, b in zip(after, before)) == (12, 12, 12, 12)
    samples, embeddings = scrape(), scrape(EMBEDDINGS_APP)
    assert value(samples, "ray_graphserve_model_load_seconds_count") >= 2  # 2 tiers
    assert value(samples, "ray_graphserve_model_load_seconds_sum") > 0
    assert value(samples, "ray_vllm_time_to_first_token_seconds_count") >= 12
    # The embedder is its own application (/v1/embeddings): its load, batches and HTTP requests.
    assert value(embeddings, "ray_graphserve_model_load_seconds_count", model="all-minilm-l6-v2") >= 1
    assert value(embeddings, "ray_graphserve_embedder_batch_size_count") > 0
    route = {"route": "/v1/embeddings", "status": "200"}
    served = value(embeddings, "ray_graphserve_requests_total", **route)
    assert http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2",
                                             "input": "count me"}).status_code == 200
    wait_until(lambda: value(scrape(EMBEDDINGS_APP), "ray_graphserve_requests_total", **route)
               == served + 1, 60, "the embedder's request counter to count one more")


def test_vllm_names_used_by_the_dashboard_are_scraped(http):
    """Every vLLM series the dashboard and the rules read is exported while an engine works.

    vLLM sets its queue gauges (num_requests_running/_waiting) only on an engine step, and Ray
    2.60 keeps a gauge for two export periods after its last set: an idle engine's gauges are
    absent (docs/operations.md). So the scrape happens while a streamed answer is being decoded.
    """
    names: set[str] = set()
    # ~4 s of decoding on a 2-core host, then scrapes for two export periods: the values set
    # during the answer reach the agent at the next export and live there for two periods.
    with http.stream("POST", "/v1/chat/completions", json={
            "model": CHAT, "max_tokens": 256, "min_tokens": 256, "temperature": 0, "stream": True,
            "quality": {"enabled": False},
            "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}]}) as r:
        assert r.status_code == 200
        for _ in r.iter_lines():
            pass
    deadline = time.monotonic() + 2 * EXPORT_S
    while not VLLM_SCRAPED <= names and time.monotonic() < deadline:
        names |= {n for n, _ in scrape()}
        time.sleep(0.5)
    assert VLLM_SCRAPED <= names, VLLM_SCRAPED - names


def test_request_id_comes_back_and_reaches_every_deployment_log(http):
    import ray

    rid = f"trace-{uuid.uuid4().hex[:12]}"
    r = http.post("/v1/chat/completions", headers={"x-request-id": rid}, json={
        "model": CHAT, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello"}]})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid and r.json()["id"] == rid
    logs = os.path.join(ray._private.worker._global_node.get_logs_dir_path(), "serve")
    deadline, seen = time.monotonic() + 10, set()
    while time.monotonic() < deadline:
        seen = {os.path.basename(p).split("_")[2]
                for app in (APP, EMBEDDINGS_APP) for p in glob.glob(f"{logs}/replica_{app}_*.log")
                if rid in open(p, errors="replace").read()}
        if {"router", "fast", "embedder"} <= seen:
            break
        time.sleep(0.5)
    assert {"router", "fast", "embedder"} <= seen, seen
