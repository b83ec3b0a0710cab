"""A client's image URL checked at a durable job's submission, as the synchronous path would
refuse it: a URL whose host is (or resolves to) a private, loopback or link-local address is
refused at once, with the one answer every failed download of a client's URL gets, instead of a
job that fails later in its Submit step.

This is a check only, never a fetch: whatever is fetched later still goes through the guarded
fetcher (`imagegw.infra.fetcher`), which checks the addresses it connects to (a name that
resolves differently by then is refused there).
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from imagegw.errors import InvalidRequestError
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import is_public, system_resolver
from imagegw.infra.media import ImageBytes
from imagegw.infra.storage import own_file_name


def _refused(index: int, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Input image {index} could not be downloaded from its URL.",
        param=param,
        code="invalid_image",
    )


async def check_public(url: str, index: int, *, param: str = "messages") -> None:
    """A 400 (the fetcher's one refusal) unless every address of the URL's host is public."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if parsed.scheme not in ("http", "https") or not host:
            raise _refused(index, param)
        addresses = await system_resolver(host, port)
    except InvalidRequestError:
        raise
    except Exception:  # malformed, or the name does not resolve: not downloadable either
        raise _refused(index, param) from None
    if not addresses or not all(is_public(address) for address in addresses):
        raise _refused(index, param)


async def check_inputs(
    inputs: Sequence[str | ImageBytes], settings: Settings, *, param: str = "messages"
) -> None:
    """`check_public` for each URL among a job's inputs but the gateway's own links to its
    stored results (read from the bucket, never fetched); nothing with ALLOW_PRIVATE_URLS, the
    tests' opt-in for fakes on loopback."""
    if settings.allow_private_urls:
        return
    for index, item in enumerate(inputs, 1):
        if isinstance(item, str) and own_file_name(item) is None:
            await check_public(item, index, param=param)
