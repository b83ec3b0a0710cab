"""The HTTP transport of every client the gateway builds (the providers' APIs and the guarded
fetcher), made of httpx's and httpcore's public classes only.

`PooledTransport` is an httpx transport as httpx documents custom ones (`httpx.AsyncBaseTransport`)
over `LanePool`, a connection pool whose connections are httpcore's own
(`httpcore.AsyncHTTPConnection`, with a network backend given when the pool is built: the SSRF
guard's for the fetcher) or, with `lean=True` (the providers', the bucket's and the result
images' pools), the gateway's lean HTTP/1.1 connections (`imagegw.infra.http11`, through the
same backend).
Nothing reaches into a library's private attributes, so httpx and httpcore are not pinned to
one release (layers/common/requirements.txt).

Why not httpcore's pool (`httpcore.AsyncConnectionPool`, what `httpx.AsyncHTTPTransport` builds):
it looks at every pooled connection and every queued request each time it places a request and
each time a response closes, and for an idle connection that means system calls (is the socket
readable?). Its CPU per request grows with the pool and with the queue: at 1,000 concurrent
downloads over `max_connections=100`, 900 requests queued in it and 68% of the process's CPU went
to that bookkeeping (issue 25; `python -m bench pool` shows it).

Here requests over the limit wait in an `asyncio.Semaphore` (a FIFO queue: O(1) a request), and
the idle connections of each origin are a stack: a request takes the most recently used one,
checking that one only, or opens a new connection; a returned connection goes on top, and the
oldest one is checked then, so connections the server closed or that idled too long are dropped
over time (a lean connection there by the clock alone: no system call asks its socket, the
connection handed out is checked whole). `max_connections` bounds the requests in flight.

A burst on a cold pool would open a connection per request at once. A provider whose accept
queue is short drops the surplus after the request was sent: the client sees a reset, the
provider never saw the request, but the client cannot tell that from a provider that crashed
midway, so such a submit must not be retried. So at most `max_opening` connections to one
origin are being opened at a time (from connect to the first response), which never overflows
an accept queue that long; other requests wait for a connection to come free or for their turn
to open one. A connection that cannot be made at all (refused, reset or failed in the TLS
handshake, connect timeout) is tried `retries` more times by httpcore's connection: nothing was
sent, so a submit cannot start a task twice.

For asyncio, which the gateway runs on (uvicorn).
"""

from __future__ import annotations

import asyncio
import io
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import httpcore
import httpx

from imagegw.infra.http11 import Body, KeptRequest, LeanConnection
from imagegw.infra.netstream import AsyncioBackend

#: connections being opened to one origin at a time (see the module docstring)
MAX_OPENING: Final = 8
#: seconds an unused connection is kept: under the shortest keep-alive common servers give an
#: idle connection (uvicorn's and Node's 5 s; httpx's own default is those 5 s), so the pool
#: drops a connection before such a server closes it. At equal timeouts a burst took
#: connections idle for nearly 5 s just as the server closed them, and a submission sent on one
#: failed as dropped (it may have started, so it is not sent again)
KEEPALIVE_EXPIRY: Final = 4.0

_OriginKey = tuple[bytes, bytes, int | None]

#: httpcore's errors and httpx's for them (the most specific match wins), as httpx's own
#: transport maps them
_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


#: headers that describe how a body was framed on the wire, not the body read
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
#: what a response read whole keeps of httpcore's extensions
_KEPT_EXTENSIONS: Final = frozenset({"http_version", "reason_phrase"})


#: a body declared longer is read into one buffer, grown with what came (`gathered`)
GATHER_AT: Final = 1 << 16


