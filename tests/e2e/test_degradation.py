"""Graceful degradation with deployments that are really down, next to the main graph.

Two more applications run on the same Serve instance. Their broken deployments point at a model
folder that does not exist: Serve tries the load three times, marks them DEPLOY_FAILED with our
error, and keeps them down, so each case is deterministic rather than a race with a restart.
- /degraded: tiers [broken, toobig, backup] and a broken embedder: the backup tier answers,
  scored without relevance (toobig asks for a 4 TiB KV cache: the memory preflight refuses it);
- /nollm: a broken tier only, a working embedder: chat is 503, embeddings still work.
"""

import asyncio
import time
from collections import Counter

import httpx
import openai
import pytest

from tests.e2e.conftest import (BASE, BROKEN, config_args, deploy, remove, variant,
                                 wait_until)

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
SMALL = {"num_cpus": 0.05}


@pytest.fixture(scope="module")
def broken_apps(base_url):
    from ray import serve

    broken_tier = {"name": "broken", "model_source": BROKEN,
                   "deployment": {**SMALL, "num_replicas": 1}}
    # Tight queues (4 running + 4 waiting; 2 + 2 for the embedder) so 10x overload is 80 requests.
    backup_tier = {"name": "backup", "deployment": {"num_cpus": 0.4, "num_replicas": 1,
                                                    "max_ongoing_requests": 4,
                                                    "max_queued_requests": 4}}
    too_big = {"name": "toobig", "kv_cache_gib": 4096, "deployment": {**SMALL, "num_replicas": 1}}
    deploy("degraded", variant([broken_tier, too_big, backup_tier], BROKEN), broken=True)
    nollm = variant([broken_tier], config_args()["embedder"]["model_source"])
    nollm["embedder"]["deployment"].update(max_ongoing_requests=2, max_queued_requests=2)
    deploy("nollm", nollm, broken=True)

    def settled():
        apps = serve.status().applications
        states = {(a, d): s.status.value for a in ("degraded", "nollm")
                  for d, s in apps[a].deployments.items()}
        return all(v in ("HEALTHY", "DEPLOY_FAILED") for v in states.values()) and states

    print("broken apps settled:", wait_until(settled, 240, "the failure-test apps to settle"))

    def probed(app: str, down: set[str]):
        body = httpx.get(f"{BASE}/{app}/health", timeout=30).json()
        return {n for n, d in body["deployments"].items() if d["status"] == "unavailable"} == down

    # The router marks a failed deployment down at its next probe (every 2 s).
    wait_until(lambda: probed("degraded", {"broken", "toobig", "embedder"}), 60,
               "the router's probes")
    wait_until(lambda: probed("nollm", {"broken"}), 60, "the router's probes")
    return serve.status().applications


def test_failed_model_load_is_reported_with_its_cause(broken_apps):
    for app in ("degraded", "nollm"):
        broken = broken_apps[app].deployments["broken"]
        assert broken.status.value == "DEPLOY_FAILED"
        assert "failed to start 3 times" in broken.message  # bounded retries, not a crash loop
        assert "is not a local Hugging Face folder" in broken.message  # our cause, not a mystery
    # A model that does not fit: refused before loading, with the numbers and the fix.
    too_big = broken_apps["degraded"].deployments["toobig"]
    assert too_big.status.value == "DEPLOY_FAILED" and "the model needs" in too_big.message
    assert "GiB KV cache" in too_big.message and "lower kv_cache_gib" in too_big.message
    assert broken_apps["degraded"].deployments["backup"].status.value == "HEALTHY"


