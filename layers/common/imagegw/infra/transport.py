"""The HTTP transport of the provider calls: httpx's own, around a connection pool that does a
constant amount of work per request and opens only a few connections to one provider at once.

Why not httpcore's pool: it looks at every pooled connection each time it places a request and
each time a response closes, and for an idle connection that means system calls (is the socket
readable? whose is it?). Its CPU per request grows with the pool: with 50-200 connections it
was half the gateway's CPU under load (docs/architecture.md "Cold start and memory").

Here the idle connections of each origin are a stack: a request takes the most recently used
one, checking that one only, or opens a new connection; a returned connection goes on top, and
the oldest one is checked then, so connections the server closed or that idled too long are
dropped over time. `max_connections` bounds the requests in flight; other requests wait.

A burst on a cold pool would open a connection per request at once. A provider whose accept
queue is short drops the surplus after the request was sent: the client sees a reset, the
provider never saw the request, but the client cannot tell that from a provider that crashed
midway, so such a submit must not be retried. So at most `max_opening` connections to one
origin are being opened at a time (from connect to the first response), which never overflows
an accept queue that long; other requests wait for a connection to come free or for their turn
to open one. A connection that cannot be made at all (refused, reset or failed in the TLS
handshake, connect timeout) is tried once more (`retries`): nothing was sent, so a submit
cannot start a task twice.

For asyncio, which the gateway runs on (uvicorn).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

import anyio
import httpcore
import httpx

#: connections being opened to one origin at a time (see the module docstring)
MAX_OPENING = 8
#: seconds an unused connection is kept (httpx's default)
KEEPALIVE_EXPIRY = 5.0

_OriginKey = tuple[bytes, bytes, int | None]


@dataclass
class _Lane:
    """The connections of one origin: idle ones (the last is the most recently used), how many
    are being opened, and the requests waiting for one of those to change."""

    idle: list[httpcore.AsyncConnectionInterface] = field(default_factory=list)
    opening: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


async def _close(connection: httpcore.AsyncConnectionInterface) -> None:
    with anyio.CancelScope(shield=True):
        await connection.aclose()


class ProviderPool(httpcore.AsyncConnectionPool):
    """httpcore's connection pool with its placement of requests replaced (module docstring).

    Connections are made by httpcore's own `create_connection`, with the pool's settings (TLS
    context, keep-alive expiry, connect retries)."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_opening: int = MAX_OPENING,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        retries: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            retries=retries,
            network_backend=network_backend,
        )
        self._limit = max_connections
        self._max_opening = max_opening
        self._slots: asyncio.Semaphore | None = None
        self._lanes: dict[_OriginKey, _Lane] = {}
        self._closed = False

    @property
    def connections(self) -> list[httpcore.AsyncConnectionInterface]:
        """The idle connections (those in use belong to their responses)."""
        return [c for lane in self._lanes.values() for c in lane.idle]

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        scheme = request.url.scheme.decode()
        if scheme not in ("http", "https"):
            raise httpcore.UnsupportedProtocol(f"Request URL has an unsupported scheme '{scheme}'.")
        timeout = request.extensions.get("timeout", {}).get("pool")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise httpcore.PoolTimeout("No connection came free in time.") from None
        origin = request.url.origin
        lane = self._lanes.setdefault((origin.scheme, origin.host, origin.port), _Lane())
        connection: httpcore.AsyncConnectionInterface | None = None
        try:
            connection, new = await self._checkout(lane, origin, deadline)
            try:
                response = await connection.handle_async_request(request)
            finally:
                if new:  # its first response is in (or it failed): the next may open
                    lane.opening -= 1
                    lane.wake_one()
        except BaseException:
            self._slots.release()
            if connection is not None:
                await _close(connection)
            lane.wake_one()
            raise
        assert isinstance(response.stream, AsyncIterable)
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_Stream(response.stream, self, lane, connection),
            extensions=response.extensions,
        )

    async def _checkout(
        self, lane: _Lane, origin: httpcore.Origin, deadline: float | None
    ) -> tuple[httpcore.AsyncConnectionInterface, bool]:
        """An idle connection (False) or a new one (True), waiting for either if need be."""
        while True:
            while lane.idle:
                connection = lane.idle.pop()
                if connection.is_idle() and not connection.has_expired():
                    return connection, False
                await _close(connection)
            if lane.opening < self._max_opening:
                lane.opening += 1
                return self.create_connection(origin), True
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            lane.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise httpcore.PoolTimeout("No connection came free in time.") from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    lane.wake_one()  # woken but leaving: pass the turn on
                else:
                    waiter.cancel()
                raise

    async def _checkin(self, lane: _Lane, connection: httpcore.AsyncConnectionInterface) -> None:
        """A response was closed: its connection goes back on the stack, if it can be reused."""
        assert self._slots is not None
        self._slots.release()
        if self._closed or not connection.is_idle():
            await _close(connection)
        else:
            lane.idle.append(connection)
            oldest = lane.idle[0]
            if len(lane.idle) > self._limit or oldest.has_expired():
                lane.idle.pop(0)
                await _close(oldest)
        lane.wake_one()

    async def aclose(self) -> None:
        self._closed = True
        for lane in self._lanes.values():
            while lane.idle:
                await _close(lane.idle.pop())


class _Stream:
    """A response's body; closing it returns the connection to the pool."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: ProviderPool,
        lane: _Lane,
        connection: httpcore.AsyncConnectionInterface,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._lane = lane
        self._connection = connection
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            close = getattr(self._stream, "aclose", None)
            try:
                if close is not None:
                    await close()
            finally:
                await self._pool._checkin(self._lane, self._connection)


class ProviderTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (its request and response types, its mapping of httpcore's errors to
    httpx's) with a `ProviderPool` in place of httpcore's."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_opening: int = MAX_OPENING,
        retries: int = 1,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        context = httpx.create_ssl_context()
        super().__init__(verify=context, retries=retries)
        # httpx keeps its pool in `_pool` and uses nothing else of it (httpx is pinned)
        self._pool = ProviderPool(
            ssl_context=context,
            max_connections=max_connections,
            max_opening=max_opening,
            retries=retries,
            network_backend=network_backend,
        )