async def gathered(
    chunks: AsyncIterable[bytes],
    *,
    limit: int,
    too_large: Callable[[], Exception],
    declared: int | None = None,
    into: Callable[[bytes], None] | None = None,
) -> bytes:
    """A body's chunks read no further than `limit` bytes (else `too_large()`), as one bytes;
    with `into`, each chunk given to it as it comes and dropped (b"": the caller reads the body
    there, `imagegw.infra.spans.Apart`).
    A body declared longer than GATHER_AT (a result image) is copied into one buffer as each
    chunk comes, the chunk then dropped: the body is never held twice (its chunks and their
    join, for a moment); another is its chunks joined once (a body in one chunk is that
    chunk). The buffer follows the bytes that came, not the length the server declared (a
    server that declares megabytes and sends none must not make the gateway hold them): it
    is made twice as large as what came whenever that outgrows it, up to the declared length,
    which the last growth makes its exact size (getvalue() then gives this buffer, not a
    copy of it)."""
    size = 0
    if into is not None:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise too_large()
            into(chunk)
        return b""
    if declared is not None and GATHER_AT < declared <= limit:
        out = io.BytesIO()
        room = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise too_large()
            if size > room:
                room = max(size, min(declared, 2 * size))
                out.seek(room - 1)
                out.write(b"\0")
                out.seek(size - len(chunk))
            out.write(chunk)
        out.truncate()
        return out.getvalue()
    parts: list[bytes] = []
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large()
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Parts(httpx.ByteStream):
    """A body in memory held as parts (`parts()`, made again at each send: a request retried
    on a connection that could not be made sends them anew), `length` bytes in all: a JSON
    body around a client's data URI, the URI's ASCII bytes made a part at a time
    (`imagegw.infra.spans.spliced`, through `imagegw.infra.clients.JsonTemplate`), never
    joined into one bytes. The pool sends it as
    a body in memory (`PooledTransport.read`, `keep`); `request.read()` would join it, so
    nothing here calls it."""

    def __init__(self, length: int, parts: Callable[[], Iterator[bytes]]) -> None:
        super().__init__(b"")
        self.length, self.parts = length, parts

    def __iter__(self) -> Iterator[bytes]:
        return self.parts()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts():
            yield part


def in_memory(request: httpx.Request) -> bytes | Parts:
    """The body of a request whose body is in memory: its `Parts`, else its content."""
    stream = request.stream
    return stream if isinstance(stream, Parts) else request.content


def core_url(url: httpx.URL) -> httpcore.URL:
    """httpx's URL as httpcore's: its parts as sent."""
    return httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )


def _core_request(
    request: httpx.Request,
    content: bytes | Parts | AsyncIterable[bytes],
    made: type[httpcore.Request] = httpcore.Request,
) -> httpcore.Request:
    """httpx's request as httpcore's (the URL's parts as sent, its headers, its extensions)."""
    return made(
        method=request.method,
        url=core_url(request.url),
        headers=request.headers.raw,
        content=content,
        extensions=request.extensions,
    )


