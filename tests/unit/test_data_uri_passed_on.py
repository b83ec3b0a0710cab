"""A provider's image answered as a data URI and passed on as data (issue 25): checked from its
base64, its bytes never made whole beside it; the same image, and the same refusals, as when
it is decoded."""

from __future__ import annotations

import asyncio
import base64
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import pytest

from fakes.png import GIF_1x1, JPEG_1x1, WEBP_1x1, make_png, noisy_png
from imagegw.core.deliver import LinkMode, deliver
from imagegw.errors import GatewayError
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.media import DataUri, data_uri_image, decode_data_uri
from imagegw.infra.storage import ImageStore

LIMIT = 8 * 1024 * 1024


def uri_of(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def chunked_png(width: int, height: int, part: int) -> bytes:
    """A noisy PNG whose image data is in many IDAT chunks of `part` bytes (a long walk)."""
    plain = noisy_png(width, height)
    ihdr_end = 8 + 25
    (length,) = struct.unpack(">I", plain[ihdr_end : ihdr_end + 4])
    idat = plain[ihdr_end + 8 : ihdr_end + 8 + length]
    chunks = b"".join(_chunk(b"IDAT", idat[at : at + part]) for at in range(0, len(idat), part))
    return plain[:ihdr_end] + chunks + _chunk(b"IEND", b"")


BIG = noisy_png(400, 400)  # ~480 KB: reads span the view's blocks
JPEG_PADDED = JPEG_1x1[:-2] + bytes(200_000) + JPEG_1x1[-2:]  # its end marker far from its frame

#: name: the data URI a provider may answer
URIS: dict[str, str] = {
    "png": uri_of(make_png(5, 3)),
    "png big": uri_of(BIG),
    "png of many chunks": uri_of(chunked_png(300, 300, 997)),
    "jpeg": uri_of(JPEG_1x1, "image/jpeg"),
    "jpeg, end marker far": uri_of(JPEG_PADDED, "image/jpeg"),
    "jpeg without end marker": uri_of(JPEG_1x1[:-2] + bytes(70_000), "image/jpeg"),
    "webp": uri_of(WEBP_1x1, "image/webp"),
    "gif": uri_of(GIF_1x1, "image/gif"),
    "gif, trailing NULs": uri_of(GIF_1x1 + bytes(100_000), "image/gif"),
    "gif without trailer": uri_of(GIF_1x1[:-1] + bytes(100_000), "image/gif"),
    "png cut short": uri_of(BIG[: len(BIG) // 2]),
    "png, bad header": uri_of(BIG[:20] + b"\0" * 20 + BIG[40:]),
    "png declared jpeg": uri_of(BIG, "image/jpeg"),
    "not an image": uri_of(b"hello, world" * 1000),
    "empty": "data:image/png;base64,",
    "line breaks": "data:image/png;base64," + base64.encodebytes(make_png(40, 40)).decode(),
    "padding inside": uri_of(make_png(5, 3))[:-8] + "=" + uri_of(make_png(5, 3))[-7:],
    "not base64": uri_of(BIG)[:-100] + "!" + uri_of(BIG)[-99:],
    "not base64 at all": "data:image/png,hello",
    "too large": uri_of(noisy_png(600, 600)),
    "uppercase head": "DATA:image/png;BASE64," + base64.b64encode(BIG).decode(),
}


def outcome(check: Callable[[], DataUri]) -> tuple[object, ...]:
    """What a client would see of a check: the refusal, or the image's type, size and base64."""
    try:
        image = check()
    except GatewayError as exc:
        return (type(exc).__name__, exc.code, exc.message)
    return (image.mime, image.width, image.height, image.head, b"".join(image.payload()))


@pytest.mark.parametrize("name", list(URIS))
def test_passed_on_is_what_decoding_gives(name: str) -> None:
    # Given a data URI a provider answered (whole or not, an image or not)
    uri = URIS[name]
    limit = 1_000_000 if name == "too large" else LIMIT

    # When it is checked to be passed on as data, Then it is the same image, byte for byte,
    # or the same refusal, as when it is decoded whole and checked
    passed = outcome(lambda: data_uri_image(uri, max_bytes=limit, what="generated image"))
    decoded = outcome(
        lambda: DataUri.of(decode_data_uri(uri, max_bytes=limit, what="generated image"))
    )
    assert passed == decoded


def test_a_canonical_uri_is_checked_without_its_bytes_made() -> None:
    # Given a provider's 1 MB PNG answered as a canonical data URI
    png = noisy_png(600, 600)
    uri = uri_of(png)

    # When it is checked to be passed on as data
    tracemalloc.start()
    try:
        image = data_uri_image(uri, max_bytes=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then the URI itself is passed on, and no copy of the image's bytes was made beside it
    assert image.source is uri
    assert peak < len(png) // 4


def _delivered(uri: str, mode: LinkMode, settings: Settings) -> tuple[object, int]:
    """`uri` delivered in `mode`; the peak of memory allocated meanwhile."""

    async def run() -> object:
        store, fetcher = ImageStore(settings), Fetcher(settings)
        try:
            (image,) = await deliver(
                [uri],
                settings=settings,
                store=store,
                fetcher=fetcher,
                base_url="http://gw",
                mode=mode,
            )
            return image
        finally:
            await store.aclose()
            await fetcher.aclose()

    tracemalloc.start()
    try:
        image = asyncio.run(run())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return image, peak


@pytest.mark.parametrize("mode", ["data", "inline"])
def test_a_providers_png_is_delivered_as_it_came_without_a_copy(mode: LinkMode) -> None:
    # Given a provider's 1 MB PNG answered as a data URI
    png = noisy_png(600, 600)
    uri = uri_of(png)

    # When it is delivered as data (the Images API's b64_json) or inline (a chat's image)
    image, peak = _delivered(uri, mode, Settings(image_links="inline"))

    # Then the client gets the same image, byte for byte, and its bytes were never made whole
    assert isinstance(image, DataUri)
    assert (image.mime, image.width, image.height) == ("image/png", 600, 600)
    assert base64.b64decode(b"".join(image.payload())) == png
    assert peak < len(png) // 4


def test_an_inline_webp_without_a_bucket_is_kept_as_it_came() -> None:
    # Given a provider's WEBP answered as a data URI, delivered inline (which shows PNG and
    # JPEG only: a WEBP is stored) on a setup without a bucket
    uri = uri_of(WEBP_1x1, "image/webp")

    # When it is delivered
    image, _ = _delivered(uri, "inline", Settings(image_links="inline"))

    # Then the client still gets the image itself, byte for byte
    assert isinstance(image, DataUri)
    assert image.mime == "image/webp"
    assert base64.b64decode(b"".join(image.payload())) == WEBP_1x1


@pytest.mark.parametrize("mode", ["data", "inline"])
def test_a_broken_image_is_refused_as_before(mode: LinkMode) -> None:
    # Given a provider's PNG cut short, answered as a data URI
    uri = uri_of(BIG[: len(BIG) // 2])

    # When it is delivered, Then it is the provider's fault: a 502 invalid_result
    with pytest.raises(GatewayError) as caught:
        _delivered(uri, mode, Settings(image_links="inline"))
    assert caught.value.status == 502
    assert caught.value.code == "invalid_result"
    assert caught.value.message == (
        "The provider's generated image is cut short: not a whole PNG file."
    )


def _written(image: DataUri) -> tuple[int, int]:
    """The bytes of `image`'s payload, written a part at a time; the peak of memory meanwhile."""
    tracemalloc.start()
    try:
        written = sum(len(part) for part in image.payload())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return written, peak


def test_a_uri_passed_on_is_written_holding_no_more_than_bytes_encoded() -> None:
    # Given a 1 MB PNG to answer as data: a provider's URI passed on, and the same image
    # encoded from its bytes
    png = noisy_png(600, 600)
    passed_on = data_uri_image(uri_of(png), max_bytes=LIMIT)
    encoded = DataUri(passed_on.mime, passed_on.width, passed_on.height, png)

    # When each payload is written, a part at a time
    written, peak = _written(passed_on)
    written_encoded, peak_encoded = _written(encoded)

    # Then each is the whole base64, and the URI's parts (a slice and its bytes each) hold no
    # more at once than the parts encoded from the bytes
    assert written == written_encoded == len(base64.b64encode(png))
    assert peak <= peak_encoded
