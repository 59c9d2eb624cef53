"""Kill a replica of each deployment in the middle of bounded load: nothing is lost (the client
retries once on a 5xx or a broken connection, as the openai client does), and Serve replaces the
replica. Runs after the other tests of the main graph: it takes replicas away on purpose."""

import asyncio
import time

import httpx
import pytest
import ray
from ray import serve

from tests.e2e.conftest import BASE

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
APP = "graphserve"


def replica_actor(deployment: str):
    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    found = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(prefix)]
    assert len(found) == 1, found
    return ray.get_actor(found[0]["name"], namespace=found[0]["namespace"]), found[0]["name"]


def seconds_to_recover(deployment: str, old_name: str, killed_at: float) -> float:
    """Polls (in a thread, beside the load) until Serve reports the deployment healthy again on
    a replica other than the one killed."""
    while time.monotonic() - killed_at < 300:
        if serve.status().applications[APP].deployments[deployment].status.value == "HEALTHY":
            try:
                if replica_actor(deployment)[1] != old_name:
                    return time.monotonic() - killed_at
            except AssertionError:
                pass  # the old and the new replica both listed for a moment
        time.sleep(0.5)
    raise AssertionError(f"{deployment} did not come back within 300 s")


async def load_with_kill(path: str, body: dict, deployment: str, total=200, concurrency=8,
                         kill_after=40) -> dict:
    """`total` requests, `concurrency` at a time; the replica is killed after `kill_after` have
    finished. Returns counts and the seconds until the deployment is healthy on a new replica."""
    done, retried, lost = 0, 0, 0
    recovery = None
    queue = iter(range(total))

    statuses: dict = {}

    async def send(client) -> bool:
        """A valid request is answered 200; anything else (a 4xx too) needs the retry."""
        try:
            r = await client.post(path, json=body)
        except httpx.TransportError as e:
            statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
            return False
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        return r.status_code == 200

    async def worker(client):
        nonlocal done, retried, lost, recovery
        for _ in queue:
            if not await send(client):
                retried += 1
                await asyncio.sleep(1)
                if not await send(client):
                    lost += 1
            done += 1
            if done == kill_after and recovery is None:
                actor, old_name = replica_actor(deployment)
                ray.kill(actor, no_restart=True)
                recovery = asyncio.create_task(asyncio.to_thread(
                    seconds_to_recover, deployment, old_name, time.monotonic()))

    async with httpx.AsyncClient(base_url=BASE, timeout=180) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    result = {"deployment": deployment, "sent": total, "retried": retried, "lost": lost,
              "statuses": statuses, "recovered_s": round(await recovery, 1)}
    print(f"\n{result}")
    return result


@pytest.mark.parametrize("deployment,path,body,limit_s", [
    ("embedder", "/v1/embeddings", {"model": EMBED, "input": ["a sentence to embed"] * 4}, 60),
    ("router", "/v1/chat/completions", {"model": CHAT, "max_tokens": 4, "temperature": 0,
                                        "messages": [{"role": "user", "content": "Hi"}]}, 60),
    # An LLM replica reloads vLLM (~75 s on this 2-core host): meanwhile the next tier answers.
    ("fast", "/v1/chat/completions", {"model": CHAT, "max_tokens": 4, "temperature": 0,
                                      "messages": [{"role": "user", "content": "Hi"}]}, 180),
], ids=["embedder", "router", "llm"])
def test_killed_replica_loses_nothing_and_comes_back(http, deployment, path, body, limit_s):
    result = asyncio.run(load_with_kill(path, body, deployment))
    assert result["lost"] == 0
    assert result["recovered_s"] < limit_s
    assert http.get("/health").status_code == 200
