"""Stop the work of a client that left: a JSON (non-streamed) answer is worked out while the
connection is watched, and cancelled as soon as the client closes it.

Streamed answers need nothing of this: Starlette's `StreamingResponse` watches the connection
itself and cancels the stream. A JSON answer has no such watcher, so without this a client
that gave up would leave the gateway polling the provider until the deadline and then storing
a result nobody reads.

The watch reads the ASGI `receive()` channel directly, once the request body has been read:
from then on the server answers it with `http.disconnect` only when the client closes the
connection (uvicorn; the Lambda Web Adapter forwards each invocation as such a connection).
Starlette's `Request.is_disconnected()` does not fit: it only peeks, so it would have to be
polled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from imagegw.errors import ClientDisconnectedError
from imagegw.infra.log import logger

T = TypeVar("T")


async def _left(receive: Receive) -> bool:
    """Wait for the client to close the connection: True. False if the server sends anything
    else (it has no more body to send, so it does not follow the ASGI contract as expected)."""
    message = await receive()
    return bool(message["type"] == "http.disconnect")


def _client_left(watch: asyncio.Task[bool]) -> bool:
    """Whether the finished watch saw the client leave. When it saw something else, or failed,
    the work is left to run unwatched rather than be cancelled for nothing."""
    problem = watch.exception()
    if problem is None and watch.result():
        return True
    logger.warning(
        "not watching the client for a disconnect",
        extra={"error": type(problem).__name__ if problem else "unexpected ASGI message"},
    )
    return False


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The result of `work`, unless the client closes its connection first: then `work` is
    cancelled (its clean-up runs before this returns) and `ClientDisconnectedError` is raised
    (a 499 in the request log, which nobody reads). Call it once the body has been read.
    """
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_left(request.receive))
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done() and _client_left(watch):
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
            if job.cancelled():  # else it ended meanwhile, and its answer stands
                raise ClientDisconnectedError(
                    "The client closed the connection; the generation was stopped.",
                    code="client_disconnected",
                )
        return await job
    finally:
        for task in (job, watch):
            if not task.done():
                task.cancel()
        await asyncio.gather(job, watch, return_exceptions=True)
