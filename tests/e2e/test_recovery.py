"""Faults under load at the main graph: nothing is lost (the client retries once on a 5xx or a
broken connection, as the openai client does), Serve replaces what failed, and no vLLM process
outlives its replica. Runs after the other tests of the main graph: it breaks things on purpose.

- a replica of each deployment killed (`ray.kill`, SIGKILL of the actor);
- the entry tier's vLLM engine core SIGKILLed (the replica lives on, its engine is dead);
- the entry tier's engine core SIGSTOPped (a stall: the replica answers, its engine does not).
"""

import asyncio
import collections
import os
import signal
import time

import httpx
import psutil
import pytest
import ray
from ray import serve

from deployments.config import GraphConfig
from tests.e2e.conftest import BASE, BROKEN, variant
from tests.helpers import (
    app_of,
    config_args,
    ended,
    engine_core,
    orphaned_engines,
    replica_actors,
    title,
    wait_until,
)

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
APP = "graphserve"

HI = {"model": CHAT, "max_tokens": 4, "temperature": 0,
      "messages": [{"role": "user", "content": "Hi"}]}


def replica_actor(deployment: str):
    found = replica_actors(app_of(deployment), deployment)
    assert len(found) == 1, found
    return ray.get_actor(found[0]["name"], namespace=found[0]["namespace"]), found[0]["name"]


@pytest.fixture(autouse=True)
def one_replica_each(base_url):
    """Each fault starts from one replica per deployment: the embedder autoscales 1-2
    (serve_config.yaml) and may still hold a second replica from an earlier test's load."""
    wait_until(lambda: all(len(replica_actors(app_of(d), d)) == 1
                           for d in ("router", "embedder", "fast", "careful")),
               240, "one replica of each deployment")


def engine_core_loaded(tier: str) -> psutil.Process:
    """The tier's engine core once it is up: right after an earlier test replaced the replica,
    its engine may still be a bare spawned child, not yet titled VLLM::EngineCore."""
    return wait_until(lambda: engine_core(tier), 120, f"{tier}'s engine core",
                      retry_on=(AssertionError,))


def load_s(*tiers: str) -> float:
    """The longest time a tier's current replica took to load its engine (its `load_seconds`
    in /health): the bound for any recovery that waits for an engine to load on this host."""
    deployments = httpx.get(f"{BASE}/health", timeout=30).json()["deployments"]
    return max(deployments[t]["load_seconds"] for t in tiers)


# Beyond an engine's own load time: the health checks that find a fault, Serve starting a new
# actor, the probe that finds it ready (a margin, not a measurement).
RECOVERY_SLACK_S = 60


def healthy_on_a_new_replica(deployment: str, old_name: str) -> bool:
    """Healthy, and the killed replica is gone (the embedder may have scaled up meanwhile)."""
    app = serve.status().applications[app_of(deployment)]
    if app.deployments[deployment].status.value != "HEALTHY":
        return False
    names = [a["name"] for a in replica_actors(app_of(deployment), deployment)]
    return bool(names) and old_name not in names


def tier_status(tier: str) -> str:
    return httpx.get(f"{BASE}/health", timeout=10).json()["deployments"][tier]["status"]


async def answered(client: httpx.AsyncClient, path: str, body: dict) -> str:
    """"ok" for a 200 (a stream: a 200 with no error event before [DONE]), else what happened."""
    try:
        if not body.get("stream"):
            r = await client.post(path, json=body)
            return "ok" if r.status_code == 200 else f"{r.status_code} {r.text[:100]}"
        async with client.stream("POST", path, json=body) as r:
            text = "".join([chunk async for chunk in r.aiter_text()])
        if r.status_code == 200 and '"error"' not in text and text.endswith("[DONE]\n\n"):
            return "ok"
        return f"{r.status_code} {text[-160:]}"
    except httpx.TransportError as e:
        return type(e).__name__


