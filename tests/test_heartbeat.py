"""The engine core's heartbeat with a fake engine: silence measured, the heap released on a period."""

import asyncio
import signal
import subprocess
import sys

import psutil
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


def test_a_stopped_engine_process_is_frozen_and_a_busy_one_is_not():
    """Real processes: a core that spins (busy in a long step) is silent but not frozen; the same
    process SIGSTOPped is frozen for as long as it stays stopped; continued, it is not."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        async def scenario():
            engine = Engine()
            engine.answering.clear()  # silent from the first question on
            beat = Heartbeat(engine, "fast", processes=[psutil.Process(spinner.pid)])
            await asyncio.sleep(1.0)
            assert beat.silent_seconds() >= 0.9 and beat.frozen_seconds() < 0.5  # busy, not frozen
            spinner.send_signal(signal.SIGSTOP)
            await asyncio.sleep(1.2)
            assert beat.frozen_seconds() >= 0.6
            spinner.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.6)
            assert beat.frozen_seconds() < 0.5
            engine.answering.set()
            await asyncio.sleep(0.05)
            assert beat.silent_seconds() == beat.frozen_seconds() == 0.0
            beat._task.cancel()
            beat._sampler.cancel()

        asyncio.run(scenario())
    finally:
        spinner.kill()


def test_without_known_engine_processes_nothing_is_frozen():
    async def scenario():
        engine = Engine()
        engine.answering.clear()
        beat = Heartbeat(engine, "fast", processes=[])
        await asyncio.sleep(0.6)
        assert beat.silent_seconds() >= 0.5 and beat.frozen_seconds() == 0.0
        beat._task.cancel()
        beat._sampler.cancel()

    asyncio.run(scenario())
