"""Result images -> the links clients get, per IMAGE_LINKS.

- `provider`: the provider's own URL (images a provider answered inline are still stored);
- `stored` (default): a copy in the bucket under images/, linked as `{base}/v1/files/{name}`,
  which redirects to a fresh presigned URL for as long as the object is kept;
- `inline`: a PNG/JPEG data URI (other types are stored: Cherry Studio shows only those two);
- `data`: a data URI of any type, nothing stored (the Images API's `b64_json`; not a setting).

A result is paid for: when it cannot be copied (the provider's link fails, or the bucket does),
the client still gets it, as the provider's own link or, for an image the provider answered
inline, as a data URI, with a warning in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from imagegw.config import Settings
from imagegw.errors import GatewayError, ProviderError, StorageError
from imagegw.fetcher import Fetcher, FetchError
from imagegw.images import ImageBytes, check_image, decode_data_uri, is_data_uri
from imagegw.log import logger
from imagegw.storage import ImageStore

INLINE_TYPES = frozenset({"image/png", "image/jpeg"})
#: how results are linked: the IMAGE_LINKS values, and `data` for callers that want the bytes
LinkMode = Literal["provider", "stored", "inline", "data"]


def file_link(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/v1/files/{name}"


async def fetch_image(fetcher: Fetcher, ref: str, settings: Settings) -> ImageBytes:
    """The bytes of a result image: a data URI, or a provider's URL downloaded by the guarded
    fetcher (`Fetcher.for_results`: size cap, timeout, redirects checked; the reason of a
    failure is logged, the client hears one text)."""
    limit = settings.max_result_bytes
    if is_data_uri(ref):
        return decode_data_uri(ref, max_bytes=limit, what="generated image")
    try:
        data = await fetcher.fetch(ref, limit=limit)
    except FetchError:
        raise ProviderError(
            "The generated image could not be downloaded from the provider's link.",
            code="result_unavailable",
        ) from None
    return check_image(data, max_bytes=limit, what="generated image")


async def deliver(
    images: Sequence[str],
    *,
    settings: Settings,
    store: ImageStore,
    fetcher: Fetcher,
    base_url: str,
    mode: LinkMode | None = None,
) -> tuple[str, ...]:
    """The links to give the client for `images` (provider URLs or data URIs), as `mode` says
    (default: IMAGE_LINKS)."""
    mode = mode or settings.image_links

    async def one(ref: str) -> str:
        if mode == "provider" and not is_data_uri(ref):
            return ref
        if mode == "data":  # the bytes are the answer: no link to fall back on
            return (await fetch_image(fetcher, ref, settings)).data_uri()
        try:
            image = await fetch_image(fetcher, ref, settings)
        except GatewayError as exc:
            if is_data_uri(ref):
                raise
            # nothing lost: the provider's own link still works for a while
            logger.warning(
                "result not copied; giving the provider's link", extra={"error": exc.message}
            )
            return ref
        if mode == "inline" and image.mime in INLINE_TYPES:
            return image.data_uri()
        try:
            return file_link(base_url, await store.save_result(image))
        except StorageError as exc:
            # paid for: the provider's link (or the image itself) beats an error
            logger.warning(
                "result not stored: the bucket failed; giving the provider's link",
                extra={"error": exc.message},
            )
            return image.data_uri() if is_data_uri(ref) else ref

    return tuple(await asyncio.gather(*(one(ref) for ref in images)))
