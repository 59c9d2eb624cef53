"""The short soak, in `make test-long` (not in `make test`): two minutes of the mixed traffic of
`make soak` (benchmarks/soak.py) at 70 % of the capacity it measures first, against the main
graph: no 5xx or broken connection, malformed requests refused with the OpenAI error body, no
replica or engine growing more than 5 % after the warm-up, every engine idle at the end."""

import asyncio

import pytest

from benchmarks.soak import soak
from tests.e2e.conftest import BASE, wait_until
from tests.helpers import replica_actors


@pytest.mark.long
def test_two_minute_soak_loses_nothing_and_leaks_nothing(base_url):
    # The memory of each process is followed from the start: begin with the embedder's one
    # steady replica (it autoscales 1-2 and may still hold a second from an earlier test).
    wait_until(lambda: len(replica_actors("embeddings", "embedder")) == 1, 240,
               "one embedder replica")
    result = asyncio.run(soak(BASE, minutes=2, sample_every_s=20, warmup_s=20, calibrate_s=30))
    print(f"\n{ {k: v for k, v in result.items() if k != 'rss_mib'} }")
    assert result["requests"] > 0 and not result["failures"], result["failures_by_kind"]
    assert all(g < result["max_growth"] for g in result["rss_growth_after_warmup"].values()), \
        result["rss_growth_after_warmup"]
    assert result["end"]["idle"], result["end"]
