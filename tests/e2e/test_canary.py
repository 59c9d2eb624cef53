"""The quality canary on a real tier, in an app of its own next to the main graph: healthy, the
tier answers its checks right; redeployed with a config that ruins its answers (a default
`max_tokens` of 2: every answer is cut before it names a city), /health reports the tier failing
its canary within two rounds while the tier stays up and serving, and the metrics count the
wrong answers."""

import time

import httpx
import pytest

from tests.e2e.conftest import BASE, config_args, deploy, remove, variant, wait_until
from tests.support.metrics import scrape, value

APP = "canary"
INTERVAL_S = 5.0


def canary_args(**sampling) -> dict:
    fast = config_args()["tiers"][0]
    args = variant([{"name": "solo", "sampling": {**fast["sampling"], **sampling},
                     "deployment": {**fast["deployment"], "num_cpus": 0.2}}],
                   config_args()["embedder"]["model_source"])
    args["router"]["canary"] = {"interval_s": INTERVAL_S, "min_correct_share": 0.75}
    return args


@pytest.fixture(scope="module")
def canary_app(base_url):
    yield
    remove(APP)


def health() -> httpx.Response:
    return httpx.get(f"{BASE}/{APP}/health", timeout=30)


def round_after(moment: float) -> dict | None:
    """The solo tier's last canary round, if it ended after `moment` (wall clock)."""
    body = health().json()
    last = body["deployments"]["solo"].get("canary")
    return last if last and last["at"] > moment else None


def wrong_answers_counted() -> float:
    return value(scrape(APP), "ray_graphserve_canary_checks_total", correct="false")


def test_a_healthy_tier_passes_its_canary(canary_app):
    deploy(APP, canary_args())
    ready = time.time()
    # A round is 4 answers at the tier's defaults (up to 256 tokens), scored as a client's (the
    # config's cascade: no samples on this host). On a 2-core AMD host with float32 engines and
    # 4 samples per answer one round's answers took 67, 89 and 114 s and the fourth over 190 s.
    last = wait_until(lambda: round_after(ready), 2 * INTERVAL_S + 360, "a canary round", 0.5)
    print(f"\nhealthy round: {last['correct']}/{last['checks']} right, mean score "
          f"{last['mean_score']}, {last['duration_s']} s; answers: "
          f"{[a['answer'] for a in last['answers']]}")
    assert not last["failing"] and last["correct"] >= 3 and last["mean_score"] is not None
    assert health().json()["status"] == "ok"


def test_a_tier_with_ruined_answers_fails_its_canary_within_two_rounds(canary_app):
    wrong_before = wrong_answers_counted()
    deploy(APP, canary_args(max_tokens=2))
    ready = time.time()
    last = wait_until(lambda: (r := round_after(ready)) and r["failing"] and r, 4 * INTERVAL_S + 60,
                      "the canary to fail", 0.25)
    seen_after = time.time() - ready
    print(f"\nbroken round seen {seen_after:.1f} s after the app was ready "
          f"(round took {last['duration_s']} s); answers: {[a['answer'] for a in last['answers']]}")
    assert last["correct"] == 0 and all(len(a["answer"].split()) <= 3 for a in last["answers"])
    # Within two rounds: at most one interval to the next round, one more for a round that
    # started while the tier was still loading, plus this round's own time.
    assert seen_after <= 2 * INTERVAL_S + last["duration_s"] + 1, seen_after
    r = health()
    solo = r.json()["deployments"]["solo"]
    # Up and answering, but wrongly: degraded, not unavailable.
    assert r.status_code == 200 and r.json()["status"] == "degraded" and solo["status"] == "ok"
    chat = httpx.post(f"{BASE}/{APP}/v1/chat/completions", timeout=60, json={
        "model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 2
    wait_until(lambda: wrong_answers_counted() >= wrong_before + last["checks"], 30,
               "the wrong answers to reach the metrics", 1)
