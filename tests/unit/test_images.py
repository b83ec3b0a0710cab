"""Input images: type told by the bytes, data-URI decoding and size limits."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from fakes.png import GIF_1x1, JPEG_1x1, WEBP_1x1, make_png, noisy_png
from imagegw.errors import InvalidRequestError, PayloadTooLargeError
from imagegw.infra.media import (
    DECODE_STEP,
    URI_STEP,
    ImageBytes,
    canonical_uri,
    check_image,
    decode_data_uri,
    decode_refs,
    plain_base64,
    sniff_mime,
)

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


def huge_png(width: int, height: int) -> bytes:
    """A small, whole PNG whose header declares `width` x `height` (its data does not matter
    for a check that reads only the header: the bomb a decoder would choke on)."""
    png = bytearray(make_png(2, 2))
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def test_the_header_dimensions_are_read_for_every_type() -> None:
    for data, size in (
        (make_png(7, 5), (7, 5)),
        (JPEG_1x1, (1, 1)),
        (WEBP_1x1, (1, 1)),
        (GIF_1x1, (1, 1)),
    ):
        image = check_image(data, max_bytes=LIMIT)
        assert (image.width, image.height) == size


@pytest.mark.parametrize("size", [(30000, 30000), (16385, 16), (9000, 9000)])
def test_an_image_declaring_more_pixels_than_any_model_takes_is_a_400(
    size: tuple[int, int],
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_data_uri(data_uri(huge_png(*size)), max_bytes=LIMIT)
    assert caught.value.status == 400
    assert caught.value.code == "image_dimensions_too_large"
    assert f"{size[0]}x{size[1]}" in caught.value.message
    # a generated image is the provider's: its size is not refused
    assert check_image(huge_png(*size), max_bytes=LIMIT, limits=False).width == size[0]


def test_a_large_image_within_the_limits_is_taken() -> None:
    assert check_image(huge_png(4096, 4096), max_bytes=LIMIT).height == 4096


@pytest.mark.parametrize(
    ("data", "cut"),
    [
        (make_png(40, 40), 10),  # the IEND chunk, then part of the data
        (make_png(40, 40), 30),
        (JPEG_1x1, 2),  # the end marker
        (WEBP_1x1, 4),
        (GIF_1x1, 1),  # the trailer
    ],
)
def test_a_truncated_image_is_a_400(data: bytes, cut: int) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_image(data[:-cut], max_bytes=LIMIT)
    assert caught.value.code == "invalid_image"
    assert "cut short" in caught.value.message or "unreadable" in caught.value.message


@pytest.mark.parametrize(
    "data",
    [
        make_png(4, 4)[:20],  # the header itself cut
        make_png(4, 4)[:20] + b"\0" * 40,  # IHDR's CRC wrong
        b"\xff\xd8\xff",  # no frame header
        b"RIFF\x10\x00\x00\x00WEBPXXXX" + b"\0" * 20,  # an unknown WebP chunk
    ],
)
def test_an_unreadable_header_is_a_400(data: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_image(data, max_bytes=LIMIT)
    assert caught.value.code == "invalid_image"


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        (data_uri(PNG), True),
        (data_uri(PNG, "image/jpeg"), False),  # the type its bytes do not show
        (data_uri(PNG, "IMAGE/PNG"), False),
        (data_uri(PNG).replace(";base64", ";name=a.png;base64"), False),
        (data_uri(make_png(40, 40)).replace("A", "A\n", 1), False),  # a line break
    ],
)
def test_a_data_uri_is_canonical_only_when_it_is_what_the_image_encodes_to(
    uri: str, canonical: bool
) -> None:
    image = decode_data_uri(uri, max_bytes=LIMIT)

    assert canonical_uri(uri, image) is canonical
    assert canonical_uri(image.data_uri(), image)
    assert (uri == image.data_uri()) is canonical
    # a canonical URI is kept and passed on as it is (to a provider, in an answer): no new text
    assert (image.data_uri() is uri) is canonical
    assert (image.uri is uri) is canonical


@pytest.mark.parametrize("size", [0, 1, 2, URI_STEP - 1, URI_STEP, URI_STEP + 1, 2 * URI_STEP + 2])
def test_a_data_uri_encoded_in_steps_is_the_whole_base64(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)

    assert ImageBytes(data, "image/gif").data_uri() == data_uri(data, "image/gif")


@pytest.mark.parametrize(
    "size",
    [0, 1, 2, 3, DECODE_STEP // 4 * 3 - 1, DECODE_STEP // 4 * 3, 2 * DECODE_STEP // 4 * 3 + 2],
)
def test_plain_base64_decoded_in_steps_is_the_whole_payload(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    uri = data_uri(data)

    assert plain_base64(uri, uri.index(",") + 1) == data


@pytest.mark.parametrize(
    "payload",
    [
        "QUJ",  # not whole groups
        "QU=D",  # padding inside a group
        "QQ==QUJD",  # padding inside the payload
        "QUJD" * (DECODE_STEP // 4 - 1) + "QQ==" + "QUJD",  # ... at the end of a step
        "QUJD" * (DECODE_STEP // 4) + "QU\nD",  # a line break (in the second step)
        "QUJD" * (DECODE_STEP // 4) + "QU*D",
        "QUJD" * 3 + "QUé=",  # beyond ASCII
    ],
)
def test_what_is_not_plain_base64_is_left_to_the_lenient_decoder(payload: str) -> None:
    assert plain_base64(f"data:image/png;base64,{payload}", 22) is None


def test_padding_at_the_end_of_a_step_is_invalid_base64_as_it_was() -> None:
    # Given base64 whose groups are each valid but which holds padding where one step ends
    uri = data_uri(make_png(40, 40))
    start = uri.index(",") + 1
    bad = f"{uri[:start]}{'QUJD' * (DECODE_STEP // 4 - 1)}QQ=={uri[start:]}"

    with pytest.raises(InvalidRequestError) as caught:
        decode_data_uri(bad, max_bytes=10 * LIMIT)

    assert caught.value.code == "invalid_image"
    assert "invalid base64" in caught.value.message


def test_a_base64_image_of_a_few_steps_is_decoded_to_its_bytes() -> None:
    png = noisy_png(1000, 600)
    assert len(png) * 4 // 3 > 2 * DECODE_STEP

    image = decode_data_uri(data_uri(png), max_bytes=10 * LIMIT)

    assert image.data == png
    assert (image.width, image.height) == (1000, 600)
