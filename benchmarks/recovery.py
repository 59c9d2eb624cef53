"""Time to serve: cold start against `vllm serve`, where a replica's start goes, and recovery
from losing every replica at once: `python -m benchmarks.recovery` (`make bench-recovery`).

Each repeat, one after another on this host: `vllm serve` on the fast tier's weights and engine
settings (launch to its first chat answer), then the graph once per `--variants` entry (`serve
run` of serve_config.yaml with that change, as a user starts it): launch to the first chat
answer and to /health ok; each LLM replica's start from /health (`start_phases_s`: Ray's worker
and this project's imports, its turn, vLLM's import, the engine, the warm-up answer; and the
seconds before its process existed: Ray, Serve, the controller), with Serve's own steps before
it from the controller's log (the controller, the proxies, the applications' build); the CPU
seconds every process each server started spent until its first answer (the host's cores are
what the engines, Ray and Serve share); then, under light load (2 clients), every replica of
every deployment killed at once: seconds until the graph answers again and until every
deployment is healthy on new replicas, with the new replicas' phases.
Writes benchmarks/results/recovery.{json,md} (`--name`: another file name).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.overhead import StartCpu, first_answer
from benchmarks.peers import GraphServer, VLLMServer
from benchmarks.report import write_results

RESULTS = Path(__file__).resolve().parent / "results"
APP = "graphserve"
TIERS = ("fast", "careful")
DEPLOYMENTS = ("router", "embedder", *TIERS)
HI = {"model": "smollm2-135m-instruct", "max_tokens": 4, "temperature": 0,
      "messages": [{"role": "user", "content": "Hi"}]}
# name: (keys replaced in every tier, keys replaced in the graph's args, Serve's environment)
VARIANTS = {
    "fork": ({"engine_core_start": "fork"}, {"tier_load_order": "side_by_side"}, {}),
    "spawn": ({"engine_core_start": "spawn"}, {}, {}),  # vLLM's own choice in a Ray actor
    # the tiers' engines one after another (their vLLM imports side by side), in escalation order
    "fork_in_turn": ({"engine_core_start": "fork"}, {"tier_load_order": "in_turn"}, {}),
    # Serve's Python proxy and Ray actor calls instead of the shipped HAProxy data path
    "fork_serve_proxy": ({"engine_core_start": "fork"}, {},
                         {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"}),
}
PHASES = ("process", "vllm_import", "waiting", "engine", "warmup")
# Serve's steps before an LLM replica's worker exists, as its controller logs them (Ray 2.60):
# (name, the message's start, which occurrence)
SERVE_STEPS = (
    ("controller", "Controller starting", "first"),
    # the controller deploys applications once every proxy (here HAProxy) is ready
    ("proxies ready", "Deploying new app", "first"),
    ("apps built", "Imported and built app", "last"),
    ("LLM replicas asked for", "Starting Replica(", "first LLM"),
)
CONTROLLER_LINE = re.compile(
    r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s+controller \d+ -- (.*)$")


def answers(base: str) -> bool:
    try:
        return httpx.post(f"{base}/v1/chat/completions", json=HI, timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def health(base: str) -> dict | None:
    """/health's body when it says ok, else None."""
    try:
        r = httpx.get(f"{base}/health", timeout=10)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 and r.json().get("status") == "ok" else None


def until(predicate, limit_s: float, since: float, interval_s: float = 0.25) -> float | None:
    """Seconds from `since` (monotonic) until `predicate()` held, or None past `limit_s`."""
    while time.monotonic() - since < limit_s:
        if predicate():
            return round(time.monotonic() - since, 1)
        time.sleep(interval_s)
    return None


def replica_starts(body: dict | None, since_wall: float) -> dict[str, dict]:
    """Each LLM tier's start from a /health body: its phases, and the seconds from `since_wall`
    until its process existed (the body's uptime and phases, read back from now); none from a
    graph that never became healthy."""
    now = time.time()
    starts: dict[str, dict] = {}
    if body is None:
        return starts
    for tier in TIERS:
        d = body["deployments"][tier]
        phases = {k: d["start_phases_s"][k] for k in PHASES}
        ready = now - d["uptime_seconds"]  # when its warm-up was answered
        created = ready - sum(phases.values())
        starts[tier] = {"before_process": round(created - since_wall, 1), **phases,
                        "ready": round(ready - since_wall, 1)}
    return starts


def serve_steps(controller_log: str, since_wall: float) -> dict[str, float]:
    """Seconds from `since_wall` to each of SERVE_STEPS in Serve controllers' logs (local time,
    as Ray writes it); a step the log lacks is absent."""
    seen: dict[str, float] = {}
    for line in controller_log.splitlines():
        match = CONTROLLER_LINE.match(line)
        if not match:
            continue
        at = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        at = round(at - since_wall, 1)
        for name, start, which in SERVE_STEPS:
            if not match[2].startswith(start) or (which == "first LLM" and not any(
                    f"deployment='{tier}'" in match[2] for tier in TIERS)):
                continue
            earlier = seen.get(name, at)
            seen[name] = max(earlier, at) if which == "last" else min(earlier, at)
    return seen


