"""Cold start, and recovery from losing every replica at once, for each `tier_load_order`, in one
run: `python -m benchmarks.recovery` (`make bench-recovery`, ~15 min).

For each order, alternating, `--repeats` times: Ray of its own (2 CPUs, as `make serve`), the
shipped serve_config.yaml; cold start = launch to the first chat answer and to every deployment
healthy; then, under light load (2 clients), every replica of every deployment killed at once:
seconds until the graph answers again and until every deployment is healthy on new replicas.
Writes benchmarks/results/recovery.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
APP = "graphserve"
DEPLOYMENTS = ("router", "embedder", "fast", "careful")
HI = {"model": "smollm2-135m-instruct", "max_tokens": 4, "temperature": 0,
      "messages": [{"role": "user", "content": "Hi"}]}


def answers(base: str) -> bool:
    try:
        return httpx.post(f"{base}/v1/chat/completions", json=HI, timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def until(predicate, limit_s: float, interval_s: float = 0.5) -> float | None:
    """Seconds until `predicate()` held, or None past `limit_s`."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if predicate():
            return round(time.monotonic() - started, 1)
        time.sleep(interval_s)
    return None


def replica_names() -> dict[str, list[str]]:
    """Each deployment's replica actors (Serve names them, in its own namespace)."""
    import ray

    names: dict[str, list[str]] = {d: [] for d in DEPLOYMENTS}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        for d in DEPLOYMENTS:
            if actor["name"].startswith(f"SERVE_REPLICA::{APP}#{d}#"):
                names[d].append(actor["name"])
    return names


SERVE_NAMESPACE = "serve"


def healthy_on_new_replicas(old: dict[str, list[str]]) -> bool:
    from ray import serve

    deployments = serve.status().applications[APP].deployments
    if any(deployments[d].status.value != "HEALTHY" for d in DEPLOYMENTS):
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


def one_run(order: str, port: int) -> dict:
    import ray
    from ray import serve

    import graph

    base = f"http://127.0.0.1:{port}"
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    args["tier_load_order"] = order
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    out: dict = {"order": order}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        launched = time.monotonic()
        first: dict = {}
        poller = threading.Thread(target=lambda: first.update(s=until(lambda: answers(base), 300)))
        poller.start()
        serve.run(graph.app_builder(args), name=APP, route_prefix="/")  # returns once healthy
        out["cold_healthy_s"] = round(time.monotonic() - launched, 1)
        poller.join()
        out["cold_first_answer_s"] = first["s"]
        time.sleep(10)
        stop, codes = threading.Event(), []
        load = [threading.Thread(target=light_load, args=(base, stop, codes)) for _ in range(2)]
        for t in load:
            t.start()
        time.sleep(10)
        old = replica_names()
        for names in old.values():
            for name in names:
                ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)
        answering = threading.Thread(target=lambda: first.update(r=until(lambda: answers(base), 300)))
        answering.start()
        out["recovery_healthy_s"] = until(lambda: healthy_on_new_replicas(old), 300)
        answering.join()
        out["recovery_answering_s"] = first["r"]
        stop.set()
        for t in load:
            t.join()
        out["load_statuses"] = {str(c): codes.count(c) for c in sorted(set(codes))}
        print(out, flush=True)
        return out
    finally:
        serve.shutdown()
        ray.shutdown()


def markdown(runs: list[dict]) -> str:
    keys = ("cold_first_answer_s", "cold_healthy_s", "recovery_answering_s", "recovery_healthy_s")
    lines = ["# Cold start and recovery by `tier_load_order` (`python -m benchmarks.recovery`)", "",
             "Seconds; each cell lists every run, then the median.", "",
             "| order | cold start: first answer | cold start: all healthy | every replica killed: "
             "answering | every replica killed: all healthy |", "|---|---|---|---|---|"]
    for order in dict.fromkeys(r["order"] for r in runs):
        mine = [r for r in runs if r["order"] == order]
        cells = []
        for k in keys:
            values = [r[k] for r in mine if r.get(k) is not None]
            median = round(statistics.median(values), 1) if values else None
            cells.append(f"{', '.join(str(v) for v in values)} (**{median}**)")
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--port", type=int, default=18400)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        for order in ("in_turn", "side_by_side"):
            runs.append(one_run(order, args.port))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(runs, indent=2) + "\n")
    (RESULTS / "recovery.md").write_text(markdown(runs))
    print(markdown(runs))


if __name__ == "__main__":
    main()
