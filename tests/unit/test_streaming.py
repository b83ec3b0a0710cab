"""chat_stream: the SSE body of a streamed chat completion, over a scripted event iterator."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from starlette.responses import JSONResponse

from imagegw.errors import ProviderError
from imagegw.frontends.disconnect import LastChunk
from imagegw.frontends.schemas import Completion
from imagegw.frontends.spans import PiecesResponse
from imagegw.frontends.streaming import (
    DONE,
    Frames,
    chat_stream,
    collect,
    markdown,
    sse,
    with_keepalive,
)
from imagegw.infra.media import URI_STEP, DataUri
from imagegw.infra.spans import Around, encoded
from imagegw.runners.inprocess import Progress, Result
from imagegw.runners.pipeline import Event

pytestmark = pytest.mark.anyio

MODEL = "Qwen/Qwen-Image"
URLS = ("https://cdn.example/a.png", "https://cdn.example/b.png")
RESULT = Result(images=URLS, failures=(), task_ids=("t-1", "t-2"), elapsed=3.2)

#: characters of base64 written at a time
STEP = URI_STEP // 3 * 4

Step = Event | float | Exception  # a float is a pause (seconds)


async def scripted(steps: Sequence[Step]) -> AsyncIterator[Event]:
    for step in steps:
        if isinstance(step, float):
            await asyncio.sleep(step)
        elif isinstance(step, Exception):
            raise step
        else:
            yield step


async def stream(
    steps: Sequence[Step], *, include_usage: bool = False, keepalive: float = 5.0
) -> list[str]:
    """The SSE frames of a stream (split on blank lines), each checked for well-formedness."""
    body = "".join(
        [
            chunk
            async for chunk in chat_stream(
                scripted(steps),
                Completion(MODEL),
                include_usage=include_usage,
                keepalive_interval=keepalive,
            )
        ]
    )
    assert body.endswith("\n\n")
    frames = body.split("\n\n")[:-1]
    for frame in frames:
        assert frame, "an empty SSE event"
        for line in frame.split("\n"):
            assert line.startswith((": ", "data: ")), line
            assert line.removeprefix("data:").strip(), "an empty data line"
    return frames


def payloads(frames: list[str]) -> list[Any]:
    """The data of each frame: parsed JSON, or the [DONE] marker (comments left out)."""
    out: list[Any] = []
    for frame in frames:
        if frame.startswith(":"):
            continue
        data = frame.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def deltas(items: list[Any]) -> list[dict[str, Any]]:
    return [p["choices"][0]["delta"] for p in items if isinstance(p, dict) and p.get("choices")]


async def test_a_complete_stream() -> None:
    frames = await stream([Progress("PENDING", 0.0), Progress("RUNNING", 1.5), RESULT])
    items = payloads(frames)

    # the role chunk first
    first = items[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == MODEL
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["choices"][0]["finish_reason"] is None
    # every chunk belongs to the same completion
    ids = {p["id"] for p in items if isinstance(p, dict)}
    assert len(ids) == 1
    assert ids.pop().startswith("chatcmpl-")
    # progress as reasoning_content, then the images, one markdown image per line
    ds = deltas(items)
    reasoning = [d["reasoning_content"] for d in ds if "reasoning_content" in d]
    assert reasoning[0].startswith("queued")
    assert reasoning[1].startswith("generating")
    assert "1.5 s" in reasoning[1]
    content = [d["content"] for d in ds if d.get("content")]
    assert content == [f"![image 1]({URLS[0]})\n![image 2]({URLS[1]})"]
    # then the finish chunk and [DONE]
    assert items[-2]["choices"][0]["finish_reason"] == "stop"
    assert items[-2]["choices"][0]["delta"] == {}
    assert items[-1] == "[DONE]"


async def test_a_progress_line_the_reader_already_has_is_not_written_again() -> None:
    # the run reports the submission (SUBMITTED) and the provider's queue (PENDING) at the same
    # second: both read "queued · 0.0 s", which the reader gets once; a later line that shows
    # the time going on is written even in the same words
    chunks = [
        chunk
        async for chunk in chat_stream(
            scripted(
                [
                    Progress("SUBMITTED", 0.01, where="ModelScope"),
                    Progress("PENDING", 0.02, where="ModelScope"),
                    Progress("PENDING", 5.0, where="ModelScope"),
                    Progress("RUNNING", 5.8, where="ModelScope"),
                    RESULT,
                ]
            ),
            Completion(MODEL),
            include_usage=False,
            keepalive_interval=5.0,
        )
    ]
    lines = [
        d["reasoning_content"]
        for d in deltas(payloads([f for c in chunks for f in c.split("\n\n") if f]))
        if "reasoning_content" in d
    ]
    assert lines == [
        "queued at ModelScope · 0.0 s\n",
        "queued at ModelScope · 5.0 s\n",
        "generating · 5.8 s\n",
    ]
    # one write each: the head, three lines, the images with the end
    assert len(chunks) == 5


async def test_the_images_and_the_end_of_the_stream_arrive_together() -> None:
    # a client reading the stream gets the images, the stop, the usage and [DONE] in one read
    # (and the gateway makes one write for them), right when the result is known
    chunks = [
        chunk
        async for chunk in chat_stream(
            scripted([Progress("RUNNING", 0.0), RESULT, 0.2]),
            Completion(MODEL),
            include_usage=True,
            keepalive_interval=0.05,
        )
    ]
    last = chunks[-1]
    assert URLS[0] in last and '"finish_reason":"stop"' in last and last.endswith(DONE)
    assert '"usage"' in last
    assert all(URLS[0] not in chunk for chunk in chunks[:-1])
    # the answer does not end with them: the run's records after its result come first
    assert not isinstance(last, LastChunk)


async def test_a_result_whose_run_is_over_ends_the_answer_with_it() -> None:
    # the run's records were done without a wait when its result was handed over: the images,
    # the stop and [DONE] end the answer in the same write (nothing is left to wait for)
    chunks = [
        chunk
        async for chunk in chat_stream(
            scripted([Progress("RUNNING", 0.0), RESULT]),
            Completion(MODEL),
            include_usage=False,
            keepalive_interval=5.0,
        )
    ]
    last = chunks[-1]
    assert isinstance(last, LastChunk)
    assert URLS[0] in last and '"finish_reason":"stop"' in last and last.endswith(DONE)
    assert all(URLS[0] not in chunk for chunk in chunks[:-1])


async def test_a_result_before_records_that_fail_does_not_end_the_answer() -> None:
    # records that fail after the result: the images are sent at once, the answer ends after
    chunks = [
        chunk
        async for chunk in chat_stream(
            scripted([RESULT, KeyError("the table")]),
            Completion(MODEL),
            include_usage=False,
            keepalive_interval=5.0,
        )
    ]
    assert URLS[0] in chunks[-1] and chunks[-1].endswith(DONE)
    assert not isinstance(chunks[-1], LastChunk)


async def test_a_stream_that_fails_ends_its_answer_with_its_error() -> None:
    # the events are over when their error is known: the error and [DONE] end the answer
    chunks = [
        chunk
        async for chunk in chat_stream(
            scripted([Progress("RUNNING", 0.0), ProviderError("no", code="provider_error")]),
            Completion(MODEL),
            include_usage=False,
            keepalive_interval=5.0,
        )
    ]
    assert isinstance(chunks[-1], LastChunk) and chunks[-1].endswith(DONE)
    assert '"provider_error"' in chunks[-1]
    assert not any(isinstance(chunk, LastChunk) for chunk in chunks[:-1])


async def test_usage_chunk_only_with_include_usage() -> None:
    without = payloads(await stream([RESULT], include_usage=False))
    with_usage = payloads(await stream([RESULT], include_usage=True))

    assert not any(isinstance(p, dict) and "usage" in p for p in without)
    usage = with_usage[-2]
    assert usage["choices"] == []
    assert set(usage["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    # after the finish chunk, before [DONE]
    assert with_usage[-3]["choices"][0]["finish_reason"] == "stop"
    assert with_usage[-1] == "[DONE]"


async def test_progress_of_several_tasks_counts_the_done_ones() -> None:
    items = payloads(await stream([Progress("RUNNING", 2.0, done=1, total=3), RESULT]))

    reasoning = [d["reasoning_content"] for d in deltas(items) if "reasoning_content" in d]
    assert "1/3" in reasoning[0]


async def test_failed_tasks_are_listed_under_the_images() -> None:
    partial = Result(
        images=(URLS[0],), failures=("ModelScope task t-2 failed: nsfw",), task_ids=(), elapsed=1
    )

    items = payloads(await stream([partial]))

    content = [d["content"] for d in deltas(items) if d.get("content")]
    assert content == [f"![image 1]({URLS[0]})\n> ModelScope task t-2 failed: nsfw"]


async def test_keep_alive_comments_while_events_are_slow() -> None:
    frames = await stream([Progress("RUNNING", 0.0), 0.3, RESULT], keepalive=0.05)

    keepalives = [f for f in frames if f.startswith(":")]
    assert len(keepalives) >= 2
    assert set(keepalives) == {": keep-alive"}
    # the stream still completes normally
    items = payloads(frames)
    assert items[-2]["choices"][0]["finish_reason"] == "stop"


async def test_no_keep_alive_when_events_are_quick() -> None:
    frames = await stream([Progress("RUNNING", 0.0), RESULT], keepalive=5.0)

    assert not [f for f in frames if f.startswith(":")]


async def test_an_error_mid_stream_is_an_error_event_then_done() -> None:
    failure = ProviderError(
        "ModelScope task t-1 failed: the prompt was rejected", code="generation_failed"
    )

    items = payloads(await stream([Progress("RUNNING", 1.0), failure]))

    assert items[-1] == "[DONE]"
    assert items[-2] == {
        "error": {
            "message": "ModelScope task t-1 failed: the prompt was rejected",
            "type": "provider_error",
            "param": None,
            "code": "generation_failed",
        }
    }
    assert not any(
        isinstance(p, dict) and p.get("choices") and p["choices"][0]["finish_reason"] for p in items
    )


async def test_an_unexpected_error_mid_stream_is_opaque() -> None:
    items = payloads(await stream([Progress("RUNNING", 1.0), KeyError("token ms-secret")]))

    error = items[-2]["error"]
    assert error["code"] == "internal_error"
    assert "ms-secret" not in error["message"]
    assert items[-1] == "[DONE]"


async def test_events_are_read_at_most_one_ahead_of_a_stream_that_stops_reading() -> None:
    # Given events that come at once, as many as asked for
    asked = 0

    async def events() -> AsyncIterator[int]:
        nonlocal asked
        while True:
            asked += 1
            yield asked
            await asyncio.sleep(0)

    stream = with_keepalive(events(), 5.0)
    try:
        # When the stream takes the first, then stops reading a while
        assert await anext(stream) == 1
        for _ in range(20):  # a while: turns of the loop, not seconds
            await asyncio.sleep(0)

        # Then one more waits to be taken and one is in hand: no more were asked for
        assert asked == 3
        assert [await anext(stream), await anext(stream)] == [2, 3]
        for _ in range(20):
            await asyncio.sleep(0)
        assert asked == 5
    finally:
        await stream.aclose()


async def test_closing_the_stream_closes_the_events() -> None:
    # Given a client that goes away after the first progress event
    closed = asyncio.Event()

    async def events() -> AsyncIterator[Event]:
        try:
            yield Progress("RUNNING", 0.0)
            await asyncio.sleep(10)
            yield RESULT
        finally:
            closed.set()

    body = chat_stream(events(), Completion(MODEL), include_usage=False, keepalive_interval=5)
    async for chunk in body:
        if "reasoning_content" in chunk:
            break
    await body.aclose()

    # Then the generation is closed too (its polling stops)
    await asyncio.wait_for(closed.wait(), timeout=1)


async def test_collect_returns_the_result() -> None:
    assert await collect(scripted([Progress("RUNNING", 0.0), RESULT])) is RESULT


async def test_markdown_is_one_image_per_line() -> None:
    assert markdown(RESULT) == f"![image 1]({URLS[0]})\n![image 2]({URLS[1]})"


@pytest.mark.parametrize(
    ("delta", "finish_reason"),
    [
        ({"role": "assistant", "content": ""}, None),
        ({"reasoning_content": "queued at ModelScope · 0.0 s\n"}, None),
        ({"content": '![image 1](https://x.test/a.png?q="1"&b=\\)\n> 出错了 ✓'}, None),
        ({}, "stop"),
    ],
)
def test_a_chunk_s_frame_is_the_chunk_encoded_whole(
    delta: dict[str, Any], finish_reason: str | None
) -> None:
    completion = Completion("Qwen/Qwen-Image «édition»", created=1_765_000_000)
    frame = Frames(completion).chunk(delta, finish_reason)
    assert frame == sse(completion.chunk(delta, finish_reason))  # type: ignore[arg-type]
    assert json.loads(frame.removeprefix("data: "))["choices"][0]["delta"] == delta


def inline_result(text: bool) -> Result[str | DataUri]:
    """A result whose first image is a data URI of more than a megabyte of base64 (made from
    its bytes, or with `text` a provider's own URI passed on), then a link and a small data
    URI, and a failed task's reason."""
    data = random.Random(7).randbytes(900_000)
    source = f"data:image/png;base64,{base64.b64encode(data).decode()}" if text else data
    big = DataUri("image/png", 0, 0, source)
    small = DataUri("image/jpeg", 0, 0, b"jpeg")
    return Result(
        images=(big, URLS[0], small), failures=('task 4: "bad" \\ ✗',), task_ids=(), elapsed=1
    )


@pytest.mark.parametrize("text", [False, True])
async def test_an_inline_image_streams_as_the_bytes_of_its_whole_frame(text: bool) -> None:
    # Given a result with an image as a data URI (IMAGE_LINKS=inline), the run over
    result = inline_result(text)
    completion = Completion(MODEL)

    # When it is streamed
    chunks = [
        chunk
        async for chunk in chat_stream(
            scripted([result]), completion, include_usage=True, keepalive_interval=5.0
        )
    ]

    # Then the client reads the bytes of the frames encoded whole
    frames = Frames(completion)
    whole = (
        frames.chunk({"role": "assistant", "content": ""})
        + frames.chunk({"content": markdown(result)})
        + frames.chunk({}, "stop")
        + sse(completion.usage_chunk())
        + DONE
    )
    body = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in chunks)
    assert body == whole.encode()
    # And the payload is sent a megabyte at a time, never as one piece with its frame
    assert len(chunks) > 3
    assert max(len(chunk) for chunk in chunks) <= STEP
    # And the answer ends with its last piece, in the same write
    assert isinstance(chunks[-1], LastChunk) and chunks[-1].endswith(DONE)


