"""`tier_load_order: in_turn`: the engines of one app on one CPU host start one after another;
and on a GPU shared by several engines (fractional `num_gpus`), one engine loads at a time.

On a CPU host a replica's start is vLLM's import (one thread: two side by side take 5.1 s each,
one alone 4.8), then the engine (weights, KV cache, the warm-up answer: OpenMP threads on every
core; two at once 3.5 s against 2.3 s alone: benchmarks/results/startup.md). So each turn imports
at once and starts its engine when the earlier turns' engines are up. A turn holds an flock in
/tmp from its replica's start to its warm-up answer, and waits for the earlier turns' locks on
this host; engines on other hosts have cores of their own and do not wait. A turn whose
predecessors have not started yet simply goes first.
benchmarks/results/recovery_orders_collector_paused.md compares the two orders (session 21's,
before the imports' collector pause: recovery_engines_in_turn.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path


@contextlib.asynccontextmanager
async def loading_in_turn(turn: int, app: str):
    """Held from the replica's start until its engine answers; yields `earlier_turns_done`, to
    await once vLLM is imported, before the engine starts."""
    folder = Path(tempfile.gettempdir()) / f"graphserve-load-{app}"
    folder.mkdir(exist_ok=True)
    mine = open(folder / f"{turn}.lock", "w")

    async def earlier_turns_done() -> None:
        for earlier in range(turn):
            path = folder / f"{earlier}.lock"
            if path.exists():
                with open(path) as held:
                    await asyncio.to_thread(fcntl.flock, held, fcntl.LOCK_SH)

    try:
        await asyncio.to_thread(fcntl.flock, mine, fcntl.LOCK_EX)
        yield earlier_turns_done
    finally:
        # Unlocked explicitly: an engine core forked meanwhile holds a copy of this file.
        fcntl.flock(mine, fcntl.LOCK_UN)
        mine.close()


TurnWait = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def loading_alone_on_gpu(devices: str):
    """Held while an engine that shares its GPU loads: vLLM sizes its KV cache from the memory
    it sees used while it profiles, so two engines loading at once on one GPU charge each other's
    allocations (vLLM #9198: a tiny cache or "No available memory for the cache blocks").
    `devices`: the replica's CUDA_VISIBLE_DEVICES, as Ray set it; replicas that share a GPU share
    a node, hence this /tmp."""
    path = Path(tempfile.gettempdir()) / f"graphserve-gpu-{devices.replace(',', '-') or 'all'}.lock"
    with open(path, "w") as lock:  # closing it releases the lock
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        yield
