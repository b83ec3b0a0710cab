"""`disconnect.unless_disconnected`: a JSON answer's work stops when the client leaves, driven
by a scripted ASGI `receive` channel (over real HTTP: tests/functional/test_faults_interactive)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from imagegw.errors import ClientDisconnectedError, InvalidRequestError, render
from imagegw.frontends.disconnect import unless_disconnected

pytestmark = pytest.mark.anyio


class Channel:
    """A request whose body has been read: `receive` waits until the test says what comes."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.waiting = 0

    async def receive(self) -> Message:
        self.waiting += 1
        return await self.messages.get()

    def request(self) -> Request:
        return Request({"type": "http", "method": "POST", "headers": []}, self.receive)


class Work:
    """Work that runs until told to end, noting whether it was cancelled."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> str:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "images"


async def test_the_work_is_cancelled_when_the_client_leaves() -> None:
    channel, work = Channel(), Work()
    running = asyncio.ensure_future(unless_disconnected(channel.request(), work()))
    await asyncio.sleep(0.01)

    await channel.messages.put({"type": "http.disconnect"})

    with pytest.raises(ClientDisconnectedError) as caught:
        await running
    assert work.cancelled
    assert render(caught.value)[0] == 499


async def test_the_answer_of_a_client_that_stays_is_returned() -> None:
    channel, work = Channel(), Work()
    running = asyncio.ensure_future(unless_disconnected(channel.request(), work()))
    await asyncio.sleep(0.01)

    work.release.set()

    assert await running == "images"
    assert channel.waiting == 1  # the watch was stopped, not left waiting for a message


async def test_the_work_s_own_error_is_raised() -> None:
    async def refused() -> str:
        raise InvalidRequestError("bad size")

    with pytest.raises(InvalidRequestError, match="bad size"):
        await unless_disconnected(Channel().request(), refused())


async def test_an_unexpected_message_leaves_the_work_running() -> None:
    # Given a server that sends something other than a disconnect once the body is read
    channel, work = Channel(), Work()
    running = asyncio.ensure_future(unless_disconnected(channel.request(), work()))
    await channel.messages.put({"type": "http.request", "body": b"", "more_body": False})
    await asyncio.sleep(0.01)

    # Then the work is not cancelled for it, and its answer comes
    assert not running.done()
    work.release.set()
    assert await running == "images"
    assert not work.cancelled


async def test_cancelling_the_request_cancels_the_work() -> None:
    channel, work = Channel(), Work()
    running = asyncio.ensure_future(unless_disconnected(channel.request(), work()))
    await asyncio.sleep(0.01)

    running.cancel()

    with pytest.raises(asyncio.CancelledError):
        await running
    assert work.cancelled
