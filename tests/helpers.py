"""Helpers shared by the unit, end-to-end and cluster tests."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

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



def generator():
    """cluster/generate.py as a module (a script, not a package): the manifests' source."""
    spec = importlib.util.spec_from_file_location("cluster_generate", ROOT / "cluster" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_env() -> dict[str, str]:
    """Ray Serve's data path from cluster/serve.env, parsed as the cluster manifests parse it."""
    return generator().serve_env()
