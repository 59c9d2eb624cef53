"""What the router knows of each deployment below it, and how /health shows it.

`Availability` keeps each downstream deployment's last probe or failed call; `watch` is the probe
loop; `health` turns the state into /health's answer. No Ray import: the state is plain data.
"""

from __future__ import annotations

import asyncio
import logging

from deployments.failures import failure

log = logging.getLogger("ray.serve")


class Availability:
    """What the router knows of each downstream deployment: its last probe, or a failed call.

    A deployment that is down is skipped at once instead of waited on: Serve queues calls to a
    deployment whose replicas are restarting, and the first call through a fresh handle to a
    failed deployment waits forever rather than raising. Down is "unavailable" (a failed call or
    probe), or "stalled" (its engine core left a question unanswered for `stall_after_s`, or for
    `frozen_after_s` with the engine's processes using no CPU meanwhile) while
    another of the `tiers` can answer sooner: a stall may be only a slow step on a crowded host,
    and waiting beats a 503. Calls already waiting on a deployment that goes down are told through
    `fell(name)`, so they move on too. The next probe that answers brings it back.
    """

    def __init__(self, names: list[str], stall_after_s: float = float("inf"),
                 tiers: list[str] = (), frozen_after_s: float = float("inf")):
        self.stall_after_s, self.frozen_after_s = stall_after_s, frozen_after_s
        self.tiers = list(tiers)
        self.state: dict[str, dict] = {n: {"status": "starting"} for n in names}
        self._fell = {n: asyncio.Event() for n in names}

    def _set(self, name: str, state: dict) -> None:
        """A new state for `name`; any deployment it makes go down (or come back) is told."""
        was = {n: self.is_down(n) for n in self.state}
        self.state[name] = state
        for n, was_down in was.items():
            if self.is_down(n) and not was_down:
                self._fell[n].set()
                log.warning("%s is down: %s (%s)", n, self.state[n]["status"],
                            self.state[n].get("error", ""))
            elif was_down and not self.is_down(n):
                self._fell[n] = asyncio.Event()

    def fell(self, name: str) -> asyncio.Event:
        """Set when `name` is found down from now on (a fresh event once it is back up)."""
        return self._fell[name]

    def up(self, name: str, info: dict) -> None:
        silent, frozen = info.get("engine_silent_s", 0), info.get("engine_frozen_s", 0)
        if silent > self.stall_after_s or frozen > self.frozen_after_s:
            self._set(name, {"status": "stalled", **info, "error": f"engine core silent for "
                             f"{silent:.0f} s, no CPU used for {frozen:.0f} s"})
        else:
            self._set(name, {"status": "ok", **info})

    def down(self, name: str, error: BaseException) -> None:
        """A failed probe or call, by `failure`: busy changes nothing; slow marks a deployment
        that was up "slow", not down (under a burst a probe waits behind the queue, and a 429
        must not turn into a 503); down marks it unavailable. One still loading stays "starting".
        """
        was = self.state[name]["status"]
        kind = failure(error)
        if kind == "busy":
            return
        if kind == "slow":
            if was != "starting":
                self._set(name, {**self.state[name], "status": "slow", "error": "TimeoutError"})
            return
        self._set(name, {**self.state[name], "status": "unavailable", "error": type(error).__name__})

    def is_down(self, name: str) -> bool:
        status = self.state[name]["status"]
        if status != "stalled":
            return status == "unavailable"
        silent = self.state[name]["engine_silent_s"]
        return any(self.state[t]["status"] in ("ok", "slow") or (
            self.state[t]["status"] == "stalled" and self.state[t]["engine_silent_s"] < silent)
            for t in self.tiers if t != name)


async def watch(name: str, probe, availability: Availability, interval_s: float,
                timeout_s: float) -> None:
    """Probe one downstream deployment (`probe()`: its `info`) on a fixed period, forever."""
    while True:
        try:
            info = await asyncio.wait_for(probe(), timeout_s)
        except Exception as e:  # a probe reports a failure, it never raises one
            availability.down(name, e)
        else:
            availability.up(name, info)
        await asyncio.sleep(interval_s)


def health(availability: Availability, tiers: list[str], embedder: str, router: str,
           canary: dict[str, dict], serve_deployments: dict[str, dict] | None,
           calibration: dict[str, dict] | None = None) -> tuple[dict, int]:
    """/health's body and status. Per deployment: its last probe, Serve's replica states (when
    Serve answered), a tier's last canary round and its calibration. 200 while at least one tier can answer ("ok",
    or "degraded" when anything is down, slow, stalled or failing its canary), 503 when none can.
    """
    state = availability.state
    deployments = {
        **{t: {"role": "llm", **state.get(t, {"status": "unknown"})} for t in tiers},
        embedder: {"role": "embedder", **state.get(embedder, {"status": "unknown"})},
        router: {"role": "router", "status": "ok"},
    }
    for name, serve_view in (serve_deployments or {}).items():
        if name in deployments:
            deployments[name].update(serve_view)
    for tier, round_ in canary.items():
        deployments[tier]["canary"] = round_
    for tier, fitted in (calibration or {}).items():
        deployments[tier]["calibration"] = fitted
    # A tier answers when up, even slow, or stalled while no other tier can answer sooner.
    llm_ok = any(deployments[t]["status"] in ("ok", "slow", "stalled")
                 and not availability.is_down(t) for t in tiers)
    # A tier failing its canary answers, but wrongly: degraded, not down. A calibration fitted
    # for another model or dtype is shown on its tier and in every report, and leaves the
    # status alone: the tier serves as well as before, its scores mean less.
    all_ok = all(d["status"] == "ok" and not d.get("canary", {}).get("failing")
                 for d in deployments.values())
    status = "ok" if all_ok else "degraded" if llm_ok else "unavailable"
    return {"status": status, "deployments": deployments}, 200 if llm_ok else 503
