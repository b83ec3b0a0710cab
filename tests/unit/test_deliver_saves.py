"""Which deliveries store a copy (what a stream says it waits for: `imagegw.core.deliver.saves`),
and what is delivered without a bucket."""

from __future__ import annotations

import asyncio
import base64

import pytest

from fakes.png import make_png
from imagegw.core.deliver import LinkMode, Ref, Stored, deliver, saves
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.media import DataUri
from imagegw.infra.storage import ImageStore

LINK = "https://provider.example/files/a.png"
INLINE = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    ("refs", "mode", "expected"),
    [
        ((LINK,), "stored", True),
        ((LINK,), "inline", True),  # a type a chat client cannot show inline is stored
        ((LINK,), "provider", False),
        ((LINK, INLINE), "provider", True),  # an image answered inline is still stored
        ((LINK,), "data", False),  # downloaded, not stored
        ((LINK,), "as_is", False),
        ((Stored("a.png"),), "stored", False),  # a durable job's copy, made before
    ],
)
def test_saves(refs: tuple[Ref, ...], mode: LinkMode, expected: bool) -> None:
    assert saves(refs, mode) is expected


def test_a_providers_inline_image_is_kept_as_it_came_without_a_bucket() -> None:
    # Given a setup without BUCKET that passes the provider's links on, and a provider that
    # answered an image inline (which is stored when there is a bucket)
    settings = Settings(image_links="provider")
    png = make_png(8, 8)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()

    async def delivered() -> tuple[object, ...]:
        store, fetcher = ImageStore(settings), Fetcher(settings)
        try:
            return await deliver(
                [uri], settings=settings, store=store, fetcher=fetcher, base_url="http://gw"
            )
        finally:
            await store.aclose()
            await fetcher.aclose()

    # When it is delivered, Then the client gets the image itself (the paid result), no error
    (image,) = asyncio.run(delivered())
    assert isinstance(image, DataUri)
    assert b"".join(image.payload()) == base64.b64encode(png)
