"""httpcore's network backend on asyncio's own streams (`httpcore.AsyncNetworkBackend`, the
public interface httpcore documents for custom backends), for every connection the gateway's
HTTP clients make (`imagegw.infra.transport`; the guarded fetcher's backend connects through it
once its checks passed: `imagegw.infra.fetcher.GuardedBackend`).

Why not httpcore's default (`httpcore.AnyIOBackend` under asyncio): anyio stops reading a socket
whenever nobody waits on it, so every read that waits tells the selector twice (two `epoll_ctl`
system calls), and every write and read first yields to the event loop once (a checkpoint): a
provider poll paid an extra loop turn and four system calls on top of its send and its receive.
Here a connection is an `asyncio.Protocol` that reads as data arrives (up to `HIGH_WATER` bytes
held, then the transport pauses until the reader catches up) and a write goes straight to the
transport (waiting only when it asks to pause). An idle pooled connection the server closed is
not reused: its protocol saw the end of the stream, or a poll of its socket finds it readable
(`is_readable`, the check httpcore's own backends make).

The same code runs on asyncio's own event loop and on uvloop's (what the API function runs:
uvicorn picks uvloop when it is installed): uvloop's transports have asyncio.Transport's methods
without subclassing it, and the socket they report is a stand-in that has `fileno` and
`setsockopt` but refuses `recv`, so nothing here checks a transport's class or reads its socket
other than through the transport (`_readable_now` polls the descriptor).

Failures are httpcore's own exceptions (`ConnectError`, `ConnectTimeout`, `ReadError`,
`ReadTimeout`, `WriteError`, `WriteTimeout`), as the other backends raise them.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, cast

import httpcore

#: bytes a connection holds unread before it stops reading the socket (and resumes at half)
HIGH_WATER: Final = 256 * 1024


def _readable_now(sock: Any) -> bool:
    """Whether a socket has something to read (data or its end) right now, or is gone."""
    fileno = -1 if sock is None else sock.fileno()
    if fileno < 0:
        return True
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    return bool(poller.poll(0))


def _expire(waiter: asyncio.Future[None]) -> None:
    """A read's time is up: its waiter fails with httpcore's `ReadTimeout`."""
    if not waiter.done():
        waiter.set_exception(httpcore.ReadTimeout("The read timed out."))


class _Reader(asyncio.Protocol):
    """What one connection received and has not been read yet, and its state."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.held = 0
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self.paused_reading = False
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport on either loop (uvloop's does not subclass asyncio.Transport)
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.held += len(data)
        if self.held > HIGH_WATER and not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        if self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.held -= len(chunk)
        if self.paused_reading and self.held <= HIGH_WATER // 2 and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()
        return chunk


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection (`httpcore.AsyncNetworkStream`) over an asyncio transport."""

    def __init__(self, transport: asyncio.Transport, reader: _Reader) -> None:
        self.transport = transport
        self.reader = reader

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's interface)
        reader = self.reader
        while not reader.chunks:
            if reader.eof:
                if reader.error is not None:
                    raise httpcore.ReadError(str(reader.error) or type(reader.error).__name__)
                return b""
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            reader.waiter = waiter
            # the timeout fails the waiter itself: one timer, no timeout context (a poll's
            # read waits here every time)
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                if reader.waiter is waiter:
                    reader.waiter = None
        return reader.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (httpcore's interface)
        if not buffer:
            return
        reader = self.reader
        if self.transport.is_closing():
            raise httpcore.WriteError("The connection is closed.")
        try:
            self.transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from None
        drained = reader.drained
        if drained is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(drained)
            except TimeoutError:
                raise httpcore.WriteTimeout("The write timed out.") from None
            if reader.error is not None:
                raise httpcore.WriteError(str(reader.error) or type(reader.error).__name__)

    async def aclose(self) -> None:
        self.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                secured = await loop.start_tls(
                    self.transport, self.reader, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self.transport.abort()
            raise httpcore.ConnectTimeout("The TLS handshake timed out.") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self.transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        if secured is None:  # the connection closed meanwhile
            raise httpcore.ConnectError("The connection closed during the TLS handshake.")
        self.reader.transport = secured
        return AsyncioStream(secured, self.reader)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # an idle connection with anything to read, or its end seen, is not to be reused;
            # the socket is asked too: the server's close may be in but not yet read by the loop
            reader = self.reader
            if reader.chunks or reader.eof or self.transport.is_closing():
                return True
            return _readable_now(self.transport.get_extra_info("socket"))
        if info == "ssl_object":
            return self.transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self.transport.get_extra_info("sockname")
        if info == "server_addr":
            return self.transport.get_extra_info("peername")
        if info == "socket":
            return self.transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """TCP connections as `AsyncioStream`s (the module docstring says why); the gateway makes
    no Unix-socket connections (httpcore's base class refuses them)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        reader = _Reader()
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: reader,
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout("The connection timed out.") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
        sock = transport.get_extra_info("socket")  # uvloop's stand-in has setsockopt too
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(transport, reader)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
