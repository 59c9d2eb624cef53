"""The router's own request handling without Ray: waiting on several calls."""

import asyncio

from deployments.protocol import ServiceUnavailable
from deployments.router import all_of


def test_all_of_cancels_the_rest_when_one_fails_and_lets_them_end_first():
    ended = []

    async def slow():
        try:
            await asyncio.sleep(30)
        finally:
            ended.append("slow")

    async def failing():
        await asyncio.sleep(0.01)
        raise ServiceUnavailable("tier down")

    async def run():
        try:
            await all_of([slow(), failing()])
        except ServiceUnavailable:
            return list(ended)  # what had ended when the failure reached the caller

    assert asyncio.run(run()) == ["slow"]
    assert asyncio.run(all_of(asyncio.sleep(0, result=i) for i in range(3))) == [0, 1, 2]
