"""The body deadline (`imagegw.frontends.app.Envelope`) times reading the body only: a slow
body is a 408 that closes the connection; a complete body, a bodiless request and a started
answer are left alone (streamed answers listen on `receive` for the client leaving)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from imagegw.errors import RequestTimeoutError
from imagegw.frontends.app import Envelope

pytestmark = pytest.mark.anyio
DEADLINE = 0.05


def scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/", "headers": headers}


class Client:
    """Plays the server's side: hands out `messages`, then waits `then_wait` seconds before
    saying the client left; records what the app sent."""

    def __init__(self, messages: list[Message], then_wait: float = 0.0) -> None:
        self.messages = messages
        self.then_wait = then_wait
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        await anyio.sleep(self.then_wait)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def response_headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])


async def answer(send: Send, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": headers or []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_body_that_stops_arriving_is_a_408() -> None:
    # Given a client that declared 100 bytes, sent 10 and then nothing for long
    client = Client(
        [{"type": "http.request", "body": b"0123456789", "more_body": True}], then_wait=60
    )

    async def reads_body(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass

    app = Envelope(reads_body, body_timeout=DEADLINE)
    # Then reading the body fails with the gateway's 408
    with pytest.raises(RequestTimeoutError):
        await app(scope([(b"content-length", b"100")]), client.receive, client.send)


async def test_an_answer_before_the_body_was_read_closes_the_connection() -> None:
    # Given an app that answers without reading the declared body (an unknown route)
    client = Client([], then_wait=60)

    async def ignores_body(scope: Scope, receive: Receive, send: Send) -> None:
        await answer(send, [(b"connection", b"keep-alive")])

    await Envelope(ignores_body, body_timeout=DEADLINE)(
        scope([(b"content-length", b"100")]), client.receive, client.send
    )
    # Then the server is told not to wait for the rest
    assert client.response_headers()[b"connection"] == b"close"


async def test_after_the_body_receive_is_not_timed() -> None:
    # Given a complete body, and a client that leaves well after the deadline
    client = Client(
        [{"type": "http.request", "body": b"{}", "more_body": False}], then_wait=DEADLINE * 4
    )
    seen: list[Any] = []

    async def streams(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append((await receive())["type"])  # what a streamed answer listens for
        await send({"type": "http.response.body", "body": b""})

    await Envelope(streams, body_timeout=DEADLINE)(
        scope([(b"content-length", b"2")]), client.receive, client.send
    )
    # Then the app hears the client leave, and the connection may be kept
    assert seen == ["http.disconnect"]
    assert b"connection" not in client.response_headers()


async def test_a_request_without_a_body_is_left_alone() -> None:
    client = Client([{"type": "http.request", "body": b"", "more_body": False}], then_wait=0.2)
    seen: list[Any] = []

    async def waits(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend([(await receive())["type"], (await receive())["type"]])
        await answer(send)

    await Envelope(waits, body_timeout=DEADLINE)(scope([]), client.receive, client.send)
    assert seen == ["http.request", "http.disconnect"]
    assert b"connection" not in client.response_headers()
