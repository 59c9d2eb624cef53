"""A full router is refused by Ray Serve itself, before any code of ours runs (on the HAProxy path
by the router replica's own HTTP server, on Serve's own path by its proxy); the middleware Serve
adds there (deployments/proxy_errors.py, cluster/serve.env) gives that 429 the OpenAI body.

Its own small app (/tight): a router that takes one request and queues one more, its models
broken on purpose (the router is the one under test). Two requests whose bodies never finish
arriving hold those two places; the third is refused.
"""

import socket

import httpx
import pytest

from tests.e2e.conftest import BASE, BROKEN, PORT, deploy, remove, variant, wait_until

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def tight(base_url):
    from ray import serve

    args = variant([{"name": "broken", "model_source": BROKEN,
                     "deployment": {"num_cpus": 0.05}}], BROKEN)
    args["router"]["deployment"].update(max_ongoing_requests=1, max_queued_requests=1)
    deploy("tight", args, broken=True)
    wait_until(lambda: serve.status().applications["tight"].deployments["router"].status.value
               == "HEALTHY", 120, "the tight app's router")
    yield f"{BASE}/tight"
    remove("tight")


def unfinished_request() -> socket.socket:
    """A chat request whose headers are sent and whose body never arrives: the router holds it."""
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    sock.sendall(b"POST /tight/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    return sock


def test_a_full_router_answers_429_with_the_openai_body(tight):
    def refused():
        held = [unfinished_request(), unfinished_request()]
        try:
            return wait_until(lambda: (r := httpx.get(f"{tight}/v1/models", timeout=30))
                              .status_code == 429 and r, 20, "the third request to be refused",
                              interval_s=0.5)
        finally:
            for sock in held:
                sock.close()

    r = refused()
    assert r.headers["content-type"] == "application/json", r.text
    assert set(r.json()["error"]) == ERROR_KEYS and r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) > 0
    # The held requests gone, the router answers again.
    wait_until(lambda: httpx.get(f"{tight}/v1/models", timeout=30).status_code == 200, 30,
               "the router to answer once the held requests are gone")