class _HttpxErrors:
    """A context in which httpcore's errors are raised as httpx's; any other exception (the
    SSRF guard's) unchanged. One stateless instance serves every use (`_HTTPX_ERRORS`): a
    generator's context manager made afresh cost each poll more than the mapping itself."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, Exception):
            for theirs, ours in _ERRORS:
                if isinstance(exc, theirs):
                    raise ours(str(exc)) from exc


_HTTPX_ERRORS: Final = _HttpxErrors()


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


def _idled_out(connection: httpcore.AsyncConnectionInterface) -> bool:
    """Whether the oldest idle connection is to be dropped: past its keep-alive (a lean
    connection, by the clock alone: one the server closed is found when it is handed out)."""
    if isinstance(connection, LeanConnection):
        return connection.idled_out()
    return connection.has_expired()


async def _close(connection: httpcore.AsyncConnectionInterface) -> None:
    with anyio.CancelScope(shield=True):
        await connection.aclose()


class LanePool:
    """A connection pool of httpcore connections, placed as the module docstring says. It takes
    and gives httpcore's requests and responses (`handle_async_request`)."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_opening: int = MAX_OPENING,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        retries: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        lean: bool = False,
    ) -> None:
        self.max_connections = max_connections
        self.lean = lean
        self.max_opening = max_opening
        self._keepalive_expiry = keepalive_expiry
        self._retries = retries
        self._ssl_context = ssl_context
        self._network_backend = network_backend
        self._slots: asyncio.Semaphore | None = None
        self._lanes: dict[_OriginKey, _Lane] = {}
        self._closed = False

    def _connect(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        if self.lean:
            assert self._network_backend is not None
            return LeanConnection(
                origin,
                ssl_context=self._ssl_context,
                keepalive_expiry=self._keepalive_expiry,
                retries=self._retries,
                network_backend=self._network_backend,
            )
        return httpcore.AsyncHTTPConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            retries=self._retries,
            network_backend=self._network_backend,
        )

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        # a kept request (a poll) made its origin once
        origin = request.origin if isinstance(request, KeptRequest) else request.url.origin
        if origin.scheme not in (b"http", b"https"):
            scheme = origin.scheme.decode()
            raise httpcore.UnsupportedProtocol(f"Request URL has an unsupported scheme '{scheme}'.")
        timeout = request.extensions.get("timeout", {}).get("pool")
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        slots = self._slots
        if slots is None:  # made on the loop that uses it
            slots = self._slots = asyncio.Semaphore(self.max_connections)
        if slots.locked():  # a wait: bounded by the pool timeout
            try:
                async with asyncio.timeout_at(deadline):
                    await slots.acquire()
            except TimeoutError:
                raise httpcore.PoolTimeout("No connection came free in time.") from None
        else:  # a free slot is taken at once: no timer to set and cancel
            await slots.acquire()
        key = (origin.scheme, origin.host, origin.port)
        lane = self._lanes.get(key) or self._lanes.setdefault(key, _Lane())
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
            slots.release()
            if connection is not None:
                await _close(connection)
            lane.wake_one()
            raise
        assert isinstance(response.stream, AsyncIterable)
        # the connection's own answer, its body read through the pool (not a copy of the
        # answer: its headers are not checked twice)
        response.stream = _PooledStream(response.stream, self, lane, connection)
        return response

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
            if lane.opening < self.max_opening:
                lane.opening += 1
                return self._connect(origin), True
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

    async def checkin(self, lane: _Lane, connection: httpcore.AsyncConnectionInterface) -> None:
        """A response was closed: its connection goes back on the stack, if it can be reused."""
        for closing in self.give_back(lane, connection):
            await _close(closing)

    def give_back(
        self, lane: _Lane, connection: httpcore.AsyncConnectionInterface
    ) -> list[httpcore.AsyncConnectionInterface]:
        """`checkin` but for the closing: the slot freed, the connection back on the stack if
        it can be reused, the next waiter woken; the connections to close."""
        assert self._slots is not None
        self._slots.release()
        closing = []
        if self._closed or not connection.is_idle():
            closing.append(connection)
        else:
            lane.idle.append(connection)
            oldest = lane.idle[0]
            if len(lane.idle) > self.max_connections or _idled_out(oldest):
                closing.append(lane.idle.pop(0))
        lane.wake_one()
        return closing

    async def aclose(self) -> None:
        self._closed = True
        for lane in self._lanes.values():
            while lane.idle:
                await _close(lane.idle.pop())


