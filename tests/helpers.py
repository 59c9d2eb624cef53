"""Helpers shared by the unit, end-to-end and cluster tests."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent


def config_args() -> dict:
    """The `args` of the shipped serve_config.yaml: tests run what users run."""
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 1,
               retry_on: tuple[type[BaseException], ...] = ()):
    """The first truthy value of `predicate()` within `timeout_s`, or an AssertionError naming
    `what`. Exceptions of the types in `retry_on` count as "not yet" (a cluster mid-change)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except retry_on:
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def title(process: psutil.Process) -> str:
    """A process's command line as `ps` shows it (Ray and vLLM retitle their processes)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def ended(pid: int) -> bool:
    """The process is gone (or a zombie: dead, waiting for a parent that may never reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def vllm_processes() -> list[psutil.Process]:
    """vLLM's engine cores and workers on this host (their titles start with VLLM::)."""
    return [p for p in psutil.process_iter() if title(p).startswith("VLLM::")]


def engine_core(tier: str, app: str = "graphserve") -> psutil.Process:
    """The vLLM engine-core process of the one replica of `tier`."""
    replicas = [p for p in psutil.process_iter()
                if title(p).startswith(f"ray::ServeReplica:{app}:{tier}")]
    assert len(replicas) == 1, [title(p) for p in replicas]
    cores = [p for p in replicas[0].children(recursive=True) if "EngineCore" in title(p)]
    assert len(cores) == 1, [title(p) for p in replicas[0].children(recursive=True)]
    return cores[0]


def orphaned_engines() -> list[str]:
    """vLLM processes with no Serve replica above them: an engine that outlived its replica."""
    orphans = []
    for process in vllm_processes():
        try:
            parents = process.parents()
        except psutil.NoSuchProcess:
            continue
        if not any(title(p).startswith("ray::ServeReplica") for p in parents):
            orphans.append(f"{process.pid} {title(process)}")
    return orphans


def cluster_script(name: str):
    """cluster/<name>.py as a module (the scripts of cluster/ are not a package)."""
    spec = importlib.util.spec_from_file_location(f"cluster_{name}", ROOT / "cluster" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generator():
    """cluster/generate.py: the manifests' source."""
    return cluster_script("generate")




def app_of(deployment: str, graph_app: str = "graphserve") -> str:
    """The Serve application a deployment of the shipped graph is in: the embedder is the ingress
    of its own (serve_config.yaml's second application, `embedder.app_name`)."""
    return "embeddings" if deployment == "embedder" else graph_app


def replica_actors(app: str, deployment: str = "") -> list[dict]:
    """Serve's named actor (name, namespace) of every live replica of `app`, or of one of its
    deployments: a restarted replica has a new name."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#" + (f"{deployment}#" if deployment else "")
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)]


_handle_loop: asyncio.AbstractEventLoop | None = None


def call_deployment(deployment: str, app: str, method: str, *args):
    """A Serve handle call from synchronous test code, on one event loop kept in a thread for the
    session: under Ray's throughput-optimized mode a handle runs in the caller's loop, so a
    blocking `.result()` outside one fails, and a handle stays bound to the loop it first ran in."""
    global _handle_loop
    if _handle_loop is None:
        _handle_loop = asyncio.new_event_loop()
        threading.Thread(target=_handle_loop.run_forever, daemon=True).start()
    from ray import serve

    async def call():
        return await getattr(serve.get_deployment_handle(deployment, app), method).remote(*args)

    return asyncio.run_coroutine_threadsafe(call(), _handle_loop).result(timeout=60)

