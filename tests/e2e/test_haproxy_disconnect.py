"""Does a client that leaves a non-streamed request abort the engine's work under
throughput-optimized + HAProxy (the data path cluster/serve.env ships; skipped on Serve's Python
proxy)?

Each try: a client gives up on an 800-token chat after 3 s; the engine's running requests are
read through the tier's handle. Tries go to the router replica's own direct-ingress port, then
through HAProxy; the counts of aborted requests are printed (benchmarks/RESULTS.md quotes them).
HAProxy is cluster/haproxy (cluster/serve.env), Ray's binary with splice off: with Ray's bundled
binary as is, 1-2 of 6 were aborted through HAProxy (tests/test_haproxy.py shows why without Ray).
"""

import glob
import os
import re
import threading
import time

import httpx
import pytest

from benchmarks.peers import haproxy_processes
from tests.e2e.conftest import wait_until
from tests.support.engine import LONG, engine_running

TRIES = 6
pytestmark = pytest.mark.skipif(os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1",
                                reason="the HAProxy data path is off (cluster/serve.env)")


def direct_ingress_url() -> str:
    """The router replica's own HTTP port, from the HAProxy config Serve wrote last."""
    config = max(glob.glob("/tmp/haproxy-serve/*/haproxy.cfg"), key=os.path.getmtime)
    port = re.search(r"SERVE_REPLICA_graphserve-router-\S+ 127\.0\.0\.1:(\d+)",
                     open(config).read()).group(1)
    return f"http://127.0.0.1:{port}"


def aborted(url: str) -> bool:
    """Whether the engine drops the request within 5 s of its client leaving; either way, waits
    until the engine is idle again so the next try starts clean."""
    def give_up():
        with httpx.Client(base_url=url, timeout=3) as c, pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json=LONG)

    client = threading.Thread(target=give_up)
    client.start()
    wait_until(lambda: engine_running() > 0, 3, "the request to reach the engine", 0.1)
    client.join()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if engine_running() == 0:
            return True
        time.sleep(0.1)
    wait_until(lambda: engine_running() == 0, 180, "the engine to finish the answer", 1)
    return False


def test_count_aborts_on_the_replica_port_and_through_haproxy(base_url):
    direct = sum(aborted(direct_ingress_url()) for _ in range(TRIES))
    through = sum(aborted(base_url) for _ in range(TRIES))
    print(f"\nclient left a non-streamed chat: aborted {direct} of {TRIES} on the replica's own "
          f"port, {through} of {TRIES} through HAProxy")
    assert direct == TRIES  # the replica itself cancels the work of a client that left
    assert through == TRIES  # and so does HAProxy's client: cluster/haproxy's splice off
    assert any("-dS" in p.info["cmdline"] for p in haproxy_processes()), \
        "HAProxy was not started through cluster/haproxy"
