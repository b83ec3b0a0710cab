"""The lean HTTP/1.1 connection of the providers' and the bucket's pools (imagegw.infra.http11):
answers framed every way HTTP/1.1 allows are read whole, a connection is reused only when that
is safe, malformed answers are protocol errors (never an answer cut short), and a request's
headers cannot smuggle another header in."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Final, Literal

import httpcore
import httpx
import pytest

from fakes.socketserver import LoopbackServer
from imagegw.infra.http11 import MAX_HEAD
from imagegw.infra.transport import PooledTransport

pytestmark = [pytest.mark.anyio, pytest.mark.both_loops]  # either loop: tests/conftest.py

After = Literal["keep", "close"]


class Scripted(LoopbackServer):
    """Answers each request with the next of `answers` (raw bytes, then keeps the connection or
    closes it), and records every request it read whole (head, decoded body)."""

    def __init__(self, *answers: tuple[bytes, After]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.requests: list[tuple[bytes, bytes]] = []

    def serve(self, connection: socket.socket) -> None:
        with connection:
            pending = b""
            while self.answers:
                try:
                    request, pending = self._request(connection, pending)
                except (OSError, EOFError):
                    return
                self.requests.append(request)
                answer, after = self.answers.pop(0)
                connection.sendall(answer)
                if after == "close":
                    return

    @staticmethod
    def _request(connection: socket.socket, pending: bytes) -> tuple[tuple[bytes, bytes], bytes]:
        def more() -> bytes:
            chunk = connection.recv(65536)
            if not chunk:
                raise EOFError
            return chunk

        while b"\r\n\r\n" not in pending:
            pending += more()
        head, _, pending = pending.partition(b"\r\n\r\n")
        lowered = head.lower()
        body = b""
        if b"transfer-encoding: chunked" in lowered:
            while True:
                while b"\r\n" not in pending:
                    pending += more()
                size_line, _, pending = pending.partition(b"\r\n")
                size = int(size_line, 16)
                while len(pending) < size + 2:
                    pending += more()
                body, pending = body + pending[:size], pending[size + 2 :]
                if size == 0:
                    break
        elif b"content-length:" in lowered:
            length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
            while len(pending) < length:
                pending += more()
            body, pending = pending[:length], pending[length:]
        return (head, body), pending


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=PooledTransport(max_connections=4, lean=True), timeout=5)


#: a plain answer on a connection that may be used again
PLAIN: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def two_gets(*script: tuple[bytes, After]) -> tuple[str, str, int]:
    """Two GETs one after the other to a server answering `script`: their bodies, and how
    many connections the server saw."""
    with Scripted(*script) as server:
        async with client() as http:
            first = await http.get(server.url)
            second = await http.get(server.url)
    return first.text, second.text, server.connections


async def test_a_chunked_answer_is_read_whole_and_its_connection_reused() -> None:
    # Given a server answering in chunks (with an extension and a trailer), then plainly
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    # When two requests are made one after the other
    answers = await two_gets((chunked, "keep"), (PLAIN, "keep"))

    # Then both bodies arrive whole, over one connection
    assert answers == ("hello world", "ok", 1)


async def test_an_answer_without_a_length_is_read_until_the_server_closes() -> None:
    # Given a server that frames its answer by closing the connection
    unframed = b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
    # When it is read, and another request made
    answers = await two_gets((unframed, "close"), (PLAIN, "keep"))

    # Then the body is all it sent, and the next request had a new connection
    assert answers == ("until the end", "ok", 2)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    ],
    ids=["connection-close", "http-1.0", "bytes-past-the-end"],
)
async def test_a_connection_is_not_reused_after_an_answer_that_forbids_it(answer: bytes) -> None:
    # Given a server whose answer says (or shows) the connection must not be used again
    # When two requests are made
    answers = await two_gets((answer, "keep"), (PLAIN, "keep"))

    # Then the second went over a new connection
    assert answers == ("ok", "ok", 2)


async def test_an_informational_answer_before_the_answer_is_skipped() -> None:
    informational = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmade"
    )
    with Scripted((informational, "keep")) as server:
        async with client() as http:
            answer = await http.post(server.url, json={"prompt": "a cat"})

    assert (answer.status_code, answer.text) == (201, "made")


async def test_an_answer_to_head_has_no_body_and_keeps_the_connection() -> None:
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    with Scripted((head_answer, "keep"), (PLAIN, "keep")) as server:
        async with client() as http:
            first = await http.head(server.url)
            second = await http.get(server.url)

    assert (first.headers["content-length"], first.content, second.text) == ("1000", b"", "ok")
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"",
    ],
    ids=["body-cut-short", "chunk-cut-short", "head-cut-short", "nothing"],
)
async def test_a_server_that_closes_early_is_a_protocol_error(answer: bytes) -> None:
    with Scripted((answer, "close")) as server:
        async with client() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(server.url)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"SPDY/3 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n",
    ],
    ids=[
        "folded-header",
        "no-colon",
        "space-in-name",
        "two-lengths",
        "negative-length",
        "unknown-coding",
        "bad-chunk-size",
        "chunk-longer-than-its-size",
        "bad-status",
        "not-http",
        "head-too-long",
    ],
)
async def test_a_malformed_answer_is_a_protocol_error(answer: bytes) -> None:
    with Scripted((answer, "keep")) as server:
        async with client() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(server.url)


async def test_answers_that_repeat_their_header_lines_read_alike_and_a_changed_one_is_checked() -> (
    None
):
    # Given a server answering three times with the same header lines (as a provider's polls
    # do), then with one of them changed into one that is not a header line
    same = b"HTTP/1.1 200 OK\r\nServer: fake\r\nX-Id: 7\r\nContent-Length: 2\r\n\r\nok"
    bad = b"HTTP/1.1 200 OK\r\nServer: fake\r\nX-Id: 7\x00\r\nContent-Length: 2\r\n\r\nok"
    with Scripted((same, "keep"), (same, "keep"), (same, "keep"), (bad, "keep")) as server:
        async with client() as http:
            # When each is read
            answers = [await http.get(server.url) for _ in range(3)]
            with pytest.raises(httpx.RemoteProtocolError) as refused:
                await http.get(server.url)

    # Then the three read alike, with every header as sent
    for answer in answers:
        assert answer.headers.multi_items() == [
            ("server", "fake"),
            ("x-id", "7"),
            ("content-length", "2"),
        ]
        assert answer.text == "ok"
    # And the changed line is refused all the same, named in the error
    assert "X-Id: 7\\x00" in str(refused.value)


async def test_a_header_that_would_smuggle_another_is_refused_before_anything_is_sent() -> None:
    with Scripted((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep")) as server:
        async with client() as http:
            with pytest.raises(httpx.LocalProtocolError):
                await http.get(server.url, headers={"x-task": "1\r\nx-injected: yes"})

    assert server.requests == []


async def test_request_bodies_arrive_whole_in_memory_or_streamed() -> None:
    answers = [(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep")] * 3
    big = bytes(range(256)) * 400  # 100 KiB: past what goes out with the head

    async def parts() -> AsyncIterator[bytes]:
        yield b"first part, "
        yield b""
        yield b"second part"

    with Scripted(*answers) as server:  # type: ignore[arg-type]
        async with client() as http:
            await http.post(server.url, json={"prompt": "a cat"})
            await http.put(server.url, content=big)
            await http.post(server.url, content=parts())

    assert [body for _, body in server.requests] == [
        b'{"prompt":"a cat"}',
        big,
        b"first part, second part",
    ]
    assert b"transfer-encoding: chunked" in server.requests[2][0].lower()
    assert server.connections == 1


async def test_a_connection_idle_past_its_keep_alive_is_not_reused() -> None:
    with Scripted((PLAIN, "keep"), (PLAIN, "keep")) as server:
        transport = PooledTransport(max_connections=4, keepalive_expiry=0.05, lean=True)
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            await http.get(server.url)
            await asyncio.sleep(0.2)  # idle past its keep-alive
            await http.get(server.url)

    assert server.connections == 2


async def test_a_kept_request_goes_out_as_made_each_time_it_is_sent() -> None:
    # Given a request kept for sending again (a task's poll), and the same request made afresh
    with Scripted(*[(PLAIN, "keep")] * 5) as server:  # type: ignore[arg-type]
        transport = PooledTransport(max_connections=4, lean=True)
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            poll = http.build_request("GET", f"{server.url}/v1/tasks/7", headers={"x-key": "k1"})
            post = http.build_request("POST", f"{server.url}/v1/submit", json={"prompt": "a cat"})
            kept = [transport.keep(poll), transport.keep(post)]
            # When each kept request is sent twice on one connection
            answers = [
                await transport.read(made, limit=100, too_large=RuntimeError, kept=one)
                for one, made in zip(kept * 2, [poll, post] * 2, strict=True)
            ]
            fresh = await http.send(http.build_request("GET", f"{server.url}/v1/tasks/7"))

    # Then each went out whole each time, as httpx made it, and its answer was read whole
    head, body = server.requests[0]
    assert head.startswith(b"GET /v1/tasks/7 HTTP/1.1\r\n") and b"\r\nx-key: k1" in head
    assert server.requests[2] == server.requests[0] and body == b""
    assert server.requests[3] == server.requests[1]
    assert server.requests[1][1] == b'{"prompt":"a cat"}'
    assert [(a.status_code, a.content) for a in answers] == [(200, b"ok")] * 4
    assert fresh.text == "ok" and server.connections == 1


async def test_a_kept_request_that_would_smuggle_a_header_is_refused_when_kept() -> None:
    transport = PooledTransport(max_connections=4, lean=True)
    async with httpx.AsyncClient(transport=transport) as http:
        poll = http.build_request("GET", "http://127.0.0.1:9/", headers={"x": "1\r\ny: 2"})
        with pytest.raises(httpcore.LocalProtocolError):
            transport.keep(poll)