class _PooledStream:
    """A response's body as httpcore gives it; closing it returns the connection to the pool.

    An iterator object, not an async generator: one left unfinished (a reader that stops at a
    size limit) has nothing for the event loop to finalize later."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: LanePool,
        lane: _Lane,
        connection: httpcore.AsyncConnectionInterface,
    ) -> None:
        self.stream = stream
        self.parts: AsyncIterator[bytes] | None = None
        self.pool = pool
        self.lane = lane
        self.connection = connection
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.parts is None:
            self.parts = aiter(self.stream)
        try:
            return await anext(self.parts)
        except StopAsyncIteration:
            raise
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if isinstance(self.stream, Body) and self.stream.done:
            # a lean connection's body, read whole: nothing of it to close, nothing to wait for
            # unless a connection is to be closed (shielded then, `_close`)
            for closing in self.pool.give_back(self.lane, self.connection):
                await _close(closing)
            return
        with anyio.CancelScope(shield=True):
            try:
                for part in (self.parts, self.stream):  # httpcore's iterator: finished now
                    close = getattr(part, "aclose", None)
                    if close is not None:
                        await close()
            finally:
                await self.pool.checkin(self.lane, self.connection)


class _ResponseBody(httpx.AsyncByteStream):
    """An httpcore response body as httpx reads one, its errors raised as httpx's (an iterator
    object, as `_PooledStream` is)."""

    def __init__(self, stream: _PooledStream) -> None:
        self.stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        with _HTTPX_ERRORS:
            return await anext(self.stream)

    async def aclose(self) -> None:
        await self.stream.aclose()


def _streamed(answer: httpcore.Response) -> httpx.Response:
    """httpcore's answer from the pool as httpx's response, its body unread (httpx decodes an
    encoded one as it is read)."""
    assert isinstance(answer.stream, _PooledStream)
    return httpx.Response(
        status_code=answer.status,
        headers=answer.headers,
        stream=_ResponseBody(answer.stream),
        extensions=answer.extensions,
    )


@dataclass(frozen=True, slots=True)
class Whole:
    """An answer read whole from the pool (`PooledTransport.read`), as it came: a caller
    that reads only its status and its body (a poll of a task still running) makes nothing
    more of it; `response()` is httpx's response of it, for anything else (an error to read)."""

    status_code: int
    #: as received, framing headers included
    headers: list[tuple[bytes, bytes]]
    content: bytes
    extensions: MutableMapping[str, Any]
    request: httpx.Request

    def response(self) -> httpx.Response:
        """The answer as httpx's closed response holding its body (without the headers of its
        framing on the wire)."""
        return httpx.Response(
            self.status_code,
            headers=[(k, v) for k, v in self.headers if k.lower() not in _FRAMING],
            content=self.content,
            request=self.request,
            extensions={k: v for k, v in self.extensions.items() if k in _KEPT_EXTENSIONS},
        )