@pytest.mark.parametrize("text", [False, True])
async def test_an_inline_image_is_answered_as_the_bytes_of_its_whole_json(text: bool) -> None:
    # Given a result with an image as a data URI, answered in one JSON (not streamed)
    result = inline_result(text)
    completion = Completion(MODEL)
    around = Around.of(result.images)
    assert around is not None and Around.of(URLS) is None  # links alone: nothing written around

    # When its answer is written around the payloads
    pieces = around.pieces(completion.message(markdown(result, around)))
    # (each data URI's payload in its place)
    assert [piece for piece in pieces if isinstance(piece, DataUri)] == list(result.images[::2])
    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))

    await PiecesResponse(pieces)({"type": "http"}, None, send)  # type: ignore[arg-type]

    # Then it is the bytes JSONResponse writes for the whole answer
    assert b"".join(sent) == JSONResponse(completion.message(markdown(result))).body
    assert b"".join(encoded(pieces)) == b"".join(sent)


@pytest.mark.both_loops
async def test_keepalives_keep_coming_when_each_is_due_within_the_loops_millisecond() -> None:
    # Given events that do not come, and keep-alives due sooner than uvloop's clock ticks (a
    # keep-alive found due just after a timer was set, under load: uvloop then answers the
    # timer with a plain handle)
    async def never() -> AsyncIterator[int]:
        await asyncio.sleep(30)
        yield 1

    stream = with_keepalive(never(), 0.0003)
    try:
        # When the stream is read, Then keep-alives come, one after another
        assert [await anext(stream) for _ in range(5)] == [None] * 5
    finally:
        await stream.aclose()
