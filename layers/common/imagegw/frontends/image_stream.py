"""The Images API streamed (`stream: true`): OpenAI's image events, as the official SDKs read them.

- one `image_generation.completed` event (edits: `image_edit.completed`) per image, with its
  `b64_json`, `size` (read from the image), `quality` and `background` (as asked, else `auto`),
  `output_format` (the image's own type), `created_at` and `usage` (zero tokens: no provider
  driven here counts tokens);
- `*.partial_image` events only as an OpenAI-compatible upstream streams them, passed through
  (`relayed_stream`: `stream` and `partial_images` forwarded); none is ever made up, so for
  every other provider `partial_images` is accepted and named in `x-ignored-parameters`;
- `: keep-alive` comments every KEEPALIVE_INTERVAL (at most 15 s) and the progress as comments
  (`: generating · 12 s`), which the SDKs skip, so no proxy cuts a long generation;
- a failure after the stream began: an `error` event whose data is the OpenAI error body
  (`{"error": {...}}`: the Python SDK raises it as an `APIError`);
- `data: [DONE]` last, as the gateway's chat streams end (the SDKs stop there).

A client that leaves closes the stream, which stops the polling (`WatchedStream` cancels it; see
`imagegw.runners.pipeline`).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from typing import Any, Final

from imagegw.access.gate import Reservation
from imagegw.core.deliver import deliver
from imagegw.errors import GatewayError, render
from imagegw.frontends.images_api import ImagesCall
from imagegw.frontends.spans import Around, dumps, encoded
from imagegw.frontends.streaming import DONE, KEEPALIVE, progress_text, with_keepalive
from imagegw.infra import apimetrics
from imagegw.infra.log import logger
from imagegw.infra.media import decode_data_uri, dimensions, is_data_uri, sniff_mime
from imagegw.providers.base import GenerationRequest, Provider
from imagegw.providers.openai_compat import Made, Preview
from imagegw.runners.gateway import Gateway
from imagegw.runners.inprocess import Event, Progress
from imagegw.runners.quota import settle

QUALITIES: Final = frozenset({"low", "medium", "high", "auto"})
BACKGROUNDS: Final = frozenset({"transparent", "opaque", "auto"})
FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
USAGE: Final = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}
#: base64 characters of an image decoded to read its type and size (48 KiB of the file: a
#: JPEG's frame header follows its EXIF and colour profile, which are almost always smaller;
#: else the whole image is decoded)
HEADER_CHARS: Final = 65536


def event(name: str, payload: Mapping[str, Any]) -> str:
    """One SSE event: its name, and its data as one JSON line."""
    return f"event: {name}\ndata: {dumps(payload)}\n\n"


def image_event(name: str, data_uri: str, meta: Mapping[str, Any]) -> Iterator[bytes]:
    """The bytes of `event(name, {"b64_json": <data_uri's payload>, **meta})`, its `b64_json`
    first and written as it is (`imagegw.frontends.spans`: no whole copy of the image's few
    megabytes is made, a megabyte of it is encoded at a time)."""
    around = Around()
    head, *rest = around.pieces({"b64_json": around.payload(data_uri), **meta})
    return encoded([f"event: {name}\ndata: {head}", *rest, "\n\n"])


def comment(text: str) -> str:
    """An SSE comment (ignored by the SDKs): one line, whatever `text` holds."""
    return f": {' '.join(text.split())}\n\n"


def _asked(fields: Mapping[str, Any], name: str, allowed: frozenset[str]) -> str:
    value = fields.get(name)
    text = value.strip().lower() if isinstance(value, str) else ""
    return text if text in allowed else "auto"


def _header(data_uri: str, max_bytes: int) -> tuple[str | None, tuple[int, int] | None]:
    """The type and size of the image in `data_uri`, read from the start of its bytes. A
    streamed image was checked whole when it was made (`imagegw.core.deliver`), so only its
    header is decoded here, not a second copy of the image; a URI whose start does not decode
    is decoded and checked whole (`decode_data_uri`, which says what is wrong)."""
    start = data_uri.find(",") + 1
    try:
        head = base64.b64decode(data_uri[start : start + HEADER_CHARS], validate=True)
    except (binascii.Error, ValueError):
        head = b""
    size = dimensions(head)
    if not head or (size is None and len(data_uri) - start > HEADER_CHARS):
        image = decode_data_uri(data_uri, max_bytes=max_bytes, what="generated image")
        return image.mime, dimensions(image.data)
    return sniff_mime(head), size


def details(
    kind: str, data_uri: str, fields: Mapping[str, Any], created_at: int, max_bytes: int
) -> dict[str, Any]:
    """The `*.completed` event of one image (a data URI) but its `b64_json`."""
    mime, size = _header(data_uri, max_bytes)
    return {
        "type": f"{kind}.completed",
        "size": f"{size[0]}x{size[1]}" if size else "auto",
        "quality": _asked(fields, "quality", QUALITIES),
        "background": _asked(fields, "background", BACKGROUNDS),
        "output_format": FORMATS.get(mime or "", "png"),
        "created_at": created_at,
        "usage": USAGE,
    }


def completed(
    kind: str, data_uri: str, fields: Mapping[str, Any], created_at: int, max_bytes: int
) -> dict[str, Any]:
    """The `*.completed` event of one image (a data URI)."""
    return {
        "b64_json": data_uri[data_uri.find(",") + 1 :],
        **details(kind, data_uri, fields, created_at, max_bytes),
    }


def completed_event(
    kind: str, data_uri: str, fields: Mapping[str, Any], created_at: int, max_bytes: int
) -> Iterator[bytes]:
    """The bytes of the `*.completed` event of one image (`completed`, sent by `image_event`)."""
    meta = details(kind, data_uri, fields, created_at, max_bytes)
    return image_event(f"{kind}.completed", data_uri, meta)


async def images_stream(
    events: AsyncIterator[Event],
    *,
    edit: bool,
    n: int,
    fields: Mapping[str, Any],
    keepalive_interval: float,
    max_bytes: int,
) -> AsyncIterator[str | bytes]:
    """The SSE body of a streamed Images API answer (`events` deliver data URIs)."""
    kind = "image_edit" if edit else "image_generation"
    shown = ""
    try:
        async for item in with_keepalive(events, keepalive_interval):
            if item is None:
                yield KEEPALIVE
            elif isinstance(item, Progress):
                text = progress_text(item)
                if text != shown:  # a line the reader already has is not written again
                    shown = text
                    yield comment(text)
            else:
                if item.failures:
                    logger.warning("some images failed", extra={"failures": list(item.failures)})
                created_at = int(time.time())
                for ref in item.images[:n]:
                    if not is_data_uri(ref):
                        raise GatewayError(
                            "A streamed image got a link.", code="internal_error", retryable=False
                        )
                    for piece in completed_event(kind, ref, fields, created_at, max_bytes):
                        yield piece
    except Exception as exc:
        if not isinstance(exc, GatewayError):
            logger.exception("generation failed unexpectedly")
        apimetrics.failure(exc)
        _, body, _ = render(exc)
        yield event("error", body)
    yield DONE


async def relayed_stream(
    gateway: Gateway,
    provider: Provider,
    job: GenerationRequest,
    call: ImagesCall,
    reservation: Reservation | None,
    keepalive_interval: float,
) -> AsyncIterator[str | bytes]:
    """The SSE body of a streamed call relayed from an upstream that streams: its partial
    images passed through, each finished image as our `*.completed` event, keep-alives
    meanwhile; the quota settled by the images made."""
    settings = gateway.settings
    kind = "image_edit" if call.edit else "image_generation"
    made = 0
    stream = getattr(provider, "stream_images")  # noqa: B009 (`relays_previews` checked it)
    try:
        if call.images:
            job = replace(job, images=await gateway.store.stage(call.images))
        items = stream(job, call.partial_images)
        async for item in with_keepalive(items, keepalive_interval):
            if item is None:
                yield KEEPALIVE
            elif isinstance(item, Preview):
                yield event(str(item.event.get("type")), item.event)
            elif isinstance(item, Made) and made < job.n:
                (ref,) = await deliver(
                    [item.ref],
                    settings=settings,
                    store=gateway.store,
                    fetcher=gateway.result_fetcher,
                    base_url="",
                    mode="data",
                )
                made += 1
                created_at = int(time.time())
                for piece in completed_event(
                    kind, ref, call.fields, created_at, settings.max_result_bytes
                ):
                    yield piece
    except Exception as exc:
        if not isinstance(exc, GatewayError):
            logger.exception("generation failed unexpectedly")
        apimetrics.failure(exc)
        await settle(reservation, made)
        _, body, _ = render(exc)
        yield event("error", body)
        yield DONE
        return
    await settle(reservation, made)
    yield DONE