async def drain(
    chunks: AsyncIterable[bytes], limit: int, too_large: Callable[[], Exception]
) -> None:
    """An answer's body read to its end and dropped (so its connection is kept), no further
    than `limit` bytes, else `too_large()` is raised."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large()


class PooledTransport(httpx.AsyncBaseTransport):
    """An httpx transport over a `LanePool` (what the module docstring says). `network_backend`:
    how connections are made (default: asyncio's streams, `imagegw.infra.netstream`);
    `ssl_context`: default, httpx's (certifi, or SSL_CERT_FILE / SSL_CERT_DIR when set, as
    httpx's own transport does)."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_opening: int = MAX_OPENING,
        retries: int = 1,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        lean: bool = False,
    ) -> None:
        self.pool = LanePool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=max_connections,
            max_opening=max_opening,
            keepalive_expiry=keepalive_expiry,
            retries=retries,
            network_backend=network_backend or AsyncioBackend(),
            lean=lean,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, AsyncIterable)
        with _HTTPX_ERRORS:
            answer = await self.pool.handle_async_request(_core_request(request, request.stream))
        return _streamed(answer)

    def keep(self, request: httpx.Request) -> KeptRequest:
        """The pool's own form of a request whose body is in memory and that is sent again and
        again (a task's poll): made once, its head checked and in bytes
        (`imagegw.infra.http11.KeptRequest`), for `read`."""
        kept = _core_request(request, in_memory(request), KeptRequest)
        assert isinstance(kept, KeptRequest)
        return kept

    async def read_whole(
        self,
        request: httpx.Request,
        *,
        limit: int,
        too_large: Callable[[], Exception],
        content: AsyncIterable[bytes] | None = None,
    ) -> httpx.Response:
        """A request whose body is in memory (`request.content`: a poll's GET, a submission's
        JSON) or given as `content` (chunks written as they are: an upload to the bucket, its
        framing headers the request's own) sent straight to the pool, and its answer read
        whole, as a closed response holding its body: none of the client's layers such a call
        does not use (auth, redirects, cookies, event hooks: the caller runs the hooks) nor a
        streamed response's wrappers. No further than `limit` bytes (`too_large()` is raised
        past them, or before reading when the answer declares more). An answer whose body is
        encoded (gzip...) is given back open and unread instead, as the client would give it
        with `stream=True`: httpx's decoders read it as the caller reads it
        (`imagegw.providers.upstream.read_answer`), and the request is not sent twice.
        httpcore's errors are raised as httpx's, as `handle_async_request` raises them."""
        answer = await self.read(request, limit=limit, too_large=too_large, content=content)
        return answer if isinstance(answer, httpx.Response) else answer.response()

    async def read(
        self,
        request: httpx.Request,
        *,
        limit: int,
        too_large: Callable[[], Exception],
        content: AsyncIterable[bytes] | None = None,
        kept: KeptRequest | None = None,
        into: Callable[[bytes], None] | None = None,
    ) -> Whole | httpx.Response:
        """`read_whole`, an answer read whole given as it came (`Whole`): no httpx object is
        made of an answer of which the caller reads only the status and the body. `kept`: the
        pool's own form of `request`, made before (`keep`: a task's poll). `into`: a 200's
        body given to it a chunk at a time as it is read, not kept (`read_core`)."""
        core: httpcore.Request
        if kept is None:
            core = _core_request(request, in_memory(request) if content is None else content)
        else:
            core = kept
        return await self._read(core, request, limit=limit, too_large=too_large, into=into)

    async def _read(
        self,
        core: httpcore.Request,
        request: httpx.Request,
        *,
        limit: int,
        too_large: Callable[[], Exception],
        into: Callable[[bytes], None] | None = None,
    ) -> Whole | httpx.Response:
        """`read_whole` of httpx's `request` sent as `core`: an answer read whole as `Whole`."""
        answer = await self.read_core(core, limit=limit, too_large=too_large, into=into)
        if isinstance(answer, httpx.Response):
            answer.request = request
            return answer
        head, content = answer
        return Whole(head.status, head.headers, content, head.extensions, request)

    async def read_core(
        self,
        core: httpcore.Request,
        *,
        limit: int,
        too_large: Callable[[], Exception],
        into: Callable[[bytes], None] | None = None,
    ) -> tuple[httpcore.Response, bytes] | httpx.Response:
        """httpcore's `request`, built by the caller (a download of a result image: no httpx
        request is made), sent straight to the pool: its answer and its body read whole, no
        further than `limit` bytes (else `too_large()`), or, when its body is encoded, httpx's
        open and unread response of it (no request set), as `read_whole` gives one. With
        `into`, a 200's body is given to it a chunk at a time as it is read, and not kept (its
        content b""; any other answer's is read whole). httpcore's errors are raised as
        httpx's."""
        with _HTTPX_ERRORS:
            answer = await self.pool.handle_async_request(core)
            stream = answer.stream
            assert isinstance(stream, _PooledStream)
            headers = answer.headers
            encoded: bytes | None = None  # the first of each, as httpx reads them
            declared: bytes | None = None
            for name, value in headers:
                lowered = name.lower()
                if encoded is None and lowered == b"content-encoding":
                    encoded = value
                elif declared is None and lowered == b"content-length":
                    declared = value
            if encoded is not None and encoded.strip().lower() not in (b"", b"identity"):
                return _streamed(answer)
            try:  # an answer declared too long is refused unread
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise too_large()
                body = stream.stream
                if answer.status != 200:
                    into = None
                # a small answer (a poll's) is most often in whole with its head: taken at once
                content = body.received_whole() if isinstance(body, Body) else None
                if content is None:
                    length = int(declared) if declared is not None and declared.isdigit() else None
                    content = await gathered(
                        stream, limit=limit, too_large=too_large, declared=length, into=into
                    )
                elif into is not None:
                    into(content)
                    content = b""
            finally:
                await stream.aclose()
        return answer, content

    async def status_of(
        self,
        request: httpcore.Request,
        *,
        limit: int,
        too_large: Callable[[], Exception],
    ) -> int:
        """httpcore's `request`, built by the caller (an upload to the bucket: its URL parsed
        once, its body the chunks it writes), sent straight to the pool: the answer's status,
        its body read (no further than `limit` bytes, else `too_large()`) and dropped, so the
        connection is kept; no httpx request or response is made. httpcore's errors are
        raised as httpx's."""
        with _HTTPX_ERRORS:
            answer = await self.pool.handle_async_request(request)
            stream = answer.stream
            assert isinstance(stream, _PooledStream)
            try:
                await drain(stream, limit, too_large)
            finally:
                await stream.aclose()
        return answer.status

    async def aclose(self) -> None:
        await self.pool.aclose()