async def load_through_fault(path: str, body: dict, fault, recovered, concurrency: int = 8,
                             warmup_s: float = 15, window_s: float = 30,
                             limit_s: float = 240) -> dict:
    """Closed-loop load (`concurrency` clients), `fault()` after `warmup_s`, on until
    `recovered()` holds (polled in a thread). Throughput is 200s per second: `normal` over the
    warm-up, `during` over the `window_s` after `fault()` returned (it may wait for something)."""
    done: list[float] = []
    counts = {"sent": 0, "retried": 0, "lost": 0}
    errors: collections.Counter = collections.Counter()
    stop = asyncio.Event()

    async def client_loop(client):
        while not stop.is_set():
            counts["sent"] += 1
            if (outcome := await answered(client, path, body)) != "ok":
                counts["retried"] += 1
                errors[outcome] += 1
                await asyncio.sleep(1)
                if (outcome := await answered(client, path, body)) != "ok":
                    counts["lost"] += 1
                    errors[f"lost: {outcome}"] += 1
                    continue
            done.append(time.monotonic())

    async with httpx.AsyncClient(base_url=BASE, timeout=180) as client:
        clients = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        try:
            started = time.monotonic()
            await asyncio.sleep(warmup_s)
            fault_at = time.monotonic()
            detail = await asyncio.to_thread(fault)
            window_at = time.monotonic()
            await asyncio.to_thread(wait_until, recovered, limit_s, "the graph to recover", 0.5)
            recovered_s = round(time.monotonic() - fault_at, 1)
            await asyncio.sleep(max(0.0, window_at + window_s - time.monotonic()))
        finally:
            stop.set()
            await asyncio.gather(*clients)
    result = {**counts, "errors": dict(errors), **(detail or {}), "recovered_s": recovered_s,
              "normal_rps": round(sum(started < t <= fault_at for t in done) / warmup_s, 2),
              "during_rps": round(sum(window_at < t <= window_at + window_s for t in done)
                                  / window_s, 2)}
    print(f"\n{result}")
    return result


def kill_replica(deployment: str):
    actor, old_name = replica_actor(deployment)
    ray.kill(actor, no_restart=True)
    return old_name


def test_a_replica_stopped_while_its_engine_loads_leaves_no_engine(base_url):
    """An app deleted while its tier's engine is still loading: Serve kills the replica in its
    constructor, and the engine it had started goes with it (deployments/reaper.py)."""
    import graph

    args = variant([{"name": "interrupted", "deployment": {"num_cpus": 0.1}}], BROKEN)
    serve._run(graph.app_builder(args), _blocking=False, name="loading", route_prefix="/loading")
    try:
        core = wait_until(lambda: engine_core("interrupted", "loading"), 120,
                          "the engine to start loading", retry_on=(AssertionError,))
    finally:
        serve.delete("loading")
    wait_until(lambda: ended(core.pid), 30, "the loading engine to end")
    wait_until(lambda: not orphaned_engines(), 10, f"no orphaned engine: {orphaned_engines()}")


@pytest.mark.parametrize("deployment,path,body,limit_s", [
    ("embedder", "/v1/embeddings", {"model": EMBED, "input": ["a sentence to embed"] * 4}, 60),
    ("router", "/v1/chat/completions", HI, 60),
    # An LLM replica reloads vLLM (~40-75 s on this 2-core host): meanwhile the next tier answers.
    ("fast", "/v1/chat/completions", HI, 180),
], ids=["embedder", "router", "llm"])
def test_killed_replica_loses_nothing_and_comes_back(http, deployment, path, body, limit_s):
    old = {}

    def fault():
        old["name"] = kill_replica(deployment)

    result = asyncio.run(load_through_fault(
        path, body, fault, lambda: healthy_on_a_new_replica(deployment, old["name"]),
        warmup_s=5, window_s=5, limit_s=limit_s))
    assert result["lost"] == 0
    assert http.get("/health").status_code == 200
    wait_until(lambda: not orphaned_engines(), 10, f"no orphaned engine: {orphaned_engines()}")


def test_dead_engine_fails_over_and_its_replica_is_replaced(http):
    """SIGKILL of the entry tier's engine core: its requests fail over to the next tier at once,
    the router marks the tier down, the health check fails and Serve replaces the replica."""
    old = {"name": replica_actor("fast")[1]}

    def fault():
        core = engine_core_loaded("fast")
        core.kill()
        return {"engine_pid": core.pid}

    result = asyncio.run(load_through_fault(
        "/v1/chat/completions", HI, fault, lambda: healthy_on_a_new_replica("fast", old["name"])))
    assert result["lost"] == 0, result
    assert result["recovered_s"] <= load_s("fast") + RECOVERY_SLACK_S, result
    # The new replica serves; the router's probe of it may still time out while it warms up on
    # this busy host ("slow"): wait, bounded, for the state the test claims.
    wait_until(lambda: tier_status("fast") == "ok", 60,
               "the router to see the new fast replica ok")
    wait_until(lambda: not orphaned_engines(), 10, f"no orphaned engine: {orphaned_engines()}")


