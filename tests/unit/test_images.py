"""Input images: type told by the bytes, data-URI decoding and size limits."""

from __future__ import annotations

import base64

import pytest

from fakes.png import GIF_1x1, JPEG_1x1, WEBP_1x1, make_png
from imagegw.errors import InvalidRequestError, PayloadTooLargeError
from imagegw.infra.media import ImageBytes, check_image, decode_data_uri, decode_refs, sniff_mime

PNG = make_png(4, 3)
LIMIT = 1024 * 1024


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG_1x1, "image/jpeg"),
        (WEBP_1x1, "image/webp"),
        (GIF_1x1, "image/gif"),
        (b"GIF87a" + GIF_1x1[6:], "image/gif"),
    ],
)
def test_sniff_tells_the_type_by_the_bytes(data: bytes, mime: str) -> None:
    assert sniff_mime(data) == mime


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"RIFF\0\0\0\0WAVE",
        b"%PDF",
    ],
)
def test_sniff_refuses_other_content(data: bytes) -> None:
    assert sniff_mime(data) is None


def test_decode_a_png_data_uri() -> None:
    image = decode_data_uri(data_uri(PNG), max_bytes=LIMIT)

    assert image == ImageBytes(PNG, "image/png")
    assert image.extension == "png"
    assert image.data_uri() == data_uri(PNG)


def test_bytes_win_over_the_declared_type() -> None:
    # Given a PNG that its data URI calls a JPEG
    image = decode_data_uri(data_uri(PNG, "image/jpeg"), max_bytes=LIMIT)

    # Then the type comes from the bytes
    assert image.mime == "image/png"
    assert image.extension == "png"


def test_base64_with_line_breaks_is_accepted() -> None:
    encoded = base64.encodebytes(make_png(40, 40)).decode()  # wrapped every 76 chars
    assert "\n" in encoded

    image = decode_data_uri(f"data:image/png;base64,{encoded}", max_bytes=LIMIT)

    assert image.data == make_png(40, 40)


@pytest.mark.parametrize(
    "uri", ["data:image/png;base64,iVBORw0KGgo*AAAA", "data:image/png;base64,iVBORw0KGgoAA"]
)
def test_bad_base64_is_a_400(uri: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_data_uri(uri, max_bytes=LIMIT)

    assert caught.value.status == 400
    assert caught.value.code == "invalid_image"
    assert "invalid base64" in caught.value.message


@pytest.mark.parametrize(
    "uri", ["data:image/png,rawbytes", "data:image/png;charset=utf-8,abc", "image/png;base64,AAAA"]
)
def test_not_a_base64_data_uri_is_a_400(uri: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_data_uri(uri, max_bytes=LIMIT)

    assert caught.value.status == 400
    assert caught.value.code == "invalid_image"
    assert "not a base64 data URI" in caught.value.message


@pytest.mark.parametrize("mime", ["text/plain", "image/png"])
def test_text_bytes_are_not_an_image(mime: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_data_uri(data_uri(b"hello, world", mime), max_bytes=LIMIT)

    assert caught.value.status == 400
    assert caught.value.code == "invalid_image"
    assert "not a PNG, JPEG, WEBP or GIF" in caught.value.message


def test_empty_image_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_data_uri("data:image/png;base64,", max_bytes=LIMIT)

    assert caught.value.code == "invalid_image"
    assert "empty" in caught.value.message


@pytest.mark.parametrize("limit", [len(PNG) - 1, len(PNG) // 2])
def test_image_over_the_limit_is_a_413(limit: int) -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        decode_data_uri(data_uri(PNG), max_bytes=limit)

    assert caught.value.status == 413
    assert caught.value.code == "image_too_large"
    assert str(limit) in caught.value.message


def test_image_at_the_limit_is_accepted() -> None:
    assert decode_data_uri(data_uri(PNG), max_bytes=len(PNG)).data == PNG


def test_check_image_names_what_it_checks() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_image(b"nope", max_bytes=LIMIT, what="image 2")

    assert "The image 2 is not" in caught.value.message


def test_decode_refs_keeps_urls_and_decodes_data_uris() -> None:
    url = "https://example.com/cat.png"

    refs = decode_refs([url, data_uri(JPEG_1x1, "image/jpeg")], max_bytes=LIMIT)

    assert refs == (url, ImageBytes(JPEG_1x1, "image/jpeg"))


def test_decode_refs_names_the_bad_image_among_several() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_refs([data_uri(PNG), data_uri(b"text", "text/plain")], max_bytes=LIMIT)

    assert "image 2" in caught.value.message


def test_decode_refs_of_nothing_is_nothing() -> None:
    assert decode_refs([], max_bytes=LIMIT) == ()
