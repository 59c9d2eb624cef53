"""Engines of one app on one host start in turn: a later turn imports at once and starts its engine
when every earlier one has."""

import asyncio
import uuid

from deployments.load_order import loading_alone_on_gpu, loading_in_turn


def test_a_later_turn_imports_at_once_and_starts_its_engine_after_the_earlier_one():
    app = f"test-{uuid.uuid4().hex[:8]}"
    order = []

    async def load(turn, seconds):
        async with loading_in_turn(turn, app) as earlier_turns_done:
            order.append(f"import {turn}")
            await asyncio.sleep(0.1)
            await earlier_turns_done()
            order.append(f"engine {turn}")
            await asyncio.sleep(seconds)
            order.append(f"ready {turn}")

    async def scenario():
        first = asyncio.ensure_future(load(0, 0.3))
        await asyncio.sleep(0.05)  # turn 0 holds its lock
        await asyncio.gather(first, load(1, 0))

    asyncio.run(scenario())
    assert order == ["import 0", "import 1", "engine 0", "ready 0", "engine 1", "ready 1"]
    alone = f"test-{uuid.uuid4().hex[:8]}"  # no earlier turn ever started: go at once

    async def late():
        async with loading_in_turn(2, alone) as earlier_turns_done:
            await earlier_turns_done()
            return "loaded"

    assert asyncio.run(asyncio.wait_for(late(), 5)) == "loaded"


def test_engines_sharing_a_gpu_load_one_at_a_time_and_other_gpus_do_not_wait():
    gpu = f"test-{uuid.uuid4().hex[:8]}"
    order = []

    async def load(name, devices, seconds):
        async with loading_alone_on_gpu(devices):
            order.append(f"start {name}")
            await asyncio.sleep(seconds)
            order.append(f"end {name}")

    async def scenario():
        first = asyncio.ensure_future(load("a", gpu, 0.3))
        await asyncio.sleep(0.05)  # a holds the GPU's lock
        await asyncio.gather(first, load("b", gpu, 0), load("other", gpu + "-x", 0))

    asyncio.run(scenario())
    assert order.index("end a") < order.index("start b")
    assert order.index("end other") < order.index("end a")  # another GPU: at once


def test_a_turn_ends_when_its_loader_does_even_with_a_forked_child_alive():
    """An engine core forked while its turn is held keeps a copy of the lock's file: the turn
    must still end when the loader leaves it, not when the child exits."""
    import multiprocessing
    import time

    app = f"test-{uuid.uuid4().hex[:8]}"

    async def scenario():
        async with loading_in_turn(0, app):
            child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
            child.start()
        try:
            async with loading_in_turn(1, app) as earlier_turns_done:
                await earlier_turns_done()
                return "next turn"
        finally:
            child.kill()

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == "next turn"
