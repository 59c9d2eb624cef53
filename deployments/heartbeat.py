"""Whether a vLLM engine core is alive, and its worker's heap kept small, by one background task.

Every second the task asks the core a trivial question (a utility call over its socket). The core
answers between two steps, so a busy one answers within a step's time, and one that is stopped or
hung in a step does not answer at all, whatever requests it holds: `silent_seconds` is how long the
current question has waited, and each answered question's wait is recorded
(`graphserve_engine_silence_seconds`: how long a busy engine's silences get). A busy core's silence
can last seconds (one long step on a crowded host: up to 7.5 s under the burst test here), so
silence alone is a slow stall signal. A core that is stopped or deadlocked is silent *and* spends
no CPU: `frozen_seconds` is how long the current silence has gone without the engine's processes
(the core and its workers, read from /proc every `CPU_SAMPLE_S`) using any CPU time. Every
`HEAP_RELEASE_EVERY_S` the same task asks the worker process, where the model runs, to hand its
freed heap pages back to the OS (`heap.WorkerExtension`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psutil

from deployments import metrics

log = logging.getLogger("ray.serve")

HEAP_RELEASE_EVERY_S = 10.0  # each release: one utility call, answered between two steps
CPU_SAMPLE_S = 0.25
ENGINE_TITLE = "VLLM::"  # vLLM retitles its engine core and worker processes


def engine_processes(root: psutil.Process) -> list[psutil.Process]:
    """The vLLM processes below `root` (the replica): its engine core and the core's workers."""
    found = []
    for process in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if " ".join(process.cmdline()).startswith(ENGINE_TITLE):
                found.append(process)
    return found


def cpu_seconds(processes: list[psutil.Process]) -> float | None:
    """User + system CPU time of the processes; None when none can be read (all gone)."""
    total, read = 0.0, False
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total, read = total + times.user + times.system, True
    return total if read else None


class Heartbeat:
    def __init__(self, engine, name: str, model: str = "",
                 processes: list[psutil.Process] | None = None):
        """`processes`: the engine's (None: found below this process, `engine_processes`)."""
        self.engine, self.name, self.model = engine, name, model
        self._asked_at: float | None = None
        self.processes = engine_processes(psutil.Process()) if processes is None else processes
        self._cpu: float | None = cpu_seconds(self.processes)
        self._cpu_advanced_at = self._sampled_at = time.monotonic()
        self._task = asyncio.create_task(self._listen())
        self._sampler = asyncio.create_task(self._sample_cpu())

    def silent_seconds(self) -> float:
        """How long the engine core has left the current question unanswered (0: it answered)."""
        return 0.0 if self._asked_at is None else time.monotonic() - self._asked_at

    def frozen_seconds(self) -> float:
        """How much of the current silence the engine's processes were seen using no CPU (0: it
        answered, or its processes are unknown: an engine core in this process). Only what the
        sampler saw counts: a replica whose own event loop was held up has not seen the core."""
        if self._asked_at is None or not self.processes:
            return 0.0
        return max(0.0, self._sampled_at - max(self._asked_at, self._cpu_advanced_at))

    async def _sample_cpu(self) -> None:
        while True:
            await asyncio.sleep(CPU_SAMPLE_S)
            cpu, self._sampled_at = cpu_seconds(self.processes), time.monotonic()
            if cpu is not None and cpu != self._cpu:
                self._cpu, self._cpu_advanced_at = cpu, self._sampled_at

    async def _listen(self) -> None:
        """Ends when the engine dies (then `engine.errored` says so)."""
        released = time.monotonic()
        with contextlib.suppress(Exception):
            while True:
                self._asked_at = time.monotonic()
                await self.engine.is_sleeping()
                metrics.observe("graphserve_engine_silence_seconds",
                                time.monotonic() - self._asked_at, model=self.model)
                if time.monotonic() - released > HEAP_RELEASE_EVERY_S:
                    released = time.monotonic()
                    await self._release_worker_heap()
                self._asked_at = None
                await asyncio.sleep(1)

    async def _release_worker_heap(self) -> None:
        """Answered between two steps, like the heartbeat's question; a failure is logged, not
        fatal (benchmarks/RESULTS.md: the worker's growth with and without it)."""
        try:
            await self.engine.collective_rpc("release_freed_memory", timeout=30)
        except Exception as e:
            if self.engine.errored:
                raise
            log.warning("LLM %s: the worker could not release its heap: %s", self.name, e)