def controller_logs() -> str:
    """The Serve controller logs of the Ray session started last on this host (`serve run`'s)."""
    folder = Path(tempfile.gettempdir(), "ray", "session_latest", "logs", "serve")
    return "\n".join(p.read_text(errors="replace") for p in folder.glob("controller_[0-9]*.log"))


def replica_names() -> dict[str, list[str]]:
    """Each deployment's replica actors (Serve names them, in its own namespace)."""
    import ray

    names: dict[str, list[str]] = {d: [] for d in DEPLOYMENTS}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        for d in DEPLOYMENTS:
            # the embedder is the ingress of its own application (serve_config.yaml)
            app = "embeddings" if d == "embedder" else APP
            if actor["name"].startswith(f"SERVE_REPLICA::{app}#{d}#"):
                names[d].append(actor["name"])
    return names


def healthy_on_new_replicas(base: str, old: dict[str, list[str]]) -> bool:
    if health(base) is None:
        return False
    now = replica_names()
    return all(now[d] and not set(now[d]) & set(old[d]) for d in DEPLOYMENTS)


def light_load(base: str, stop: threading.Event, codes: list[int]) -> None:
    """One client in a closed loop; after a failure it waits 0.5 s, as a polite client would."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            try:
                codes.append(client.post(f"{base}/v1/chat/completions", json=HI).status_code)
            except httpx.HTTPError:
                codes.append(0)
            if codes[-1] != 200:
                time.sleep(0.5)


def vllm_serve_run(port: int, log_dir: Path) -> dict:
    server = VLLMServer(port, log_dir)
    try:
        cpu = StartCpu()
        health_s = server.start()
        first_s = first_answer(server, HI["model"])
        return {"variant": "vllm serve", "cold_healthy_s": round(health_s, 1),
                "cold_first_answer_s": round(first_s, 1), "cold_cpu_s": cpu.stop()}
    finally:
        server.stop()


def graph_run(variant: str, port: int, log_dir: Path) -> dict:
    import ray

    tiers, args, env = VARIANTS[variant]
    server = GraphServer(port, log_dir, name=f"graph-{variant}", tiers=tiers, args=args, env=env)
    out: dict = {"variant": variant}
    try:
        launched_wall, cpu = time.time(), StartCpu()
        server.launch()
        launched = server.launched_at
        first: dict = {}
        poller = threading.Thread(target=lambda: first.update(s=until(
            lambda: answers(server.base), 300, launched), cpu=cpu.stop()))
        poller.start()
        out["cold_healthy_s"] = until(lambda: health(server.base) is not None, 300, launched)
        poller.join()
        out["cold_first_answer_s"], out["cold_cpu_s"] = first["s"], first["cpu"]
        out["cold_replicas"] = replica_starts(health(server.base), launched_wall)
        out["cold_serve_steps"] = serve_steps(controller_logs(), launched_wall)
        ray.init(address="auto", log_to_driver=False)  # the Ray `serve run` started
        time.sleep(10)
        stop, codes = threading.Event(), []
        load = [threading.Thread(target=light_load, args=(server.base, stop, codes))
                for _ in range(2)]
        for t in load:
            t.start()
        time.sleep(10)
        old = replica_names()
        killed_wall, killed = time.time(), time.monotonic()
        for names in old.values():
            for name in names:
                ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        answering = threading.Thread(target=lambda: first.update(r=until(
            lambda: answers(server.base), 300, killed)))
        answering.start()
        out["recovery_healthy_s"] = until(lambda: healthy_on_new_replicas(server.base, old),
                                          300, killed)
        answering.join()
        out["recovery_answering_s"] = first["r"]
        out["recovery_replicas"] = replica_starts(health(server.base), killed_wall)
        stop.set()
        for t in load:
            t.join()
        out["load_statuses"] = {str(c): codes.count(c) for c in sorted(set(codes))}
        print(out, flush=True)
        return out
    finally:
        if ray.is_initialized():
            ray.shutdown()
        server.stop()


def cell(values: list) -> str:
    """Every run ("–": not within the 300 s limit), then the median of those that finished."""
    listed = ", ".join("–" if v is None else str(v) for v in values)
    return f"{listed} (**{median(values)}**)" if values else "–"


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def markdown(runs: list[dict]) -> str:
    peer = [r for r in runs if r["variant"] == "vllm serve"]
    peer_first = median([r["cold_first_answer_s"] for r in peer])
    variants = list(dict.fromkeys(r["variant"] for r in runs if r["variant"] != "vllm serve"))
    lines = ["# Time to serve (`python -m benchmarks.recovery`)", "",
             "Seconds; each cell lists every run, then the median. Ratios: medians against "
             "`vllm serve`'s of the same run.", "",
             "## Cold start (launch to the first chat answer)", "",
             "| server | first answer | /health ok | first answer / vllm serve |",
             "|---|---|---|---|",
             f"| vllm serve | {cell([r['cold_first_answer_s'] for r in peer])} | "
             f"{cell([r['cold_healthy_s'] for r in peer])} | 1 |"]
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        first = median([r["cold_first_answer_s"] for r in mine])
        ratio = round(first / peer_first, 2) if first and peer_first else "–"
        changed = ", ".join(f"{k}: {val}" for part in VARIANTS[v] for k, val in part.items())
        lines.append(f"| graph, `{changed}` | "
                     f"{cell([r['cold_first_answer_s'] for r in mine])} | "
                     f"{cell([r['cold_healthy_s'] for r in mine])} | {ratio} |")
    servers = ["vllm serve", *variants]
    by_server = {v: [r for r in runs if r["variant"] == v and r.get("cold_cpu_s")]
                 for v in servers}
    roles = sorted({k for rs in by_server.values() for r in rs
                    for k, v in r["cold_cpu_s"].items() if v}, key=lambda k: (k == "total", k))
    lines += ["", "## Where the host's CPU went until the first answer (cold start)", "",
              f"CPU seconds (user + system; medians over the runs) of every process the server "
              f"started, from launch to its first chat answer, sampled each second (psutil); "
              f"this host has {os.cpu_count()} cores.", "",
              "| process | " + " | ".join(servers) + " |", "|---|" + "---|" * len(servers)]
    for k in roles:
        lines.append(f"| {k} | " + " | ".join(
            str(median([r["cold_cpu_s"].get(k, 0.0) for r in by_server[v]]) or "–")
            for v in servers) + " |")
    lines += ["", "## Before an LLM replica's worker started (cold start, from launch)", "",
              "Medians over the runs, from the Serve controller's log: its start, every proxy "
              "ready (it deploys the applications then), the applications built (their import "
              "in a worker of their own), the LLM tiers' replicas asked of Ray; then, from "
              "/health, their workers up (`before process`) and ready.", "",
              "| variant | " + " | ".join(name for name, _, _ in SERVE_STEPS)
              + " | LLM workers up | LLM replicas ready | first answer |",
              "|---|" + "---|" * (len(SERVE_STEPS) + 3)]
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        starts = [s for r in mine for s in r.get("cold_replicas", {}).values()]
        cells = [median([r.get("cold_serve_steps", {}).get(name) for r in mine])
                 for name, _, _ in SERVE_STEPS]
        cells += [median([s["before_process"] for s in starts]),
                  median([s["ready"] for s in starts]),
                  median([r["cold_first_answer_s"] for r in mine])]
        lines.append(f"| {v} | " + " | ".join("–" if c is None else str(c) for c in cells) + " |")
    for when, title in (("cold", "cold start, from launch"),
                        ("recovery", "every replica killed, from the kill")):
        lines += ["", f"## Where an LLM replica's start went ({title})", "",
                  "Medians over the runs and both tiers. `before process`: until Ray started "
                  "the replica's worker (Ray and Serve starting, the controller, a death "
                  "noticed); `process`: the worker and this project's imports; `ready`: the "
                  "replica answering its warm-up, from launch or kill.", "",
                  "| variant | before process | process | vLLM import | waiting | engine | "
                  "warm-up | ready |", "|---|---|---|---|---|---|---|---|"]
        for v in variants:
            starts = [s for r in runs if r["variant"] == v
                      for s in r.get(f"{when}_replicas", {}).values()]
            cells = [median([s[k] for s in starts])
                     for k in ("before_process", *PHASES, "ready")]
            lines.append(f"| {v} | " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "## Every replica killed at once, under light load (2 clients)", "",
              "| variant | answering again | all healthy on new replicas | light load's statuses |",
              "|---|---|---|---|"]
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        statuses = sum((Counter(r.get("load_statuses", {})) for r in mine), Counter())
        lines.append(f"| {v} | {cell([r.get('recovery_answering_s') for r in mine])} | "
                     f"{cell([r.get('recovery_healthy_s') for r in mine])} | "
                     f"{', '.join(f'{n} × {c}' for c, n in sorted(statuses.items()))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--name", default="recovery", help="results file name")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="graphserve-recovery-"))
    runs = []
    for _ in range(args.repeats):
        runs.append(vllm_serve_run(args.port, log_dir))
        print(runs[-1], flush=True)
        for variant in args.variants:
            runs.append(graph_run(variant, args.port, log_dir))
    write_results(RESULTS, args.name, runs, markdown(runs))
    print(f"server logs: {log_dir}")


if __name__ == "__main__":
    main()
