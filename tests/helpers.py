"""Helpers shared by the unit, end-to-end and cluster tests."""

from __future__ import annotations

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


def serve_env() -> dict[str, str]:
    """Ray Serve's data path from cluster/serve.env (KEY=VALUE lines), as `make` exports it."""
    pairs = (line.split("=", 1) for line in (ROOT / "cluster" / "serve.env").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}