def test_tier_down_next_tier_serves_scored_without_relevance(broken_apps):
    client = openai.OpenAI(base_url=f"{BASE}/degraded/v1", api_key="x", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(  # samples with the answer
        model=CHAT, messages=FRANCE, temperature=0, max_tokens=24,
        extra_body={"quality": {"sample_below": 1.0}})
    resp = raw.parse()
    assert "Paris" in resp.choices[0].message.content
    assert raw.headers["x-served-by"] == f"backup/{CHAT}"
    quality = resp.model_extra["quality"]
    # Without the embedder, the signals it feeds are degraded (taken at their fit mean).
    assert {"relevance", "consistency"} <= set(quality["degraded"])
    assert not {"relevance", "consistency"} & set(quality["components"])
    assert "agreement" in quality["components"] and quality["tier"] == "backup"

    stream = list(client.chat.completions.create(
        model=CHAT, messages=FRANCE, temperature=0, max_tokens=24, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text and "relevance" in stream[-1].model_extra["quality"]["degraded"]

    health = httpx.get(f"{BASE}/degraded/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "degraded"


def test_embedder_down_embeddings_answer_503_not_hang(broken_apps):
    r = httpx.post(f"{BASE}/degraded/v1/embeddings", json={"model": EMBED, "input": "x"}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_every_llm_down_is_503_while_embeddings_work(broken_apps):
    client = openai.OpenAI(base_url=f"{BASE}/nollm/v1", api_key="x", max_retries=0, timeout=60)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=CHAT, messages=FRANCE, max_tokens=8)
    assert time.monotonic() - started < 10  # a clear answer, not a wait for a timeout
    assert e.value.status_code == 503 and e.value.body["code"] == "llm_unavailable"
    assert e.value.response.headers["retry-after"]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=CHAT, messages=FRANCE, max_tokens=8, stream=True)
    vectors = client.embeddings.create(model=EMBED, input=["still here", "and working"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    health = httpx.get(f"{BASE}/nollm/health", timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


def overload(url: str, body: dict, n: int) -> list[httpx.Response]:
    async def main():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as c:
            return await asyncio.gather(*(c.post(url, json=body) for _ in range(n)))
    return asyncio.run(main())


def shed_cleanly(responses: list[httpx.Response], capacity: int) -> Counter:
    codes = Counter(r.status_code for r in responses)
    print(f"\n{len(responses)} requests at 10x capacity: {dict(codes)}")
    assert set(codes) <= {200, 429, 503}, codes  # no other 5xx, no hang (client timeout 120 s)
    assert codes[200] >= capacity and codes[429] + codes[503] > 0
    for r in responses:
        if r.status_code != 200:
            assert int(r.headers["retry-after"]) > 0
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    return codes


def test_llm_overload_at_10x_capacity_sheds_with_retry_after(broken_apps):
    body = {"model": CHAT, "messages": FRANCE, "max_tokens": 16, "quality": {"enabled": False}}
    codes = shed_cleanly(overload(f"{BASE}/degraded/v1/chat/completions", body, 80), capacity=8)
    assert codes[429] > 0  # the backup tier is full, not down
    health = httpx.get(f"{BASE}/degraded/health", timeout=30).json()
    assert health["deployments"]["backup"]["status"] == "ok"
    after = httpx.post(f"{BASE}/degraded/v1/chat/completions", json=body, timeout=120)
    assert after.status_code == 200


def test_embedder_overload_at_10x_capacity_sheds_with_retry_after(broken_apps):
    body = {"model": EMBED, "input": ["one sentence to embed"] * 8}
    shed_cleanly(overload(f"{BASE}/nollm/v1/embeddings", body, 40), capacity=4)
    assert httpx.post(f"{BASE}/nollm/v1/embeddings", json=body, timeout=60).status_code == 200


def test_main_graph_unaffected(http):
    wait_until(lambda: http.get("/health").json()["status"] == "ok", 60,
               "the main graph's /health to say ok next to the broken apps")


def test_in_flight_requests_finish_when_the_app_is_removed(broken_apps):
    """Last in this module: it deletes /nollm. Serve drains each replica before stopping it
    (graceful_shutdown_timeout_s), so requests already running complete with 200."""
    from ray import serve

    body = {"model": EMBED, "input": ["a sentence long enough to keep the encoder busy"] * 512}

    async def main():
        async with httpx.AsyncClient(timeout=120) as c:
            # two requests: what the embedder (max_ongoing_requests 2) runs at once
            running = [asyncio.create_task(c.post(f"{BASE}/nollm/v1/embeddings", json=body))
                       for _ in range(2)]
            await asyncio.sleep(1.0)
            started = time.monotonic()
            await asyncio.to_thread(remove, "nollm")
            print(f"\nnollm deleted in {time.monotonic() - started:.1f} s")
            return await asyncio.gather(*running)

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200, 200]
    assert all(len(r.json()["data"]) == 512 for r in responses)
    assert not {"nollm", "nollm-embeddings"} & set(serve.status().applications)
