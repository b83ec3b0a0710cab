"""The provider transport (imagegw.infra.transport): connections reused, bursts that lose nothing,
connect failures tried once more, requests never sent twice, slots freed on every path."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Literal

import httpcore
import httpx
import pytest

from fakes.server import ServerThread
from fakes.socketserver import LoopbackServer
from imagegw.infra.transport import GATHER_AT, PooledTransport, gathered

pytestmark = [pytest.mark.anyio, pytest.mark.both_loops]  # either loop: tests/conftest.py


@pytest.fixture(params=[False, True], ids=["httpcore", "lean"])
def lean(request: pytest.FixtureRequest) -> bool:
    """Each test runs over httpcore's connections and over the lean ones (the providers' and
    the bucket's: `imagegw.infra.http11`)."""
    return bool(request.param)


Behaviour = Literal["keep-alive", "close-after-answer", "reset-after-request"]
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class RawServer(LoopbackServer):
    """An HTTP/1.1 server on a socket, for what uvicorn will not do on purpose: it counts the
    connections and requests it gets and answers `ok`, keeping connections open, closing each
    after its answer (as a server does with idle connections), or resetting each after reading
    its request (as a provider that crashed midway)."""

    def __init__(self, behaviour: Behaviour, backlog: int = 64) -> None:
        super().__init__(backlog)
        self.behaviour = behaviour
        self.requests = 0
        #: released once a connection is closed (by the server, or after its client left)
        self.closed = threading.Semaphore(0)

    def serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                self.answer(connection)
        finally:
            self.closed.release()

    def answer(self, connection: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            _, _, buffer = buffer.partition(b"\r\n\r\n")
            self.requests += 1
            if self.behaviour == "reset-after-request":
                linger_zero = struct.pack("ii", 1, 0)  # close = reset
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
                return
            connection.sendall(ANSWER)
            if self.behaviour == "close-after-answer":
                return


@pytest.fixture
def keep_alive() -> Iterator[RawServer]:
    with RawServer("keep-alive") as server:
        yield server


def client(lean: bool, max_connections: int) -> httpx.AsyncClient:
    transport = PooledTransport(max_connections=max_connections, lean=lean)
    return httpx.AsyncClient(transport=transport, timeout=10.0)


async def test_requests_in_sequence_share_one_connection(lean: bool, keep_alive: RawServer) -> None:
    # Given the transport / When three requests are made one after the other
    async with client(lean, max_connections=10) as http:
        answers = [await http.get(keep_alive.url) for _ in range(3)]

    # Then all are answered over one connection
    assert [a.text for a in answers] == ["ok"] * 3
    assert (keep_alive.connections, keep_alive.requests) == (1, 3)


async def test_a_burst_against_a_short_accept_queue_loses_nothing(lean: bool) -> None:
    # Given a server (uvicorn) whose listen backlog is 8, as a busy provider's may be
    seen: list[int] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] in ("http", "lifespan")
        if scope["type"] != "http":
            return
        seen.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    with ServerThread(app, backlog=8) as server:  # type: ignore[arg-type]
        # When 100 requests are sent at once on a cold pool
        async with client(lean, max_connections=100) as http:
            answers = await asyncio.gather(
                *(http.post(server.url, json={"n": i}) for i in range(100)),
                return_exceptions=True,
            )

    # Then every one is answered, and the server saw each once
    failures = [repr(a) for a in answers if not isinstance(a, httpx.Response)]
    assert failures == []
    assert len(seen) == 100


