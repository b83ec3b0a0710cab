"""`disconnect.unless_disconnected` and `disconnect.WatchedStream`: a JSON answer's work, and a
streamed answer's, stops when the client leaves, driven by a scripted ASGI `receive` channel
(over real HTTP: tests/functional/test_faults_interactive)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request
from starlette.types import Message

from imagegw.errors import ClientDisconnectedError, InvalidRequestError, render
from imagegw.frontends.disconnect import LastChunk, WatchedStream, unless_disconnected

pytestmark = pytest.mark.anyio


class Channel:
    """A request whose body has been read: `receive` waits until the test says what comes."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.waiting = 0

    async def receive(self) -> Message:
        self.waiting += 1
        return await self.messages.get()

    def scope(self) -> dict[str, object]:
        return {"type": "http", "method": "POST", "headers": [], "asgi": {"spec_version": "2.3"}}

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


class Stream:
    """A streamed body: one chunk, then chunks as the test releases them; notes how it ended."""

    def __init__(self) -> None:
        self.release = asyncio.Queue[bytes | str | None]()
        self.ended = ""
        self.sent: list[Message] = []

    async def body(self) -> AsyncIterator[bytes | str]:
        try:
            yield b"data: first\n\n"
            while (chunk := await self.release.get()) is not None:
                yield chunk
            self.ended = "complete"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        except GeneratorExit:
            self.ended = "closed"
            raise

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def text(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def test_a_stream_stops_when_the_client_leaves() -> None:
    # Given a stream that has begun and waits for its provider
    channel, stream = Channel(), Stream()
    answer = WatchedStream(stream.body(), media_type="text/event-stream")
    running = asyncio.ensure_future(answer(channel.scope(), channel.receive, stream.send))
    await asyncio.sleep(0.01)
    assert stream.text() == b"data: first\n\n"

    # When the client leaves
    await channel.messages.put({"type": "http.disconnect"})

    # Then the stream's work is cancelled and the answer ends without an error
    await asyncio.wait_for(running, 30)  # (a bound, not a timing: it ends at once)
    assert stream.ended == "cancelled"
    assert not running.cancelled()


async def test_a_stream_of_a_client_that_stays_is_sent_whole() -> None:
    channel, stream = Channel(), Stream()
    answer = WatchedStream(stream.body(), media_type="text/event-stream")
    running = asyncio.ensure_future(answer(channel.scope(), channel.receive, stream.send))
    await channel.messages.put({"type": "http.request", "body": b"", "more_body": False})
    await stream.release.put(b"data: [DONE]\n\n")
    await stream.release.put(None)

    await running
    # the server's `http.disconnect` once the answer is complete cancels nothing
    await channel.messages.put({"type": "http.disconnect"})
    await asyncio.sleep(0.01)
    assert stream.ended == "complete"
    assert stream.text() == b"data: first\n\ndata: [DONE]\n\n"
    assert stream.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_cancelling_a_streamed_request_cancels_it_and_closes_the_body() -> None:
    channel, stream = Channel(), Stream()
    answer = WatchedStream(stream.body(), media_type="text/event-stream")
    running = asyncio.ensure_future(answer(channel.scope(), channel.receive, stream.send))
    await asyncio.sleep(0.01)

    running.cancel()

    with pytest.raises(asyncio.CancelledError):
        await running
    assert stream.ended == "cancelled"


async def test_a_last_chunk_ends_the_answer_and_the_stream_s_work_still_ends() -> None:
    # Given a stream whose last chunk is marked, with work to do after it
    channel, stream = Channel(), Stream()
    answer = WatchedStream(stream.body(), media_type="text/event-stream")
    running = asyncio.ensure_future(answer(channel.scope(), channel.receive, stream.send))
    await asyncio.sleep(0.01)

    # When it yields its last chunk
    await stream.release.put(LastChunk("data: [DONE]\n\n"))
    await asyncio.sleep(0.01)

    # Then the client has the whole answer at once: the chunk goes with the answer's end
    bodies = [m for m in stream.sent if m["type"] == "http.response.body"]
    assert bodies[-1] == {
        "type": "http.response.body",
        "body": b"data: [DONE]\n\n",
        "more_body": False,
    }
    assert stream.text() == b"data: first\n\ndata: [DONE]\n\n"
    # and the server's `http.disconnect` for the finished answer stops nothing
    await channel.messages.put({"type": "http.disconnect"})
    await asyncio.sleep(0.01)
    assert not running.done()
    # what the stream yields after its last chunk is not sent; it is read to its end
    await stream.release.put(b"data: late\n\n")
    await stream.release.put(None)
    await asyncio.wait_for(running, 30)  # (a bound, not a timing: it ends at once)
    assert stream.ended == "complete"
    assert stream.sent[-1]["more_body"] is False
    assert len([m for m in stream.sent if m["type"] == "http.response.body"]) == len(bodies)
