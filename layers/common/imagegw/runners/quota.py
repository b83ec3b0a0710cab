"""Quota settlement, the one place every runner calls: a gateway key's reservation settled by
the images a job made (`imagegw.core.lifecycle.settlement` decides what is counted and what
given back), or given back whole when it made none.

A reservation is the request's (`imagegw.access.gate.Reservation`) or a durable job's
(`JobReservation`: settled once however often a step runs, `Access.settle_job`); a client's own
token has none. Settling is shielded from cancellation: a client that leaves after the result
does not leave the quota unsettled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imagegw.errors import GatewayError
from imagegw.runners.inprocess import Result
from imagegw.runners.pipeline import Event

if TYPE_CHECKING:
    from imagegw.access.gate import Access
    from imagegw.runners.stepfunctions.schema import JobSpec


class Reserved(Protocol):
    """Images reserved on a key's quota, to settle once the job ends."""

    async def settle(self, made: int) -> None: ...


@dataclass(frozen=True)
class JobReservation:
    """A durable job's reservation (`JobSpec.quota`), settled through the access table."""

    access: Access
    spec: JobSpec

    async def settle(self, made: int) -> None:
        quota = self.spec.quota
        assert quota is not None
        spec = self.spec
        await self.access.settle_job(spec.id, quota.key, spec.model, spec.n, made, quota.at)


async def settle(reserved: Reserved | None, made: int) -> None:
    """Settle `reserved` (None: nothing to settle) by `made` images (0: given back whole)."""
    if reserved is not None:
        await asyncio.shield(reserved.settle(made))


async def metered(
    events: AsyncIterator[Event], reserved: Reserved | None
) -> AsyncGenerator[Event, None]:
    """`events`, with the reservation settled: by the images of the result, or given back
    whole when the generation failed (nothing made). A reader that leaves keeps it: the
    provider may still be making (and charging for) the images. Closed, it closes `events`
    at once (their clean-up runs before the answer ends, not when they are collected)."""
    try:
        async for event in events:
            if isinstance(event, Result):
                await settle(reserved, len(event.images))
            yield event
    except GatewayError:
        await settle(reserved, 0)
        raise
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()
