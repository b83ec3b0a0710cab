"""Faults for the fake providers: an ASGI wrapper that records every request a fake gets and
answers chosen requests with a fault instead of the fake.

Wrap a fake (``Faulty(fake_ms)``) and serve the wrapper in its place. It records each call
(method, path, when it came, when it was answered, and whether the caller closed the connection
before the answer) and, for the requests a rule matches, answers the rule's fault instead of
letting the fake answer: an HTTP error (``answer``), a 200 whose body is no JSON (``GARBAGE``),
no answer at all until the caller gives up (``HANG``), or an answer made afresh for each request
(``Fresh``): a 200 of hundreds of megabytes streamed as it is made (``huge``, never held whole
by the fake either) or one trickled a byte at a time (``trickle``). A provider that dies is a served
fake whose ``ServerThread`` is stopped; one that is down is a closed port (``closed_port``).

When the caller leaves, the wrapped fake is cancelled (a real service stops sending to a closed
connection too), so a fake's long ``latency`` does not outlive the test.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: no answer at all: the request is held until the caller closes the connection
HANG: Final = "hang"


def answer(status: int, body: bytes | str = b"", **headers: str) -> Response:
    """A fault that answers `status` with `body` (JSON when it looks like JSON) and headers."""
    data = body.encode() if isinstance(body, str) else body
    media = "application/json" if data[:1] in (b"{", b"[", b'"') else "text/plain"
    return Response(data, status_code=status, media_type=media, headers=headers)


#: a 200 whose body no JSON reader can read (an HTML error page from a proxy)
GARBAGE: Final = answer(200, b"<html><body>502 Bad Gateway</body></html>")

MB: Final = 1024 * 1024


@dataclass(frozen=True)
class Fresh:
    """A fault whose answer is made anew for each request (a streamed body is read once)."""

    make: Callable[[], Response]


def huge(size: int = 200 * MB, chunk: int = 64 * 1024) -> Response:
    """A 200 whose JSON-looking body is `size` bytes, made chunk by chunk as the caller reads
    (no Content-Length: the caller learns the size only by reading)."""

    async def body() -> AsyncIterator[bytes]:
        yield b'{"task_id": "'
        block = b"a" * chunk
        for _ in range(size // chunk):
            yield block

    return StreamingResponse(body(), media_type="application/json")


def trickle(interval: float = 1.0, count: int = 600) -> Response:
    """A 200 whose body comes one byte every `interval` seconds (at most `count` bytes)."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b" "
            await asyncio.sleep(interval)

    return StreamingResponse(body(), media_type="application/json")


Fault = Response | str | Fresh


@dataclass
class Call:
    """One request the wrapped fake got."""

    method: str
    path: str
    began: float  # time.monotonic() when it came
    ended: float | None = None  # when it was answered
    left: bool = False  # the caller closed the connection before the answer


@dataclass
class _Rule:
    method: str
    path: re.Pattern[str]
    fault: Fault


class Faulty:
    """An ASGI app: `fake` behind fault rules, every call recorded in `calls`."""

    def __init__(self, fake: ASGIApp) -> None:
        self.fake = fake
        self.calls: list[Call] = []
        self.rules: list[_Rule] = []
        self.lock = threading.Lock()

    def on(self, method: str, path: str, fault: Fault) -> None:
        """Answer every `method` request whose path matches the regex `path` with `fault`."""
        self.rules.append(_Rule(method.upper(), re.compile(path), fault))

    def count(self, method: str, path: str, *, after: float | None = None) -> int:
        """How many `method` requests matching `path` came (after monotonic time `after`)."""
        pattern = re.compile(path)
        with self.lock:
            return sum(
                1
                for call in self.calls
                if call.method == method.upper()
                and pattern.search(call.path)
                and (after is None or call.began > after)
            )

    def matching(self, method: str, path: str) -> list[Call]:
        pattern = re.compile(path)
        with self.lock:
            return [c for c in self.calls if c.method == method.upper() and pattern.search(c.path)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block (the test's thread) until `predicate()` holds; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("the provider never saw what the test waited for")
            time.sleep(0.01)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fake(scope, receive, send)
            return
        call = Call(scope["method"], scope["path"], time.monotonic())
        with self.lock:
            self.calls.append(call)
        unread: list[bytes] = [await _read_body(receive)]
        gone = asyncio.Event()

        async def replay() -> Message:  # the body once, then wait for the caller to go
            if unread:
                return {"type": "http.request", "body": unread.pop(), "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def recorded(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                call.ended = time.monotonic()
            await send(message)

        fault = next(
            (
                rule.fault
                for rule in self.rules
                if rule.method == call.method and rule.path.search(call.path)
            ),
            None,
        )
        work: asyncio.Future[object]
        if fault is None:
            work = asyncio.ensure_future(self.fake(scope, replay, recorded))
        elif fault == HANG:
            work = asyncio.ensure_future(gone.wait())
        elif isinstance(fault, Fresh):
            work = asyncio.ensure_future(fault.make()(scope, replay, recorded))
        else:
            assert isinstance(fault, Response)
            work = asyncio.ensure_future(fault(scope, replay, recorded))
        watch = asyncio.ensure_future(receive())
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the caller left first
            call.left = True
            gone.set()
            work.cancel()
        else:
            watch.cancel()
        await asyncio.gather(work, watch, return_exceptions=True)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