def test_stalled_engine_is_routed_around_then_replaced(http):
    """SIGSTOP of the entry tier's engine core (the replica still answers; its engine does not):
    within seconds the router finds the core silent and using no CPU, and sends the waiting
    streams and the new ones to the next tier (throughput while routed around at least half of
    normal); after the tier's `frozen_timeout_s` the health check fails and Serve replaces the
    replica; the stopped engine does not outlive it."""
    old = {"name": replica_actor("fast")[1]}
    seen = {}

    def fault():
        core = engine_core_loaded("fast")
        core.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        wait_until(lambda: tier_status("fast") in ("stalled", "unavailable"), 30,
                   "the router to route around the stalled tier", 0.25)
        seen["rerouted_s"] = round(time.monotonic() - stopped, 1)
        return {"engine_pid": core.pid}

    def recovered():
        if not healthy_on_a_new_replica("fast", old["name"]):
            return False
        return tier_status("fast") == "ok"

    # Short answers, scored without samples: a request takes a second or two, so the windows hold
    # dozens of answers. (With 4 samples per answer one took ~20 s at c=8 on a slow host, the
    # 20 s window held 3 answers, and the ratio below was chance: 0.15 vs 0.4 requests/s.)
    stream = {**HI, "max_tokens": 16, "stream": True, "quality": {"samples": 0}}
    try:
        # Throughput while routed around: the 10 s after the router saw the stall, before Serve
        # replaces the replica (5 s frozen, then 3 failed checks 5 s apart) and its new engine
        # loads on the same two cores.
        result = asyncio.run(load_through_fault("/v1/chat/completions", stream, fault, recovered,
                                                window_s=10))
    except BaseException:  # never leave a stopped process behind when the test fails
        for process in psutil.process_iter():
            if title(process).startswith("VLLM::") and process.status() == psutil.STATUS_STOPPED:
                os.kill(process.pid, signal.SIGKILL)
        raise
    result.update(seen)
    print(result)
    assert result["lost"] == 0, result
    # A stopped core is silent and uses no CPU: router.frozen_reroute_s (2) after the heartbeat's
    # next question (within 1 s), seen by the next probe (every 2 s): 5 s, and a second of slack
    # for /health's own polling on a busy host.
    config = GraphConfig.model_validate(config_args())
    frozen = config.router.frozen_reroute_s
    assert result["rerouted_s"] <= frozen + 1 + config.router.probe_interval_s + 1, result
    assert result["during_rps"] >= 0.5 * result["normal_rps"], result
    # The tier's frozen_timeout_s (5) before the health check fails, then a new engine loads.
    assert result["recovered_s"] <= (config.tiers[0].frozen_timeout_s + load_s("fast")
                                     + RECOVERY_SLACK_S), result
    assert ended(result["engine_pid"])
    wait_until(lambda: not orphaned_engines(), 10, f"no orphaned engine: {orphaned_engines()}")


def test_every_replica_killed_at_once_comes_back(http):
    """One replica of every deployment killed at once under load (the last test of the main
    graph): the graph answers again once the router and the first tier are back, and is healthy
    again once both engines have loaded (side by side, the default tier_load_order)."""
    old = {d: replica_actor(d)[1] for d in ("router", "embedder", "fast", "careful")}
    seen = {}

    def fault():
        killed = time.monotonic()
        for deployment in old:
            kill_replica(deployment)
        wait_until(lambda: httpx.post(f"{BASE}/v1/chat/completions", json=HI,
                                      timeout=30).status_code == 200,
                   180, "the graph to answer again", 0.5, retry_on=(httpx.HTTPError,))
        seen["answering_s"] = round(time.monotonic() - killed, 1)

    result = asyncio.run(load_through_fault(
        "/v1/chat/completions", HI, fault,
        lambda: all(healthy_on_a_new_replica(d, name) for d, name in old.items()), limit_s=240))
    result.update(seen)
    print(result)
    # Engines loading side by side (tier_load_order's default): 48.6 / 48.8 s on an Intel host
    # with bfloat16 engines, 104.5 / 106.1 s on a 2-core AMD host in float32. The bound follows
    # the engines' own load time on the host at hand.
    bound = load_s("fast", "careful") + RECOVERY_SLACK_S
    assert result["answering_s"] <= bound, (result, bound)
    assert result["recovered_s"] <= bound, (result, bound)
    wait_until(lambda: http.get("/health").json()["status"] == "ok", 60,
               "/health to say ok once every replica is back")
    wait_until(lambda: not orphaned_engines(), 10, f"no orphaned engine: {orphaned_engines()}")
