"""A deployment below the router as one object: its config, its handle, and one guarded call.

`graph.py` builds a `Tier` per LLM deployment and a `Downstream` for the embedder; the router
attaches the shared `Availability` once its event loop runs. Every call the router makes goes
through `call` (or `steps` for a stream): skipped at once when the deployment is known down,
bounded by a timeout, ended early when the deployment falls while the call waits, and its failure
mapped by the one failure policy (`failures.py`) and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from deployments import metrics
from deployments.availability import Availability
from deployments.config import EmbedderConfig, LLMConfig
from deployments.failures import UNAVAILABLE, TierUnavailable, failure
from deployments.protocol import Sampling, ServiceUnavailable

log = logging.getLogger("ray.serve")


@dataclass
class Downstream:
    """One deployment the router calls (`handle`: Serve's DeploymentHandle to it)."""

    config: LLMConfig | EmbedderConfig
    handle: Any
    availability: Availability | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model_id(self) -> str:
        return self.config.model_id

    def attach(self, availability: Availability) -> None:
        self.availability = availability

    def is_down(self) -> bool:
        return self.availability is not None and self.availability.is_down(self.name)

    async def call(self, method: str, request: Any, timeout_s: float | None) -> Any:
        """`method(request)` on the deployment. Raises TierUnavailable when it is down, busy or
        slow (the caller moves on); the request's own errors pass through."""
        if self.is_down():
            self._count_unavailable()
            raise TierUnavailable(self.name)
        return await self._guarded(getattr(self.handle, method).remote(request), timeout_s)

    async def call_or_none(self, method: str, request: Any, timeout_s: float | None) -> Any:
        """`call`, with None when the deployment cannot answer now (evidence the scorer can do
        without: an embedding, another tier's likelihood)."""
        try:
            return await self.call(method, request, timeout_s)
        except TierUnavailable:
            return None

    async def steps(self, request: Any, first_timeout_s: float) -> tuple[Any, Steps]:
        """A stream's first item (None when it is empty) and the guarded rest: the first within `first_timeout_s`, each
        later one as the engine makes it, ended with a 503 when the deployment falls meanwhile.
        Closing the iterator cancels the call, so the engine aborts it."""
        if self.is_down():
            self._count_unavailable()
            raise TierUnavailable(self.name)
        stream = self.handle.options(stream=True).stream.remote(request)
        try:
            first = await self._guarded(stream.__anext__(), first_timeout_s)
        except StopAsyncIteration:  # an empty stream: no first step, no rest
            first = None
        except BaseException:
            stream.cancel()
            raise

        return first, Steps(self, stream, ended=first is None)

    async def _guarded(self, call: Awaitable, timeout_s: float | None) -> Any:
        try:
            return await self._unless_down(call, timeout_s)
        except UNAVAILABLE as e:
            self._failed(e)
            raise TierUnavailable(self.name, busy=failure(e) == "busy") from e

    async def _unless_down(self, call: Awaitable, timeout_s: float | None = None) -> Any:
        """`call`'s result, unless this deployment is found down or stalled first (503 at once:
        a stopped engine would hold the call until `timeout_s`) or `timeout_s` passes
        (asyncio.TimeoutError). Either way the call is cancelled, so its engine aborts it."""
        if self.availability is None:
            return await asyncio.wait_for(call, timeout_s)
        work = asyncio.ensure_future(call)
        fell = asyncio.ensure_future(self.availability.fell(self.name).wait())
        try:
            await asyncio.wait({work, fell}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            if fell.done():
                state = self.availability.state[self.name]
                raise ServiceUnavailable(f"{self.name!r} is {state['status']} "
                                         f"({state.get('error', '')})")
            raise asyncio.TimeoutError
        finally:
            work.cancel()
            fell.cancel()

    def _failed(self, error: BaseException) -> None:
        """A call failed: a dead or missing deployment is down now; a slow one is left to the
        probe (a timeout under load is not an outage)."""
        log.warning("%s unavailable (%s)", self.name, type(error).__name__)
        self._count_unavailable()
        if self.availability is not None and not isinstance(error, asyncio.TimeoutError):
            self.availability.down(self.name, error)

    def _count_unavailable(self) -> None:
        if isinstance(self, Tier):  # the tier metric counts LLM tiers, not the embedder
            metrics.inc("graphserve_tier_unavailable", tier=self.name)


@dataclass
class Tier(Downstream):
    """One LLM tier: a vLLM deployment, its place on the escalation ladder (`rank`, cheapest
    first) and its sampling defaults."""

    rank: int = 0  # config: its LLMConfig

    def sampling(self, requested: Sampling) -> Sampling:
        """The client's sampling with this tier's defaults where it left a field unset."""
        return requested.with_defaults(self.config.sampling)

    @property
    def consensus_samples(self) -> int:
        return self.config.consensus_samples


class Steps:
    """The rest of a stream, each step guarded by `Downstream._unless_down`. Ending it, by the
    last step or by `aclose` (before its first step too), cancels the call: the engine aborts."""

    def __init__(self, downstream: Downstream, stream: Any, ended: bool = False):
        self.downstream, self.stream, self.ended = downstream, stream, ended
        if ended:
            stream.cancel()

    def __aiter__(self) -> Steps:
        return self

    async def __anext__(self) -> Any:
        if self.ended:
            raise StopAsyncIteration
        try:
            return await self.downstream._unless_down(self.stream.__anext__())
        except BaseException:  # the end, a failure, or the caller cancelled
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self.ended = True
        self.stream.cancel()


def by_model(tiers: list[Tier]) -> dict[str, list[Tier]]:
    """Tiers grouped by the model id clients name, each group and the groups in ladder order."""
    out: dict[str, list[Tier]] = {}
    for tier in sorted(tiers, key=lambda t: t.rank):
        out.setdefault(tier.model_id, []).append(tier)
    return out


def ladder(tiers: dict[str, list[Tier]]) -> list[Tier]:
    """Every tier in escalation order, whatever model it serves."""
    return sorted((t for group in tiers.values() for t in group), key=lambda t: t.rank)
