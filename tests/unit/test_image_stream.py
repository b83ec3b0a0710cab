"""The streamed Images API's events (`imagegw.frontends.image_stream`) as the SDK types them."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types import ImageEditCompletedEvent, ImageGenCompletedEvent

from fakes.png import JPEG_1x1, make_png, noisy_png
from imagegw.frontends.image_stream import (
    comment,
    completed,
    completed_event,
    event,
    images_stream,
)
from imagegw.infra.media import URI_STEP, DataUri, check_image, decode_data_uri, dimensions
from imagegw.runners.inprocess import Progress, Result
from imagegw.runners.pipeline import Event

MAX = 10_000_000
#: characters of base64 written at a time
STEP = URI_STEP // 3 * 4


def data_uri(data: bytes, mime: str) -> DataUri:
    """`data` as the gateway delivers it: a DataUri of the checked image's bytes."""
    image = check_image(data, max_bytes=MAX)
    assert image.mime == mime
    return DataUri.of(image)


def provider_uri(data: bytes) -> DataUri:
    """`data` as a provider's own base64 answer delivers it: its (canonical) text."""
    text = f"data:image/png;base64,{base64.b64encode(data).decode()}"
    image = DataUri.of(decode_data_uri(text, max_bytes=MAX))
    assert image.source == text
    return image


def test_dimensions_are_read_from_png_and_jpeg_headers() -> None:
    assert dimensions(make_png(96, 64, (1, 2, 3))) == (96, 64)
    assert dimensions(JPEG_1x1) == (1, 1)
    assert dimensions(b"not an image") is None


def test_completed_event_is_what_the_sdk_validates() -> None:
    png = make_png(96, 64, (1, 2, 3))
    fields = {"quality": "HIGH", "background": "glitter"}
    payload = completed("image_generation", data_uri(png, "image/png"), fields, 1700000000)
    parsed = ImageGenCompletedEvent.model_validate(payload)  # strict: the SDK's own model
    assert base64.b64decode(parsed.b64_json) == png
    assert (parsed.size, parsed.quality, parsed.background) == ("96x64", "high", "auto")
    assert parsed.output_format == "png"


def test_an_edit_of_a_jpeg_says_so() -> None:
    payload = completed("image_edit", data_uri(JPEG_1x1, "image/jpeg"), {}, 1700000000)
    parsed = ImageEditCompletedEvent.model_validate(payload)
    assert (parsed.type, parsed.output_format, parsed.size) == (
        "image_edit.completed",
        "jpeg",
        "1x1",
    )


def test_events_and_comments_are_one_sse_block_each() -> None:
    text = event("error", {"type": "error", "error": {"message": "a\nb"}})
    assert text.startswith("event: error\ndata: ") and text.endswith("\n\n")
    assert json.loads(text.split("data: ", 1)[1])["error"]["message"] == "a\nb"
    assert comment("generating\n· 12 s\n") == ": generating · 12 s\n\n"


def with_app_segment(jpeg: bytes, size: int) -> bytes:
    """`jpeg` with an APP1 segment of `size` bytes (EXIF-like) before its frame header."""
    segment = b"\xff\xe1" + (size + 2).to_bytes(2, "big") + bytes(size)
    return jpeg[:2] + segment + jpeg[2:]


def test_a_jpeg_whose_frame_header_comes_late_still_reports_its_size() -> None:
    # Given a JPEG whose metadata puts its frame header past the bytes first decoded
    jpeg = with_app_segment(with_app_segment(JPEG_1x1, 60_000), 60_000)
    # When its completed event is made, Then its size is the one read when it was checked
    payload = completed("image_edit", data_uri(jpeg, "image/jpeg"), {}, 1700000000)
    parsed = ImageEditCompletedEvent.model_validate(payload)
    assert (parsed.size, parsed.output_format) == ("1x1", "jpeg")
    assert base64.b64decode(parsed.b64_json) == jpeg


def test_an_image_event_is_the_same_json_as_any_event() -> None:
    png = make_png(96, 64, (1, 2, 3))
    uri = data_uri(png, "image/png")
    payload = completed("image_generation", uri, {}, 1700000000)
    text = b"".join(completed_event("image_generation", uri, {}, 1700000000)).decode()
    assert text == event("image_generation.completed", payload)
    assert text.count("\n") == 3  # one event: its name, one data line, the blank line
    parsed = json.loads(text.split("data: ", 1)[1])
    assert parsed == payload
    assert ImageGenCompletedEvent.model_validate(parsed).size == "96x64"


def test_a_large_image_event_is_sent_in_pieces_of_the_same_text() -> None:
    # Given an image whose base64 is several steps long
    big = JPEG_1x1
    for _ in range(40):
        big = with_app_segment(big, 65_000)
    uri = data_uri(big, "image/jpeg")
    assert uri.payload_size() > 3 * STEP
    # When its event is encoded, Then it comes in several pieces that make the one event
    pieces = list(completed_event("image_edit", uri, {}, 1700000000))
    assert len(pieces) > 3 and max(map(len, pieces)) <= STEP + 200
    text = b"".join(pieces).decode()
    assert text == event("image_edit.completed", completed("image_edit", uri, {}, 1700000000))
    assert base64.b64decode(json.loads(text.split("data: ", 1)[1])["b64_json"]) == big


@pytest.mark.parametrize("made", [data_uri, lambda png, mime: provider_uri(png)])
def test_an_image_event_is_the_same_bytes_from_the_image_or_a_providers_text(made: Any) -> None:
    # Given a PNG of a few steps of base64, delivered from its bytes or a provider's text
    png = noisy_png(900, 700)
    image = made(png, "image/png")
    assert image.payload_size() > 2 * STEP
    # When its event is encoded, Then its bytes are the whole JSON event, byte for byte
    pieces = list(completed_event("image_generation", image, {}, 1700000000))
    whole = event(
        "image_generation.completed", completed("image_generation", image, {}, 1700000000)
    )
    assert b"".join(pieces) == whole.encode()
    assert max(map(len, pieces)) <= STEP + 200
    parsed = json.loads(whole.split("data: ", 1)[1])
    assert base64.b64decode(parsed["b64_json"]) == png
    assert ImageGenCompletedEvent.model_validate(parsed).size == "900x700"


@pytest.mark.anyio
async def test_a_progress_comment_the_reader_already_has_is_not_written_again() -> None:
    # SUBMITTED then PENDING at the same second read the same ("queued · 0.0 s"): one comment
    png = data_uri(make_png(8, 8, (1, 2, 3)), "image/png")

    async def events() -> AsyncIterator[Event]:
        yield Progress("SUBMITTED", 0.01, where="ModelScope")
        yield Progress("PENDING", 0.02, where="ModelScope")
        yield Progress("RUNNING", 1.5, where="ModelScope")
        yield Result(images=(png,), failures=(), task_ids=("t-1",), elapsed=2.0)

    chunks = [
        chunk if isinstance(chunk, str) else chunk.decode()
        async for chunk in images_stream(
            events(), edit=False, n=1, fields={}, keepalive_interval=5.0
        )
    ]
    comments = [chunk for chunk in chunks if chunk.startswith(":")]
    assert comments == [": queued at ModelScope · 0.0 s\n\n", ": generating · 1.5 s\n\n"]
    assert "".join(chunks[2:-1]).startswith("event: image_generation.completed")