class RefusingFirst(httpcore.AsyncNetworkBackend):
    """A network backend whose first `failures` connects are refused."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.AsyncNetworkStream:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise httpcore.ConnectError("[Errno 111] Connection refused")
        return await self._real.connect_tcp(host, port, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


async def test_a_connection_refused_once_is_tried_again(lean: bool, keep_alive: RawServer) -> None:
    # Given a provider that refuses the first connection
    backend = RefusingFirst(failures=1)

    # When a request is made
    async with httpx.AsyncClient(
        transport=PooledTransport(lean=lean, max_connections=10, network_backend=backend)
    ) as http:
        answer = await http.post(keep_alive.url, json={"prompt": "a cat"})

    # Then it is answered after a second attempt, and the provider got it once
    assert answer.text == "ok"
    assert backend.attempts == 2
    assert keep_alive.requests == 1


async def test_a_connection_refused_twice_fails_as_a_connect_error(
    lean: bool, keep_alive: RawServer
) -> None:
    backend = RefusingFirst(failures=2)
    async with httpx.AsyncClient(
        transport=PooledTransport(lean=lean, max_connections=10, network_backend=backend)
    ) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(keep_alive.url, json={"prompt": "a cat"})
    assert backend.attempts == 2
    assert keep_alive.requests == 0


async def test_a_request_reset_after_it_was_sent_is_not_sent_again(lean: bool) -> None:
    # Given a provider that resets the connection after reading the request
    with RawServer("reset-after-request") as server:
        # When a submit is made
        async with client(lean, max_connections=10) as http:
            with pytest.raises(httpx.TransportError):
                await http.post(server.url, json={"prompt": "a cat"})

        # Then it fails, and the provider got it once: it may have started a task
        assert server.requests == 1


async def test_a_connection_the_server_closed_is_not_reused(lean: bool) -> None:
    # Given a provider that closes each connection after answering
    with RawServer("close-after-answer") as server:
        async with client(lean, max_connections=10) as http:
            first = await http.get(server.url)
            # the server's close arrives while the connection is idle (a bound, not a timing)
            assert await asyncio.to_thread(server.closed.acquire, True, 30)
            # When another request is made
            second = await http.get(server.url)

    # Then it is answered on a new connection
    assert (first.text, second.text) == ("ok", "ok")
    assert server.connections == 2


@pytest.fixture
def slow_server() -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """`/slow` answers once released; `/fast` at once. Also: an event set when /slow arrived."""
    arrived, release = threading.Event(), threading.Event()

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            arrived.set()
            await asyncio.to_thread(release.wait, 10)
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    with ServerThread(app) as server:  # type: ignore[arg-type]
        try:
            yield server.url, arrived, release
        finally:
            release.set()


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 5)


async def test_requests_over_the_limit_wait_for_the_pool_timeout(
    lean: bool,
    slow_server: tuple[str, threading.Event, threading.Event],
) -> None:
    url, arrived, _ = slow_server
    async with client(lean, max_connections=1) as http:
        # Given the only connection busy with a slow request
        slow = asyncio.create_task(http.get(f"{url}/slow"))
        await wait_for(arrived)

        # When another request may wait 0.1 s for a connection
        # Then it fails with a pool timeout
        with pytest.raises(httpx.PoolTimeout):
            await http.get(f"{url}/fast", timeout=httpx.Timeout(10.0, pool=0.1))
        slow.cancel()


async def test_a_cancelled_request_frees_its_connection(
    lean: bool,
    slow_server: tuple[str, threading.Event, threading.Event],
) -> None:
    url, arrived, _ = slow_server
    async with client(lean, max_connections=1) as http:
        # Given the only connection taken by a request that is then cancelled
        slow = asyncio.create_task(http.get(f"{url}/slow"))
        await wait_for(arrived)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

        # When another request is made / Then it is answered
        answer = await http.get(f"{url}/fast", timeout=httpx.Timeout(10.0, pool=5.0))
        assert answer.text == "ok"


async def chunks_of(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class TooLarge(Exception):
    pass


@pytest.mark.parametrize(
    ("sizes", "declared"),
    [
        ([], None),
        ([10], 10),  # one chunk: that chunk
        ([GATHER_AT // 2] * 3, None),  # length unknown: joined
        ([GATHER_AT // 2] * 3, 3 * GATHER_AT // 2),  # into one buffer of its length
        ([7_000] * 40 + [13], 280_013),
        ([GATHER_AT] * 2, 3 * GATHER_AT),  # shorter than declared: what came
    ],
)
async def test_a_body_is_gathered_to_its_bytes(sizes: list[int], declared: int | None) -> None:
    parts = [bytes([i % 251]) * size for i, size in enumerate(sizes)]

    body = await gathered(chunks_of(parts), limit=10**7, too_large=TooLarge, declared=declared)

    assert body == b"".join(parts)


async def test_a_declared_length_holds_no_memory_for_bytes_that_never_came() -> None:
    # Given a server that declares 8 MiB and sends 100 KB before its answer stops
    tracemalloc.start()
    try:
        body = await gathered(
            chunks_of([b"x" * 100_000]), limit=10**8, too_large=TooLarge, declared=8 << 20
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then the gateway held about what came (twice it at most), not what was declared
    assert body == b"x" * 100_000
    assert peak < 1 << 20


@pytest.mark.parametrize("declared", [None, 2 * GATHER_AT + 1])
async def test_a_body_past_the_limit_is_refused_as_it_comes(declared: int | None) -> None:
    parts = [b"x" * GATHER_AT] * 3

    with pytest.raises(TooLarge):
        await gathered(
            chunks_of(parts), limit=2 * GATHER_AT + 1, too_large=TooLarge, declared=declared
        )
