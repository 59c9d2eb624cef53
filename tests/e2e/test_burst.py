"""A 1,280-request burst at the main graph (Ray issue #54070: such a burst made health checks time
out and Serve restart healthy replicas). Every request gets an answer: a 200, a 429 with
Retry-After (full), or a 504 (waited past request_timeout_s), each error with the OpenAI body;
none is a 503, because nothing is down; no replica is restarted: the health checks held, and no
busy engine's silence reached the stall timeout that would replace it."""

import asyncio
import collections
import time

import httpx

from deployments.config import GraphConfig
from tests.e2e.conftest import BASE, config_args
from tests.helpers import replica_actors, wait_until
from tests.support.metrics import scrape

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
BURST = 1280


def silences() -> dict[float, float]:
    """Heartbeat answers so far by histogram bound (le), summed over the tiers' replicas."""
    out: dict[float, float] = {}
    for (name, labels), v in scrape().items():
        if name == "ray_graphserve_engine_silence_seconds_bucket":
            le = float(dict(labels)["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def replica_names() -> set[str]:
    return {a["name"] for a in replica_actors("graphserve")}


async def watch_tiers(seen: dict, until: asyncio.Event) -> None:
    """What the router reports of each tier while the burst lasts: every status it showed and the
    longest `engine_frozen_s` (a silent core seen using no CPU: what routes a tier around sooner)."""
    async with httpx.AsyncClient(base_url=BASE, timeout=60) as client:
        while not until.is_set():
            try:
                deployments = (await client.get("/health")).json()["deployments"]
            except httpx.HTTPError:
                deployments = None
            for tier in seen["tiers"] if deployments else ():
                seen["statuses"].add(deployments[tier]["status"])
                seen["frozen_s"] = max(seen["frozen_s"], deployments[tier].get("engine_frozen_s", 0))
            seen["reads"] += bool(deployments)
            await asyncio.sleep(0.5)


async def burst(seen: dict) -> list[httpx.Response | Exception]:
    chat = {"model": CHAT, "max_tokens": 4, "temperature": 0, "quality": {"enabled": False},
            "messages": [{"role": "user", "content": "Hi"}]}
    embed = {"model": EMBED, "input": ["a sentence in a burst"]}
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_tiers(seen, done))
    async with httpx.AsyncClient(base_url=BASE, timeout=180, limits=limits) as client:
        calls = [client.post("/v1/embeddings", json=embed) if i % 5 == 4
                 else client.post("/v1/chat/completions", json=chat) for i in range(BURST)]
        responses = await asyncio.gather(*calls, return_exceptions=True)
    done.set()
    await watcher
    return responses


def test_burst_of_1280_requests_sheds_cleanly_and_restarts_nothing(http):
    before = replica_names()
    heard_before = silences()
    config = GraphConfig.model_validate(config_args())
    seen = {"tiers": [t.name for t in config.tiers], "statuses": set(), "frozen_s": 0.0, "reads": 0}
    started = time.monotonic()
    responses = asyncio.run(burst(seen))
    took = time.monotonic() - started
    errors = [r for r in responses if isinstance(r, Exception)]
    answered = [r for r in responses if not isinstance(r, Exception)]
    codes = collections.Counter(r.status_code for r in answered)
    embeddings = collections.Counter(getattr(r, "status_code", type(r).__name__)
                                     for i, r in enumerate(responses) if i % 5 == 4)
    refused = [r for r in answered if r.status_code != 200]
    kinds = collections.Counter((r.status_code, r.text[:120]) for r in refused)
    print(f"\n{BURST} requests at once in {took:.1f} s: {dict(codes)}, "
          f"{len(errors)} connection errors; refusals: {dict(kinds)}")
    assert not errors, errors[:3]
    # A busy engine uses CPU while it is silent: never seen frozen long enough to be routed around
    # (router.frozen_reroute_s) or replaced (the tiers' frozen_timeout_s; below: no restart).
    print(f"/health read {seen['reads']} times during the burst: tier statuses "
          f"{sorted(seen['statuses'])}, longest engine_frozen_s {seen['frozen_s']}")
    assert seen["reads"] >= 3, seen
    assert seen["frozen_s"] <= config.router.frozen_reroute_s, seen
    # Nothing is down, so what does not fit is "busy" (429), never "unavailable" (503); what
    # waited past request_timeout_s in the queues is a 504. Each with the OpenAI error body.
    assert set(codes) <= {200, 429, 504}, codes
    # What the graph can hold at once is taken, not shed: the embedder queues every one of the 256
    # embeddings, and at least a full entry tier's worth of chats is taken (answered, or answered
    # 504 once it waited request_timeout_s in the queue); only what does not fit gets a 429. How
    # many of the taken chats are answered within the timeout is the host's speed, not a rule
    # (this test prints it: 174 of 643 in one run on a 2-core AMD host with float32 engines).
    fast = config_args()["tiers"][0]["deployment"]
    embedder = config_args()["embedder"]["deployment"]
    assert BURST // 5 <= embedder["max_ongoing_requests"] + embedder["max_queued_requests"]
    assert embeddings == {200: BURST // 5}, embeddings
    chats = {code: count - embeddings.get(code, 0) for code, count in codes.items()}
    taken = chats.get(200, 0) + chats.get(504, 0)
    assert taken >= fast["max_ongoing_requests"] + fast["max_queued_requests"], chats
    assert chats.get(200, 0) > 0, chats  # and the engine answered while the burst lasted
    for r in refused:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text[:200]
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) > 0
    # Health checks run every 10 s with a 30 s timeout (serve_config.yaml); give one more round.
    time.sleep(12)
    # Every replica from before is still there (the embedder's autoscaling may have added one).
    assert before <= replica_names(), "a replica was restarted during the burst"
    # The engines' silences (heartbeat waits) over the burst: none as long as a tier's
    # stall_timeout_s, after which its health check fails and Serve would replace a busy engine.
    # How close they come to router.stall_reroute_s (routed around while another tier answers)
    # is printed: measured, not a rule (longest <= 7.5 s of 10 on a 2-core AVX-512 host).
    heard = {le: n - heard_before.get(le, 0.0) for le, n in silences().items()}
    replace_s = min(t.stall_timeout_s for t in config.tiers)
    under = max(le for le in heard if le <= replace_s)
    longest = min(le for le, n in heard.items() if n == heard[float("inf")])
    print(f"engine silences over the burst: {heard[float('inf')]:.0f} heartbeats, the longest "
          f"<= {longest} s (stall_reroute_s {config.router.stall_reroute_s}, "
          f"stall_timeout_s {replace_s})")
    assert heard[float("inf")] > 0, heard
    assert heard[under] == heard[float("inf")], (
        f"an engine core was silent > {under} s while busy (stall_timeout_s {replace_s}): {heard}")
    # Back to ok once the queues drain (a probe that waited behind the burst reads "slow").
    wait_until(lambda: http.get("/health").json()["status"] == "ok", 60,
               "/health to say ok after the burst")
