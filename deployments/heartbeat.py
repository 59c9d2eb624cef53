"""Whether a vLLM engine core is alive, and its worker's heap kept small, by one background task.

Every second the task asks the core a trivial question (a utility call over its socket). The core
answers between two steps, so a busy one answers within a step's time, and one that is stopped or
hung in a step does not answer at all, whatever requests it holds: `silent_seconds` is how long the
current question has waited, and each answered question's wait is recorded
(`graphserve_engine_silence_seconds`: how long a busy engine's silences get). Every
`HEAP_RELEASE_EVERY_S` the same task asks the worker process, where the model runs, to hand its
freed heap pages back to the OS (`heap.WorkerExtension`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from deployments import metrics

log = logging.getLogger("ray.serve")

HEAP_RELEASE_EVERY_S = 10.0  # each release: one utility call, answered between two steps


class Heartbeat:
    def __init__(self, engine, name: str, model: str = ""):
        self.engine, self.name, self.model = engine, name, model
        self._asked_at: float | None = None
        self._task = asyncio.create_task(self._listen())

    def silent_seconds(self) -> float:
        """How long the engine core has left the current question unanswered (0: it answered)."""
        return 0.0 if self._asked_at is None else time.monotonic() - self._asked_at

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
