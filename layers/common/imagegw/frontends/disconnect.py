"""Stop the work of a client that left: a JSON (non-streamed) answer is worked out while the
connection is watched, and cancelled as soon as the client closes it; a streamed answer
(`WatchedStream`) is sent while the connection is watched, and stopped the same way.

Without this a client that gave up would leave the gateway polling the provider until the
deadline and then storing a result nobody reads.

The watch reads the ASGI `receive()` channel directly, once the request body has been read:
from then on the server answers it with `http.disconnect` only when the client closes the
connection (uvicorn; the Lambda Web Adapter forwards each invocation as such a connection).
Starlette's `Request.is_disconnected()` does not fit: it only peeks, so it would have to be
polled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

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


async def _until_left(receive: Receive) -> None:
    """Return once the server says the client closed the connection (whatever else it says
    meanwhile is not for a stream that has read its request)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class LastChunk(str):
    """A stream's last chunk (`WatchedStream`): sent with the end of the answer, in one
    message (one write to the socket instead of two). What the stream yields after it is not
    sent."""

    __slots__ = ()


class WatchedStream(StreamingResponse):
    """Starlette's `StreamingResponse` for the gateway's streams, watched without anyio's task
    group: the body is sent from the request's own task while one plain task waits on
    `receive` for the client leaving; when it does, the sending is cancelled (so the stream's
    work is: the provider's polls stop) and the answer ends as if complete. The body's iterator
    is closed before this returns, however it ended, so its clean-up never waits for the
    garbage collector. A server of ASGI spec 2.4 or later (which raises `OSError` on a send to
    a closed connection instead) is left to Starlette's own handling.

    A `LastChunk` ends the answer as it is sent (the client has it whole at once); the stream
    is then read to its end unwatched, so the work after its last chunk (a run time recorded,
    the stream's clean-up) is done, not cut short by the client closing the finished answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        if task is None or scope["type"] != "http" or spec not in ("2.0", "2.1", "2.2", "2.3"):
            await super().__call__(scope, receive, send)
            return
        sending, cut = True, False

        def left(watch: asyncio.Future[None]) -> None:
            nonlocal cut
            if sending and not watch.cancelled() and watch.exception() is None:
                cut = True
                task.cancel()

        def answered() -> None:
            nonlocal sending
            sending = False
            watch.cancel()

        watch = asyncio.ensure_future(_until_left(receive))
        watch.add_done_callback(left)
        try:
            await self._send_body(send, answered)
        except asyncio.CancelledError:
            # the client left (and nobody else cancelled this request): the answer is over
            if not cut or task.uncancel() > 0:
                raise
            cut = False
        finally:
            sending = False
            watch.cancel()
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                await closer()
        if cut:  # cancelled while the stream was closing, and the stream swallowed it
            task.uncancel()
        if self.background is not None:
            await self.background()

    async def _send_body(self, send: Send, answered: Callable[[], None]) -> None:
        """Starlette's `stream_response`, a `LastChunk` sent with the answer's end (then
        `answered()`, and nothing more sent)."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        ended = False
        async for chunk in self.body_iterator:
            if ended:
                continue
            body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
            if isinstance(chunk, LastChunk):
                ended = True
                await send({"type": "http.response.body", "body": body, "more_body": False})
                answered()
            else:
                await send({"type": "http.response.body", "body": body, "more_body": True})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
