"""Events -> what the client reads: SSE chunks for chat streams, one body otherwise.

Progress is sent as `delta.reasoning_content` (Cherry Studio shows it as a thinking block),
`: keep-alive` comments go out on a fixed schedule, and a failure after the stream has begun is
sent as `data: {"error": {...}}` then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, TypeVar

from imagegw.core.deliver import Delivered
from imagegw.errors import GatewayError, render
from imagegw.frontends.disconnect import LastChunk
from imagegw.frontends.schemas import Completion
from imagegw.frontends.spans import shown
from imagegw.infra import apimetrics
from imagegw.infra.jsontext import encoder_of
from imagegw.infra.log import logger
from imagegw.infra.spans import Around, encoded
from imagegw.runners.inprocess import Progress, Result
from imagegw.runners.pipeline import Event

T = TypeVar("T")
DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"


#: what `sse` encodes with: `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`,
#: built once (the gateway's own dicts of text and numbers: `jsontext.encoder_of`)
_encode = encoder_of(json.JSONEncoder(ensure_ascii=False, separators=(",", ":")), own_values=True)


def sse(payload: dict[str, Any]) -> str:
    return f"data: {_encode(payload)}\n\n"


class Frames:
    """A streamed completion's chunks as SSE frames: `sse(completion.chunk(...))` to the byte,
    with the part every chunk of the stream shares (its id, creation time and model) encoded
    once."""

    __slots__ = ("head",)

    def __init__(self, completion: Completion) -> None:
        self.head = (
            f'data: {{"id":{_encode(completion.id)},"object":"chat.completion.chunk",'
            f'"created":{_encode(completion.created)},"model":{_encode(completion.model)},'
            '"choices":[{"index":0,"delta":'
        )

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return f'{self.head}{_encode(delta)},"finish_reason":{_encode(finish_reason)}}}]}}\n\n'


def markdown(result: Result[Delivered], around: Around | None = None) -> str:
    """One markdown image per line, then a line per failed task (when some succeeded); with
    `around`, each data URI's payload is its mark (`Around.uri`: the answer is written around
    the payloads, `imagegw.frontends.spans`)."""
    return markdown_of(result.images, result.failures, around)


def markdown_of(
    images: Sequence[Delivered], failures: Sequence[str] = (), around: Around | None = None
) -> str:
    """`markdown` of links and reasons (a durable chat job's answer is built from its output)."""
    lines = [f"![image {i}]({shown(image, around)})" for i, image in enumerate(images, 1)]
    lines += [f"> {reason}" for reason in failures]
    return "\n".join(lines)


#: provider task states (ModelScope's, and the gateway's own) -> what a person reads
_QUEUED = frozenset({"PENDING", "QUEUED", "QUEUING", "SUBMITTED", "WAITING"})
_RUNNING = frozenset({"RUNNING", "PROCESSING", "IN_PROGRESS", "STARTED"})
_SUCCEEDED = frozenset({"SUCCEED", "SUCCEEDED", "SUCCESS", "DONE"})
_FAILED = frozenset({"FAILED", "FAILURE", "ERROR", "CANCELED", "CANCELLED"})


def stage_words(event: Progress) -> str:
    """The stage of a run in words ("queued at ModelScope", "generating", "saving the
    image"), never a provider's raw state name; a state not known reads "working"."""
    state = event.state.upper()
    images = "images" if event.total > 1 else "image"
    at = f" at {event.where}" if event.where else ""
    if state == "UPLOADING":
        return f"sending the input {images}"
    if state in _QUEUED:
        return f"queued{at}"
    if state in _RUNNING:
        return "generating"
    if state in _SUCCEEDED:
        return f"saving the {images}"
    if state in _FAILED:
        return "failed"
    return f"working{at}"


def progress_text(event: Progress) -> str:
    """One line of the thinking block: the stage in words, the seconds since the request
    began, and the estimate of the whole run where one exists."""
    stage = stage_words(event)
    if event.detail:  # the provider's own words: queue position, percent done
        stage += f" ({event.detail})"
    if event.expected is not None and event.expected > event.elapsed:
        # whole seconds, unless they would read alike ("1 s of about 1 s") or the run is short
        whole = event.expected >= 10 and round(event.elapsed) < round(event.expected)
        digits = 0 if whole else 1
        text = f"{stage} · {event.elapsed:.{digits}f} s of about {event.expected:.{digits}f} s"
    else:
        text = f"{stage} · {event.elapsed:.1f} s"
    if event.total > 1:
        text += f" · {event.done}/{event.total} done"
    return text + "\n"


async def collect(events: AsyncIterator[Event]) -> Result[Delivered]:
    """The result of a run (for non-streamed answers). The events are closed once read, so
    their clean-up runs now, not whenever they are garbage-collected."""
    try:
        async for event in events:
            if isinstance(event, Result):
                return event
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()
    raise GatewayError("The generation ended without a result.", code="internal_error")


class _Handover(Generic[T]):
    """Events read by one task for a stream's whole life and handed to the stream: the next is
    asked for as soon as one is handed over, and one at most waits to be taken (the reader
    waits for that, which a stream quicker than its events never makes it do). So an event
    costs the stream one wake-up, and the reader none."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: deque[T] = deque()
        self.taken: asyncio.Future[None] | None = None  # the reader waits on it
        self.waiter: asyncio.Future[None] | None = None  # the stream waits on it

    def wake(self, _: object = None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, iterator: AsyncIterator[T]) -> None:
        async for event in iterator:
            if self.ready:  # the one before is not taken yet
                self.taken = self.loop.create_future()
                await self.taken
            self.ready.append(event)
            self.wake()

    def take(self) -> T:
        event = self.ready.popleft()
        taken = self.taken
        if taken is not None and not taken.done():
            taken.set_result(None)
        return event


class Ended:
    """What `with_keepalive` tells of its events' end: `last` is True while the event it has
    just handed over is known to be the last (the events ended without an error, nothing more
    to take), so its stream can end its answer with it in one write, no later."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = False


async def with_keepalive(
    events: AsyncIterator[T], interval: float, ended: Ended | None = None
) -> AsyncIterator[T | None]:
    """The events, with a `None` whenever `interval` seconds pass since the last `None`.

    One task reads the events for the whole stream and one timer runs per keep-alive period
    (the time of the next `None` moves only when one is sent), not a task and a timer per
    event. Closing this closes `events`: the reading task is cancelled (a wait for the
    provider stops there), then the iterator is closed. `ended`, when given, says of each
    event handed over whether the events had ended by then (`Ended`)."""
    loop = asyncio.get_running_loop()
    iterator = aiter(events)
    handover: _Handover[T] = _Handover(loop)
    reader = loop.create_task(handover.read(iterator))
    reader.add_done_callback(handover.wake)
    due = loop.time() + interval
    # the period's timer, and whether it went off: the loop's clock may not show `due` yet when
    # it does (uvloop's counts milliseconds, and runs a timer due within one at once)
    timer: asyncio.Handle | None = None
    rang = False

    def ring() -> None:
        nonlocal rang
        rang = True
        handover.wake()

    def keepalive_due() -> bool:
        """Whether a keep-alive is due; if so, the next period starts now."""
        nonlocal due, timer, rang
        if not (rang or loop.time() >= due):
            return False
        if timer is not None:
            timer.cancel()
        due, timer, rang = loop.time() + interval, None, False
        return True

    try:
        while True:
            if handover.ready:
                event = handover.take()
                if ended is not None:
                    ended.last = (
                        not handover.ready
                        and reader.done()
                        and not reader.cancelled()
                        and reader.exception() is None
                    )
                yield event
                if keepalive_due():
                    yield None
            elif reader.done():
                reader.result()  # the events' error, if they failed
                return
            elif keepalive_due():
                yield None
            else:
                if timer is None:  # one timer a period
                    timer = loop.call_at(due, ring)
                handover.waiter = loop.create_future()
                await handover.waiter
    finally:
        if timer is not None:
            timer.cancel()
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        elif not reader.cancelled():
            reader.exception()  # seen: a failure after the stream was closed is not news
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            await closer()


async def chat_stream(
    events: AsyncIterator[Event],
    completion: Completion,
    *,
    include_usage: bool,
    keepalive_interval: float,
    intro: str = "",
) -> AsyncIterator[str | bytes]:
    """The SSE body of a streamed chat completion. Frames that go out together are one chunk
    (one write to the socket): the role and the intro; the images, the stop, the usage and
    [DONE], sent as soon as the result is known. The answer ends once the events have: the
    run's records (a run time written to the shared table) are done before it, for on Lambda
    nothing runs after it (docs/development.md). A stream that ends without a result (a
    failure) ends its answer with its last chunk (`LastChunk`: one write, not two); so does
    a result whose events had already ended when it was handed over (records done without a
    wait: `Ended`), never held back for them."""

    frames = Frames(completion)

    def closing() -> str:
        usage = sse(completion.usage_chunk()) if include_usage else ""
        return frames.chunk({}, finish_reason="stop") + usage + DONE

    head = frames.chunk({"role": "assistant", "content": ""})
    yield head + frames.chunk({"reasoning_content": intro}) if intro else head
    closed, shown, ended = False, "", Ended()
    try:
        async for event in with_keepalive(events, keepalive_interval, ended):
            if closed:
                continue
            if event is None:
                yield KEEPALIVE
            elif isinstance(event, Progress):
                # a line the reader already has (two states in the same words at the same
                # second: SUBMITTED then PENDING) is not written again
                text = progress_text(event)
                if text != shown:
                    shown = text
                    yield frames.chunk({"reasoning_content": text})
            else:
                closed = True
                # images as data URIs (IMAGE_LINKS=inline): the frame written around their
                # payloads, sent a part at a time (`imagegw.frontends.spans`), not copied
                around = Around.of(event.images)
                final = frames.chunk({"content": markdown(event, around)}) + closing()
                if around is not None:
                    *pieces, rest = around.cut(final)
                    for piece in encoded(pieces):
                        yield piece
                    final = str(rest)  # (`cut` ends with text)
                yield LastChunk(final) if ended.last else final
    except Exception as exc:
        if not isinstance(exc, GatewayError):
            logger.exception("generation failed unexpectedly")
        apimetrics.failure(exc)
        if not closed:
            _, body, _ = render(exc)
            yield LastChunk(sse(body) + DONE)
        return
    if not closed:
        yield LastChunk(closing())
