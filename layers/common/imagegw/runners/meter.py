"""Settling a quota reservation with what a generation made (`gate.Reservation`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from imagegw.access.gate import Reservation
from imagegw.errors import GatewayError
from imagegw.runners.generation import Event, Result


async def metered(
    events: AsyncIterator[Event], reservation: Reservation | None
) -> AsyncGenerator[Event, None]:
    """`events`, with the reservation settled: by the images of the result, or given back
    whole when the generation failed (nothing made). A reader that leaves keeps it: the
    provider may still be making (and charging for) the images."""
    try:
        async for event in events:
            if isinstance(event, Result) and reservation is not None:
                await reservation.settle(len(event.images))
            yield event
    except GatewayError:
        if reservation is not None:
            await reservation.settle(0)
        raise
