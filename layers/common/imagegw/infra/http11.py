"""A lean HTTP/1.1 client connection for the pools of the gateway's own origins: the providers'
APIs and the bucket, and for the result images providers link to
(`imagegw.infra.transport.PooledTransport(lean=True)`).

It is an `httpcore.AsyncConnectionInterface`, the public interface httpcore's pools and ours
(`LanePool`) take, and it connects through an `httpcore.AsyncNetworkBackend` as httpcore's own
connection does (TLS through the stream's `start_tls`, connections that cannot be made tried
`retries` more times after 0, 0.5, 1... s). What it leaves out is h11's event machinery: a
provider poll spent more CPU in httpcore's and h11's state machines (events, header
normalisation, the protocol's state transitions, a lock per request and per response) than in
everything else it does (issue 25: a third of the server's CPU per streamed generation).
Here a request is one write (its head and a small body together), the answer's head is parsed
at once from the bytes received (its status and header lines checked once each and remembered:
a provider's answers repeat most of theirs), and its body read as its framing says.

The rules it keeps are HTTP/1.1's as h11 applies them to a client (RFC 9112):

- header names are tokens and values visible characters, in the request (no header can be
  smuggled in) and in the answer (else `RemoteProtocolError`); no obsolete line folding; a
  head longer than MAX_HEAD is refused;
- the body's framing: none for an answer to HEAD, a 1xx, 204 or 304; `Transfer-Encoding:
  chunked` (the only coding accepted, each chunk's CRLF checked); else `Content-Length` (the
  same value if repeated); else read until the server closes;
- informational answers (1xx) before the final one are skipped;
- the connection is reused only after an answer read whole, framed, in HTTP/1.1, with no
  `Connection: close` either way and nothing received past its end; a server that closed
  early is an error (`RemoteProtocolError`), never an answer cut short;
- a request whose body could not be sent whole (the server closed early) still reads the
  answer the server may have sent before closing.

The guarded fetcher of result images (`imagegw.infra.fetcher.Fetcher.for_results`) uses it too,
through its guarded network backend; the fetcher of URLs clients send keeps httpcore's own
connection.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import httpcore

#: the longest answer head read (status line and headers), as httpcore's h11 limit
MAX_HEAD: Final = 100 * 1024
#: bytes asked of the stream at a time
READ_SIZE: Final = 64 * 1024
#: a body chunk this small goes out in the same write as the request's head
COALESCE: Final = 16 * 1024
#: seconds before the first retry of a connection that could not be made, doubling each time
#: (the first retry is at once, as httpcore's connection does it)
RETRY_BACKOFF: Final = 0.5

_NEW, _ACTIVE, _IDLE, _CLOSED = "new", "active", "idle", "closed"
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
#: a field value: visible characters and obs-text, spaces and tabs inside (RFC 9110 5.5)
_VALUE: Final = re.compile(rb"[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*|")
_STATUS: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_HEAD_END: Final = re.compile(rb"\n\r?\n")
#: answer header lines seen already, and their name and value (`read_head`): a provider's
#: answers repeat most of theirs (its server, the type, often the length), so a poll's are
#: checked once, not at every answer. Lines up to KNOWN_LINE bytes, KNOWN_LINES of them at most
#: (then forgotten all at once); status lines likewise
KNOWN_LINE: Final = 256
KNOWN_LINES: Final = 512
_known_fields: dict[bytes, tuple[bytes, bytes]] = {}
_known_statuses: dict[bytes, tuple[bytes, int, bytes]] = {}
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_NO_BODY: Final = frozenset({204, 304})


def request_head(request: httpcore.Request) -> tuple[bytes, bool, int | None, bool]:
    """The request's head as sent, whether its body is chunked, its declared length, and
    whether it says `Connection: close`. A header that is not a token and visible text is
    refused (`LocalProtocolError`)."""
    url = request.url
    parts = [request.method, b" ", url.target, b" HTTP/1.1\r\n"]
    chunked, length, closes = False, None, False
    for name, value in request.headers:
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise httpcore.LocalProtocolError(f"Illegal header {name!r}.")
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            chunked = value.strip().lower() == b"chunked"
            if not chunked:
                raise httpcore.LocalProtocolError("Only Transfer-Encoding: chunked is sent.")
        elif lowered == b"content-length":
            if not value.isdigit():
                raise httpcore.LocalProtocolError("Content-Length must be a number.")
            length = int(value)
        elif lowered == b"connection":
            closes = closes or _says_close(value)
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), chunked, None if chunked else length, closes


class KeptRequest(httpcore.Request):
    """A request sent again and again (a task's poll, `imagegw.infra.transport.PooledTransport.
    keep`): its head checked and made into bytes once (`request_head`), and its origin made
    once (httpcore's `url.origin` makes one at each use), not at each send. Its body, if any,
    must be bytes in memory (read afresh at each send); a request made with none (a GET:
    `bodiless`) is sent as its head alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire = request_head(self)
        self.origin = self.url.origin
        self.bodiless = kwargs.get("content") in (None, b"")

    def retarget(self, target: bytes) -> KeptRequest:
        """This request to another target of its origin (a poll of another task): its head
        made from this one's (its headers, checked already, not checked again), its origin
        and extensions this one's. Only for a request with no body."""
        assert self.bodiless, "a request with no body"
        url = self.url
        other = KeptRequest.__new__(KeptRequest)
        httpcore.Request.__init__(
            other,
            self.method,
            httpcore.URL(scheme=url.scheme, host=url.host, port=url.port, target=target),
            extensions=self.extensions,
        )
        other.headers = self.headers
        head, chunked, length, closes = self.wire
        fields = head[head.index(b"\r\n") :]  # after the request line
        other.wire = (b"%b %b HTTP/1.1%b" % (self.method, target, fields), chunked, length, closes)
        other.origin, other.bodiless = self.origin, True
        return other


class FramedRequest(KeptRequest):
    """A request whose head the caller made (`head`: the request line and headers, checked by
    `request_head` when the caller made them; an upload to the bucket, whose head differs only
    by its Content-Length) and whose body is `content`, `length` bytes in memory. Only a lean
    connection can send it: its headers are in `head` alone."""

    def __init__(
        self,
        method: bytes,
        url: httpcore.URL,
        *,
        head: bytes,
        length: int,
        content: Iterable[bytes],
        extensions: dict[str, Any],
    ) -> None:
        httpcore.Request.__init__(self, method, url, content=content, extensions=extensions)
        self.wire = (head, False, length, False)
        self.origin = self.url.origin
        self.bodiless = False


class LeanConnection(httpcore.AsyncConnectionInterface):
    """One HTTP/1.1 connection to `origin`, one request at a time (what the module docstring
    says). Made unconnected; the first request connects it."""

    def __init__(
        self,
        origin: httpcore.Origin,
        *,
        ssl_context: ssl.SSLContext | None,
        keepalive_expiry: float,
        retries: int,
        network_backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        self.origin = origin
        self.ssl_context = ssl_context
        self.keepalive_expiry = keepalive_expiry
        self.retries = retries
        self.backend = network_backend
        self.network: httpcore.AsyncNetworkStream | None = None
        self.state = _NEW
        self.expire_at: float | None = None
        #: received and not yet used
        self.received = bytearray()

    # ------------------------------------------------------------------ httpcore's interface

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self.origin

    def is_available(self) -> bool:
        return self.state in (_NEW, _IDLE)

    def has_expired(self) -> bool:
        if self.state != _IDLE or self.network is None:
            return False
        if self.expire_at is not None and time.monotonic() > self.expire_at:
            return True
        # idle, so anything to read can only be the server closing it
        return bool(self.network.get_extra_info("is_readable"))

    def is_idle(self) -> bool:
        return self.state == _IDLE

    def idled_out(self) -> bool:
        """`has_expired` by the clock alone: idle past its keep-alive, with no system call
        asking the socket (what the pool checks of its oldest idle connection each time one
        comes back; the connection it hands out is checked whole)."""
        expire_at = self.expire_at
        return self.state == _IDLE and expire_at is not None and time.monotonic() > expire_at

    def is_closed(self) -> bool:
        return self.state == _CLOSED

    def info(self) -> str:
        return f"{self.origin!s}, HTTP/1.1, {self.state.upper()}"

    async def aclose(self) -> None:
        self.state = _CLOSED
        network, self.network = self.network, None
        if network is not None:
            await network.aclose()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        origin = request.origin if isinstance(request, KeptRequest) else request.url.origin
        if origin is not self.origin and not self.can_handle_request(origin):
            raise RuntimeError(f"A request to {origin} on a link to {self.origin}")
        if self.state not in (_NEW, _IDLE):
            raise httpcore.ConnectionNotAvailable()
        self.state, self.expire_at = _ACTIVE, None
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        try:
            if self.network is None:
                self.network = await self.open_stream(request, timeouts.get("connect"))
            try:
                keep = await self.write_request(request, timeouts.get("write"))
            except httpcore.WriteError:
                keep = False  # the server may have answered before it closed: read it
            while True:
                version, status, reason, headers = await self.read_head(read_timeout)
                if status >= 200 or status == 101:
                    break
            framing, length, keep_alive = _framing(request.method, version, status, headers)
        except BaseException:
            await self.aclose()
            raise
        body = Body(self, framing, length, read_timeout, keep and keep_alive)
        response = httpcore.Response(
            status=status,
            content=body,
            extensions={
                "http_version": b"HTTP/1." + version,
                "reason_phrase": reason,
                "network_stream": self.network,
            },
        )
        # bytes pairs `read_head` checked already: httpcore's constructor would check and copy
        # them again
        response.headers = headers
        return response

    # ------------------------------------------------------------------ the wire

    async def open_stream(
        self,
        request: httpcore.Request,
        within: float | None,
    ) -> httpcore.AsyncNetworkStream:
        retries_left, delay = self.retries, 0.0
        while True:
            try:
                network = await self.backend.connect_tcp(
                    self.origin.host.decode("ascii"), self.origin.port, timeout=within
                )
                if self.origin.scheme == b"https":
                    context = self.ssl_context or httpcore.default_ssl_context()
                    context.set_alpn_protocols(["http/1.1"])
                    host = request.extensions.get("sni_hostname") or self.origin.host.decode()
                    network = await network.start_tls(context, server_hostname=host, timeout=within)
                return network
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                if retries_left <= 0:
                    raise
                retries_left -= 1
                await self.backend.sleep(delay)
                delay = RETRY_BACKOFF if delay == 0 else delay * 2

    async def write_request(self, request: httpcore.Request, within: float | None) -> bool:
        """Write the request; whether it lets the connection be kept (no `Connection: close`).
        A body in memory (httpx's and httpcore's byte streams are iterables too) is read
        without an async generator."""
        network = self.network
        assert network is not None
        if isinstance(request, KeptRequest):
            head, chunked, length, closes = request.wire
            if request.bodiless and not chunked and not length:  # a poll's GET: its head
                await network.write(head, within)
                return not closes
        else:
            head, chunked, length, closes = request_head(request)
        pending, sent = head, 0

        async def put(chunk: bytes) -> None:
            nonlocal pending, sent
            if not chunk:
                return
            sent += len(chunk)
            if length is not None and sent > length:
                raise httpcore.LocalProtocolError("Too much data for the declared Content-Length.")
            framed = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
            if pending and len(framed) <= COALESCE:  # one write, head and body
                framed, pending = pending + framed, b""
            elif pending:
                await network.write(pending, within)
                pending = b""
            await network.write(framed, within)

        stream = request.stream
        if isinstance(stream, Iterable):
            for chunk in stream:
                await put(chunk)
        else:
            async for chunk in stream:
                await put(chunk)
        if length is not None and sent != length:
            raise httpcore.LocalProtocolError("Too little data for the declared Content-Length.")
        last = pending + b"0\r\n\r\n" if chunked else pending
        if last:
            await network.write(last, within)
        return not closes

    async def more(self, within: float | None) -> bool:
        """Read what the server sent next into `received`; False at its end."""
        assert self.network is not None
        data = await self.network.read(READ_SIZE, within)
        if not data:
            return False
        self.received += data
        return True

    async def read_head(
        self,
        within: float | None,
    ) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
        """The next answer head: version digit, status, reason and headers (names as sent)."""
        received = self.received
        searched = 0
        while (end := _HEAD_END.search(received, searched)) is None:
            if len(received) > MAX_HEAD:
                raise httpcore.RemoteProtocolError("The answer's head is too long.")
            searched = max(0, len(received) - 2)
            if not await self.more(within):
                if received:
                    raise httpcore.RemoteProtocolError("The server closed in the answer's head.")
                raise httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
        if end.start() > MAX_HEAD:
            raise httpcore.RemoteProtocolError("The answer's head is too long.")
        lines = bytes(received[: end.start()]).split(b"\n")
        del received[: end.end()]
        version, status, reason = _known_statuses.get(lines[0]) or _status(lines[0])
        headers: list[tuple[bytes, bytes]] = []
        known = _known_fields
        for raw in lines[1:]:
            headers.append(known.get(raw) or _field(raw))
        return version, status, reason, headers


def _remember(known: dict[bytes, Any], raw: bytes, value: Any) -> None:
    if len(raw) <= KNOWN_LINE:
        if len(known) >= KNOWN_LINES:
            known.clear()
        known[raw] = value


def _status(raw: bytes) -> tuple[bytes, int, bytes]:
    """A status line's version digit, status and reason (`RemoteProtocolError` if it is not
    one), remembered (`_known_statuses`)."""
    status_line = raw.removesuffix(b"\r")
    matched = _STATUS.fullmatch(status_line)
    if matched is None:
        raise httpcore.RemoteProtocolError(f"Not a status line: {status_line[:80]!r}")
    version, status, reason = matched.groups()
    parsed = (version, int(status), reason or b"")
    _remember(_known_statuses, raw, parsed)
    return parsed


def _field(raw: bytes) -> tuple[bytes, bytes]:
    """A header line's name and value (`RemoteProtocolError` if it is not one: a name that
    is not a token, a value not visible text), remembered (`_known_fields`)."""
    line = raw.removesuffix(b"\r")
    name, colon, value = line.partition(b":")
    value = value.strip(b" \t")
    if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
        raise httpcore.RemoteProtocolError(f"Illegal header line: {line[:80]!r}")
    _remember(_known_fields, raw, (name, value))
    return name, value


def _says_close(value: bytes) -> bool:
    """Whether a `Connection` header's value says `close`."""
    return any(token.strip().lower() == b"close" for token in value.split(b","))


def _framing(
    method: bytes, version: bytes, status: int, headers: list[tuple[bytes, bytes]]
) -> tuple[str, int, bool]:
    """How the answer's body is framed ("length", "chunked" or "close": read until the end),
    its length (for "length"), and whether the connection may be kept after it (the headers
    read in one pass)."""
    closes, codings, lengths = False, [], set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"connection":
            closes = closes or _says_close(value)
        elif lowered == b"transfer-encoding":
            codings.append(value)
        elif lowered == b"content-length":
            lengths.add(value.strip())
    keep = version == b"1" and not closes
    if method == b"HEAD" or status in _NO_BODY or status < 200:
        return "length", 0, keep and status != 101
    if codings:
        if len(codings) > 1 or codings[0].strip().lower() != b"chunked":
            raise httpcore.RemoteProtocolError("Only Transfer-Encoding: chunked is supported.")
        return "chunked", 0, keep
    if lengths:
        length = lengths.pop() if len(lengths) == 1 else b""
        if not length.isdigit():
            raise httpcore.RemoteProtocolError("The answer's Content-Length is not one number.")
        return "length", int(length), keep
    return "close", 0, False


class Body:
    """An answer's body as it is read (an iterator object, not an async generator: one left
    unfinished has nothing for the event loop to finalize). Read whole, the connection goes
    idle (or closes, when it may not be kept); closed before that, it closes."""

    def __init__(
        self,
        connection: LeanConnection,
        framing: str,
        length: int,
        timeout: float | None,
        keep: bool,
    ) -> None:
        self.connection = connection
        self.framing = framing
        #: bytes left of the body ("length") or of the current chunk ("chunked")
        self.left = length
        self.timeout = timeout
        self.keep = keep
        self.done = False
        self.chunk_started = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        try:
            chunk = await self._next()
        except BaseException:
            self.done = True
            await self.connection.aclose()
            raise
        if chunk:
            return chunk
        self.done = True
        await self._finished()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self.done:  # left unread: the connection cannot be used again
            self.done = True
            await self.connection.aclose()

    def received_whole(self) -> bytes | None:
        """The whole body, unread yet, when it is in already (a small answer: the read that
        brought its head brought it too) and its connection can be kept: taken at once, the
        connection idle again (what reading it to its end does, without a wait). None
        otherwise: nothing is taken, the body is read as it comes."""
        connection, left = self.connection, self.left
        received = connection.received
        if (
            self.done
            or self.framing != "length"
            or len(received) != left  # more than the body: not kept (`_finished`)
            or not self.keep
            or connection.state != _ACTIVE
        ):
            return None
        body = bytes(received)
        received.clear()
        self.left, self.done = 0, True
        connection.state = _IDLE
        connection.expire_at = time.monotonic() + connection.keepalive_expiry
        return body

    async def _finished(self) -> None:
        connection = self.connection
        if self.keep and not connection.received and connection.state == _ACTIVE:
            connection.state = _IDLE
            connection.expire_at = time.monotonic() + connection.keepalive_expiry
        else:
            await connection.aclose()

    async def _take(self, most: int) -> bytes:
        """Up to `most` bytes of what comes next (b"" at the server's end)."""
        connection = self.connection
        received = connection.received
        if received:
            chunk = bytes(received[:most])
            del received[:most]
            return chunk
        assert connection.network is not None
        return await connection.network.read(min(most, READ_SIZE), self.timeout)

    async def _next(self) -> bytes:
        """The next part of the body; b"" once it is whole."""
        if self.framing == "close":
            return await self._take(READ_SIZE)
        if self.framing == "length":
            if self.left == 0:
                return b""
            chunk = await self._take(self.left)
            if not chunk:
                raise httpcore.RemoteProtocolError(
                    f"The server closed before sending the whole body ({self.left} bytes missing)."
                )
            self.left -= len(chunk)
            return chunk
        while True:  # chunked
            if self.left:
                chunk = await self._take(self.left)
                if not chunk:
                    raise httpcore.RemoteProtocolError("The server closed inside a chunk.")
                self.left -= len(chunk)
                return chunk
            # the CRLF after a chunk's data
            if self.chunk_started and await self._line() != b"":
                raise httpcore.RemoteProtocolError("A chunk is longer than its size.")
            self.chunk_started = True
            line = await self._line()
            sized = _CHUNK_SIZE.fullmatch(line)
            if sized is None:
                raise httpcore.RemoteProtocolError(f"Illegal chunk size line: {line[:40]!r}")
            self.left = int(sized.group(1), 16)
            if self.left == 0:
                while await self._line():  # trailers, ignored, up to the blank line
                    pass
                return b""

    async def _line(self) -> bytes:
        """The next line, without its CRLF (at most MAX_HEAD long)."""
        connection = self.connection
        received = connection.received
        searched = 0
        while (end := received.find(b"\r\n", searched)) < 0:
            if len(received) > MAX_HEAD:
                raise httpcore.RemoteProtocolError("A line of the chunked body is too long.")
            searched = max(0, len(received) - 1)
            if not await connection.more(self.timeout):
                raise httpcore.RemoteProtocolError("The server closed inside the chunked body.")
        line = bytes(received[:end])
        del received[: end + 2]
        return line
