"""What the router knows of the deployments below it, and how /health shows it."""

import asyncio

from ray.serve.exceptions import DeploymentUnavailableError

from deployments.availability import Availability, health, watch


def test_availability_marks_down_until_a_probe_answers():
    seen = Availability(["fast", "embedder"])
    assert not seen.is_down("fast") and seen.state["fast"]["status"] == "starting"
    seen.down("fast", asyncio.TimeoutError())  # still loading its model: starting, not down
    assert not seen.is_down("fast")
    seen.down("fast", ConnectionError("gone"))  # an explicit failure: down
    assert seen.is_down("fast") and seen.state["fast"]["error"] == "ConnectionError"
    seen.up("fast", {"model": "m", "load_seconds": 1.0})
    assert not seen.is_down("fast") and seen.state["fast"] == {
        "status": "ok", "model": "m", "load_seconds": 1.0}
    seen.down("fast", asyncio.TimeoutError())  # answered before, slow now (a burst): not down
    assert not seen.is_down("fast") and seen.state["fast"]["status"] == "slow"
    seen.down("fast", DeploymentUnavailableError("fast"))
    assert seen.is_down("fast") and not seen.is_down("embedder")


def test_a_stalled_tier_is_still_used_when_no_other_tier_can_answer_sooner():
    """A stall may be a slow step on a crowded host: with the other tier dead, the stalled one
    serves (waiting beats a 503); with both stalled, the less silent one does."""
    seen = Availability(["fast", "careful"], stall_after_s=5, tiers=["fast", "careful"])
    seen.up("fast", {"engine_silent_s": 0.0})
    seen.up("careful", {"engine_silent_s": 7.0})
    assert seen.is_down("careful")
    seen.down("fast", DeploymentUnavailableError("fast"))
    assert seen.is_down("fast") and not seen.is_down("careful")
    assert not seen.fell("careful").is_set()  # back up, told with a fresh signal
    seen.up("fast", {"engine_silent_s": 9.0})
    assert seen.is_down("fast") and not seen.is_down("careful")
    seen.up("careful", {"engine_silent_s": 12.0})
    assert not seen.is_down("fast") and seen.is_down("careful")
    assert seen.fell("careful").is_set()


def test_a_silent_engine_using_no_cpu_is_stalled_sooner_than_a_busy_one():
    """Silent 3 s in a long step (its processes use CPU): still ok below stall_after_s; silent 3 s
    with no CPU used for more than frozen_after_s (stopped, deadlocked): stalled at once."""
    seen = Availability(["fast", "careful"], stall_after_s=10, tiers=["fast", "careful"],
                        frozen_after_s=2)
    seen.up("careful", {"engine_silent_s": 0.0, "engine_frozen_s": 0.0})
    seen.up("fast", {"engine_silent_s": 7.5, "engine_frozen_s": 0.0})
    assert not seen.is_down("fast") and seen.state["fast"]["status"] == "ok"
    seen.up("fast", {"engine_silent_s": 3.0, "engine_frozen_s": 2.5})
    assert seen.is_down("fast") and seen.state["fast"]["status"] == "stalled"
    assert "no CPU used for 2 s" in seen.state["fast"]["error"]
    seen.up("fast", {"engine_silent_s": 0.0, "engine_frozen_s": 0.0})
    assert not seen.is_down("fast")




def test_health_is_ok_degraded_or_unavailable_by_what_can_answer():
    seen = Availability(["fast", "careful", "embedder"], stall_after_s=5, tiers=["fast", "careful"])
    for name in ("fast", "careful", "embedder"):
        seen.up(name, {"engine_silent_s": 0.0})
    body, status = health(seen, ["fast", "careful"], "embedder", "router", {}, None)
    assert (body["status"], status) == ("ok", 200)
    assert body["deployments"]["router"] == {"role": "router", "status": "ok"}
    serve_view = {"fast": {"serve_status": "HEALTHY", "replicas": {"RUNNING": 1}}}
    failing = {"careful": {"failing": True, "correct": 1}}
    body, status = health(seen, ["fast", "careful"], "embedder", "router", failing, serve_view)
    assert (body["status"], status) == ("degraded", 200)  # a wrong-answering tier still answers
    assert body["deployments"]["fast"]["replicas"] == {"RUNNING": 1}
    assert body["deployments"]["careful"]["canary"] == failing["careful"]
    seen.down("embedder", DeploymentUnavailableError("embedder"))
    body, status = health(seen, ["fast", "careful"], "embedder", "router", {}, None)
    assert (body["status"], status) == ("degraded", 200)
    seen.down("fast", DeploymentUnavailableError("fast"))
    seen.up("careful", {"engine_silent_s": 9.0})  # stalled, but the only one: still answers
    body, status = health(seen, ["fast", "careful"], "embedder", "router", {}, None)
    assert (body["status"], status) == ("degraded", 200)
    seen.down("careful", DeploymentUnavailableError("careful"))
    body, status = health(seen, ["fast", "careful"], "embedder", "router", {}, None)
    assert (body["status"], status) == ("unavailable", 503)


def test_the_probe_loop_reports_answers_and_failures_and_never_raises():
    """Each probe sees what the one before it reported; a failing probe does not end the loop."""
    answers = [{"model": "m"}, ConnectionError("gone"), {"model": "m"}]
    seen_before = []

    async def scenario():
        seen = Availability(["fast"])
        done = asyncio.Event()

        async def probe():
            seen_before.append(seen.state["fast"]["status"])
            if not answers:
                done.set()
                await asyncio.Event().wait()  # the test ends the loop here
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        task = asyncio.ensure_future(watch("fast", probe, seen, 0, 1))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()

    asyncio.run(scenario())
    assert seen_before == ["starting", "ok", "unavailable", "ok"]


def test_health_shows_a_tier_s_calibration_without_changing_the_status():
    seen = Availability(["fast", "embedder"], tiers=["fast"])
    seen.up("fast", {"engine_silent_s": 0.0})
    seen.up("embedder", {})
    mismatch = {"fast": {"model": "a", "dtype": "bfloat16", "matches": False, "reason": "fitted for a"}}
    body, status = health(seen, ["fast"], "embedder", "router", {}, None, mismatch)
    assert (body["status"], status) == ("ok", 200)  # serving is unchanged; reports say it
    assert body["deployments"]["fast"]["calibration"]["reason"] == "fitted for a"
