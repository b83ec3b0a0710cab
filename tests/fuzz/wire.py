"""HTTP/1.1 on a raw socket, for the fuzz suite: requests exactly as written (any method, any
request target, header bytes outside ASCII, bodies that disagree with their Content-Length,
bodies left unfinished) and the answer as it came (status, headers as bytes, the body with
chunked framing removed). One connection a request (`Connection: close`): nothing carries over
between requests.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Literal

#: how a request is sent: whole; its body cut short and the connection closed at once (a client
#: that gives up while sending); or its body cut short and the connection held (a slow client)
Delivery = Literal["whole", "abandon", "stall"]


@dataclass(frozen=True)
class RawRequest:
    """One request, byte for byte as it goes on the wire (framing headers excepted: `send`
    adds Host, Content-Length and Connection unless they are given)."""

    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    delivery: Delivery = "whole"

    def header(self, name: str) -> bytes | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower().encode()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def describe(self, limit: int = 1500) -> str:
        """The request as a reader can replay it (bodies cut to `limit` bytes)."""
        lines = [f"{self.method} {self.target}  [{self.delivery}]"]
        lines += [f"{k.decode('latin-1')}: {v.decode('latin-1')!r}" for k, v in self.headers]
        body = self.body if len(self.body) <= limit else self.body[:limit] + b"...(cut)"
        lines.append(f"body ({len(self.body)} bytes): {body!r}")
        return "\n".join(lines)


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: the bytes as they came (head and body), for leak checks
    raw: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()


class NoAnswer(Exception):
    """The server closed the connection or timed out without a complete answer."""


def send(
    host: str,
    port: int,
    request: RawRequest,
    *,
    timeout: float = 30.0,
    stall_seconds: float = 0.0,
) -> RawResponse | None:
    """Send `request`; the answer, or None for an abandoned request (no answer is read).

    A stalled request sends half its body, then waits up to `timeout` for an answer while
    sending nothing more."""
    names = {key.lower() for key, _ in request.headers}
    head = [f"{request.method} {request.target} HTTP/1.1".encode("latin-1")]
    if b"host" not in names:
        head.append(f"host: {host}:{port}".encode())
    head += [key + b": " + value for key, value in request.headers]
    if b"content-length" not in names and b"transfer-encoding" not in names:
        head.append(f"content-length: {len(request.body)}".encode())
    if b"connection" not in names:
        head.append(b"connection: close")
    wire = b"\r\n".join(head) + b"\r\n\r\n"
    body = request.body
    if request.delivery != "whole":
        body = body[: len(body) // 2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(wire + body)
        if request.delivery == "abandon":
            return None
        if request.delivery == "stall" and stall_seconds:
            time.sleep(stall_seconds)
        return _read_answer(sock, head_only=request.method.upper() == "HEAD", timeout=timeout)


def _read_answer(sock: socket.socket, *, head_only: bool, timeout: float) -> RawResponse:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoAnswer(f"no complete answer within {timeout:g} s; got {data[:300]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise NoAnswer(f"no complete answer within {timeout:g} s; got {data[:300]!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
        if head_only and b"\r\n\r\n" in data:
            break
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise NoAnswer(f"the connection closed before the answer's head: {data[:300]!r}")
    status_line, *header_lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    status = int(parts[1])
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    headers = []
    for line in header_lines:
        key, _, value = line.partition(b":")
        headers.append((key.strip(), value.strip()))
    lowered = {k.lower(): v for k, v in headers}
    if head_only:
        body = b""
    elif lowered.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _unchunk(rest)
    elif b"content-length" in lowered:
        body = rest[: int(lowered[b"content-length"])]
    else:
        body = rest
    return RawResponse(status, reason, headers, body, raw=data)


def _unchunk(data: bytes) -> bytes:
    """A chunked body's payload (stopping quietly where a cut-off answer ends)."""
    out = bytearray()
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
