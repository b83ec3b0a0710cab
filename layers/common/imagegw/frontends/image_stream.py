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

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from typing import Any, Final

from imagegw.access.gate import Reservation
from imagegw.core.deliver import Delivered, deliver
from imagegw.errors import GatewayError, render
from imagegw.frontends.images_api import ImagesCall
from imagegw.frontends.spans import dumps
from imagegw.frontends.streaming import DONE, KEEPALIVE, progress_text, with_keepalive
from imagegw.infra import apimetrics
from imagegw.infra.log import logger
from imagegw.infra.media import DataUri
from imagegw.infra.spans import Around, encoded
from imagegw.providers.base import GenerationRequest, Provider
from imagegw.providers.openai_compat import Made, Preview
from imagegw.runners.gateway import Gateway
from imagegw.runners.inprocess import Progress
from imagegw.runners.pipeline import Event
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


def event(name: str, payload: Mapping[str, Any]) -> str:
    """One SSE event: its name, and its data as one JSON line."""
    return f"event: {name}\ndata: {dumps(payload)}\n\n"


def image_event(name: str, image: DataUri, meta: Mapping[str, Any]) -> Iterator[bytes]:
    """The bytes of `event(name, {"b64_json": <image's payload>, **meta})`, its `b64_json`
    first and written from the image's bytes (`imagegw.frontends.spans`: no whole copy of its
    base64 is made, a part of it is encoded at a time)."""
    around = Around()
    head, *rest = around.pieces({"b64_json": around.payload(image), **meta})
    return encoded([f"event: {name}\ndata: {head}", *rest, "\n\n"])


def comment(text: str) -> str:
    """An SSE comment (ignored by the SDKs): one line, whatever `text` holds."""
    return f": {' '.join(text.split())}\n\n"


def _asked(fields: Mapping[str, Any], name: str, allowed: frozenset[str]) -> str:
    value = fields.get(name)
    text = value.strip().lower() if isinstance(value, str) else ""
    return text if text in allowed else "auto"


def details(
    kind: str, image: DataUri, fields: Mapping[str, Any], created_at: int
) -> dict[str, Any]:
    """The `*.completed` event of one image but its `b64_json`: its size and type as the
    image was checked when it was made (`imagegw.core.deliver`)."""
    return {
        "type": f"{kind}.completed",
        "size": f"{image.width}x{image.height}" if image.width and image.height else "auto",
        "quality": _asked(fields, "quality", QUALITIES),
        "background": _asked(fields, "background", BACKGROUNDS),
        "output_format": FORMATS.get(image.mime, "png"),
        "created_at": created_at,
        "usage": USAGE,
    }


def completed(
    kind: str, image: DataUri, fields: Mapping[str, Any], created_at: int
) -> dict[str, Any]:
    """The `*.completed` event of one image (what `completed_event` writes)."""
    return {"b64_json": image.payload_text(), **details(kind, image, fields, created_at)}


def completed_event(
    kind: str, image: DataUri, fields: Mapping[str, Any], created_at: int
) -> Iterator[bytes]:
    """The bytes of the `*.completed` event of one image (`completed`, sent by `image_event`)."""
    return image_event(f"{kind}.completed", image, details(kind, image, fields, created_at))


def _streamed(image: Delivered) -> DataUri:
    """A streamed image, which is always delivered as a data URI (`deliver`'s `data`)."""
    if isinstance(image, str):
        raise GatewayError("A streamed image got a link.", code="internal_error", retryable=False)
    return image


async def images_stream(
    events: AsyncIterator[Event],
    *,
    edit: bool,
    n: int,
    fields: Mapping[str, Any],
    keepalive_interval: float,
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
                    for piece in completed_event(kind, _streamed(ref), fields, created_at):
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
                for piece in completed_event(kind, _streamed(ref), call.fields, created_at):
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
