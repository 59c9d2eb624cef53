"""The engine core's heartbeat with a fake engine: silence measured, the heap released on a period."""

import asyncio

import pytest

from deployments import heartbeat
from deployments.heartbeat import Heartbeat


class Engine:
    """Answers its utility calls when `answering` is set; counts heap releases."""

    def __init__(self):
        self.answering = asyncio.Event()
        self.answering.set()
        self.released = 0
        self.errored = False

    async def is_sleeping(self):
        await self.answering.wait()
        return False

    async def collective_rpc(self, method, timeout):
        assert method == "release_freed_memory"
        self.released += 1


def test_a_silent_core_is_measured_and_an_answering_one_is_not(monkeypatch):
    monkeypatch.setattr(heartbeat, "HEAP_RELEASE_EVERY_S", 0.0)

    async def scenario():
        engine = Engine()
        beat = Heartbeat(engine, "fast")
        await asyncio.sleep(0.05)
        assert beat.silent_seconds() == 0.0  # answered, waiting a second to ask again
        assert engine.released == 1  # the worker released its heap after the first answer
        engine.answering.clear()  # a stopped core: the next question hangs
        beat._asked_at = None
        beat._task.cancel()
        beat._task = asyncio.create_task(beat._listen())
        await asyncio.sleep(0.2)
        assert beat.silent_seconds() >= 0.15
        engine.answering.set()
        await asyncio.sleep(0.05)
        assert beat.silent_seconds() == 0.0
        beat._task.cancel()

    asyncio.run(scenario())


def test_a_failed_heap_release_is_logged_unless_the_engine_died():
    async def scenario(errored):
        engine = Engine()
        engine.errored = errored

        async def failing(method, timeout):
            raise TimeoutError("no answer")

        engine.collective_rpc = failing
        beat = Heartbeat.__new__(Heartbeat)
        beat.engine, beat.name = engine, "fast"
        await beat._release_worker_heap()

    asyncio.run(scenario(False))
    with pytest.raises(TimeoutError):
        asyncio.run(scenario(True))
