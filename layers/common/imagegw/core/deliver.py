"""Deliver: result images -> what the client gets, per IMAGE_LINKS or the caller's mode.

- `provider`: the provider's own URL (images a provider answered inline are still stored);
- `stored` (default): a copy in the bucket under images/, linked as `{base}/v1/files/{name}`,
  which redirects to a fresh presigned URL for as long as the object is kept;
- `inline`: a PNG/JPEG data URI (other types are stored: Cherry Studio shows only those two);
- `data`: a data URI of any type, nothing stored (the Images API's `b64_json`; not a setting);
- `as_is`: what the job already kept (a durable job's result: copies were made by its Store).

A data URI is delivered as a `DataUri` (`imagegw.infra.media`): the image's bytes (or a
provider's own canonical URI of them, as it came), which the answer writes as base64 a
part at a time, never the whole URI's text beside them. A provider's data URI passed on as
data (`data`, and `inline` for a PNG or JPEG) is checked from its base64
(`imagegw.infra.media.data_uri_image`): its bytes are never made whole beside it.

A result is paid for: when it cannot be copied (the provider's link fails, or the bucket does),
the client still gets it, as the provider's own link or, for an image the provider answered
inline, as a data URI, with a warning in the log. `copy_result` is that rule, for every driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from imagegw.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
    StorageError,
)
from imagegw.infra.config import STORING_LINKS, Settings
from imagegw.infra.fetcher import Fetcher, FetchError
from imagegw.infra.log import logger
from imagegw.infra.media import (
    DataUri,
    ImageBytes,
    check_image,
    data_uri_image,
    decode_data_uri,
    is_data_uri,
)
from imagegw.infra.storage import ImageStore, no_bucket

INLINE_TYPES: Final = frozenset({"image/png", "image/jpeg"})
#: how results are linked: the IMAGE_LINKS values, and modes for callers (see above)
LinkMode = Literal["provider", "stored", "inline", "data", "as_is"]
#: what a check of a generated image gives (`provider_made`)
Checked = TypeVar("Checked", ImageBytes, DataUri)
#: stores an image in the bucket; its name there (raises StorageError)
Save = Callable[[ImageBytes], Awaitable[str]]


@dataclass(frozen=True)
class Stored:
    """A result copied into the bucket under images/ (`name`)."""

    name: str


#: a result image: a provider URL or data URI, or a stored copy
Ref = str | Stored
#: a result image as the client gets it: a link, or the image as a data URI
Delivered = str | DataUri


def file_link(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/v1/files/{name}"


async def fetch_image(fetcher: Fetcher, ref: str, settings: Settings) -> ImageBytes:
    """The bytes of a result image: a data URI, or a provider's URL downloaded by the guarded
    fetcher (`Fetcher.for_results`: size cap, timeout, redirects checked; the reason of a
    failure is logged, the client hears one text)."""
    limit = settings.max_result_bytes
    if is_data_uri(ref):
        return provider_made(
            lambda: decode_data_uri(ref, max_bytes=limit, what="generated image", limits=False)
        )
    try:
        data = await fetcher.fetch(ref, limit=limit)
    except FetchError:
        raise ProviderError(
            "The generated image could not be downloaded from the provider's link.",
            code="result_unavailable",
        ) from None
    return provider_made(
        lambda: check_image(data, max_bytes=limit, what="generated image", limits=False)
    )


def provider_made(check: Callable[[], Checked]) -> Checked:
    """A generated image checked by `check`: what it finds wrong is the provider's fault (a
    502 `invalid_result`), never the client's 400."""
    try:
        return check()
    except (InvalidRequestError, PayloadTooLargeError) as exc:
        raise ProviderError(
            f"The provider's {exc.message[4:] if exc.message.startswith('The ') else exc.message}",
            code="invalid_result",
        ) from None


def _passed_on(uri: str, settings: Settings) -> DataUri:
    """A provider's data URI checked as `fetch_image` checks it, to be passed on as data: its
    bytes not made whole (`data_uri_image`)."""
    limit = settings.max_result_bytes
    return provider_made(
        lambda: data_uri_image(uri, max_bytes=limit, what="generated image", limits=False)
    )


async def _fetch_or_keep(ref: str, fetcher: Fetcher, settings: Settings) -> ImageBytes | None:
    """The image, or None when a provider's link cannot be fetched (the link is kept: it
    still works for a while). A bad data URI raises: there is no link to fall back on."""
    try:
        return await fetch_image(fetcher, ref, settings)
    except GatewayError as exc:
        if is_data_uri(ref):
            raise
        logger.warning(
            "result not copied; keeping the provider's link", extra={"error": exc.message}
        )
        return None


async def _saved(image: ImageBytes, save: Save) -> Stored | None:
    """The stored copy, or None when the bucket fails (the caller keeps what the provider
    gave: its link, or the image itself as a data URI)."""
    try:
        return Stored(await save(image))
    except StorageError as exc:
        logger.warning(
            "result not stored: the bucket failed; keeping the provider's link",
            extra={"error": exc.message},
        )
        return None


async def copy_result(ref: str, *, settings: Settings, fetcher: Fetcher, save: Save) -> Ref:
    """A paid result copied into the bucket, or kept as the provider gave it when that fails."""
    image = await _fetch_or_keep(ref, fetcher, settings)
    if image is None:
        return ref
    stored = await _saved(image, save)
    if stored is not None:
        return stored
    return image.data_uri() if is_data_uri(ref) else ref


async def _stored(ref: Stored, mode: LinkMode, store: ImageStore, base_url: str) -> Delivered:
    if mode != "data":
        return file_link(base_url, ref.name)
    image = await store.result_bytes(ref.name)
    if image is None:
        raise NotFoundError(
            f"The job's image {ref.name} is no longer stored (ImageRetentionDays).",
            code="result_expired",
        )
    return DataUri.of(image)


def check_bucket(settings: Settings, mode: LinkMode, inputs: Sequence[object] = ()) -> None:
    """Refuse (500 `no_bucket`, `imagegw.infra.storage.no_bucket`) a job that needs the bucket
    on a setup without BUCKET: results linked by `mode` that stores them, or input image files
    to upload. Called before anything is reserved or started: the results are paid for."""
    if settings.bucket:
        return
    if mode in STORING_LINKS or any(isinstance(item, ImageBytes) for item in inputs):
        raise no_bucket()


def saves(refs: Sequence[Ref], mode: LinkMode) -> bool:
    """Whether `deliver(refs, mode=mode)` may store a copy in the bucket (what a stream tells
    its reader it waits for): never for links passed on as they are (`provider`, `as_is`) nor
    for `data`, which only downloads."""
    if mode in ("stored", "inline"):
        return any(not isinstance(ref, Stored) for ref in refs)
    return mode == "provider" and any(isinstance(ref, str) and is_data_uri(ref) for ref in refs)


async def deliver(
    refs: Sequence[Ref],
    *,
    settings: Settings,
    store: ImageStore,
    fetcher: Fetcher,
    base_url: str,
    mode: LinkMode | None = None,
) -> tuple[Delivered, ...]:
    """What the client gets for `refs`, as `mode` says (default: IMAGE_LINKS)."""
    how: LinkMode = mode or settings.image_links

    async def one(ref: Ref) -> Delivered:
        if isinstance(ref, Stored):
            return await _stored(ref, how, store, base_url)
        if how == "as_is" or (how == "provider" and not is_data_uri(ref)):
            return ref
        if how == "data":  # the bytes are the answer: no link to fall back on
            if is_data_uri(ref):
                return _passed_on(ref, settings)
            return DataUri.of(await fetch_image(fetcher, ref, settings))
        if how == "inline" and is_data_uri(ref):
            uri = _passed_on(ref, settings)
            if uri.mime in INLINE_TYPES:
                return uri
        if how != "stored":
            return await copy(ref)
        # the download waits for an upload turn: a burst of results holds no more images
        # fetched and not yet stored than the bucket has connections
        async with store.turn():
            return await copy(ref)

    async def copy(ref: str) -> Delivered:
        image = await _fetch_or_keep(ref, fetcher, settings)
        if image is None:
            return ref
        if how == "inline" and image.mime in INLINE_TYPES:
            return DataUri.of(image)
        # no bucket (`provider` links: `check_bucket` let it through): kept as it came
        stored = await _saved(image, store.save_result) if settings.bucket else None
        if stored is not None:
            return file_link(base_url, stored.name)
        return DataUri.of(image) if is_data_uri(ref) else ref

    if len(refs) == 1:  # one image (most answers): no task to gather
        return (await one(refs[0]),)
    return tuple(await asyncio.gather(*(one(ref) for ref in refs)))
