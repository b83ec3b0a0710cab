"""Properties of the check of a provider's data URI from its base64 (`media.Base64View`,
`media.data_uri_image`): a view reads as the decoded bytes read, and whatever a provider sends
(an image cut, overwritten or padded anywhere, declared as any type) is the same image or the
same refusal as when its bytes are decoded whole. Hypothesis draws the cases."""

from __future__ import annotations

import base64
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.png import GIF_1x1, JPEG_1x1, WEBP_1x1, make_png, noisy_png
from imagegw.errors import GatewayError
from imagegw.infra.media import Base64View, DataUri, data_uri_image, decode_data_uri

BLOCK = Base64View.BLOCK
#: sizes around the view's blocks, where a read spans two of them
SIZES = st.one_of(
    st.integers(0, 64),
    st.integers(BLOCK - 4, BLOCK + 4),
    st.integers(2 * BLOCK - 4, 2 * BLOCK + 4),
    st.integers(0, 3 * BLOCK),
)
HEAD = "data:image/png;base64,"


def _bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _view(data: bytes) -> Base64View:
    view = Base64View.of(HEAD + base64.b64encode(data).decode(), len(HEAD))
    assert view is not None
    return view


@settings(max_examples=60, deadline=None)
@given(size=SIZES, seed=st.integers(0, 2**32), data=st.data())
def test_a_view_reads_as_the_decoded_bytes(size: int, seed: int, data: st.DataObject) -> None:
    # Given any bytes, and a view of their base64
    whole = _bytes(size, seed)
    view = _view(whole)
    assert len(view) == len(whole)
    around = st.integers(-size - 3, size + 3)
    for _ in range(8):
        # When a byte, a slice, a prefix or the last place of a few bytes is read
        # Then it is what the bytes give (or the same IndexError)
        at = data.draw(around)
        if -size <= at < size:
            assert view[at] == whole[at]
        else:
            try:
                view[at]
            except IndexError:
                pass
            else:  # pragma: no cover - the assertion's message
                raise AssertionError(f"view[{at}] of {size} bytes read a byte")
        first = data.draw(st.one_of(st.none(), around))
        end = data.draw(st.one_of(st.none(), around))
        assert view[first:end] == whole[first:end]
        start = data.draw(st.integers(0, size + 3))
        if size and data.draw(st.booleans()):
            place = data.draw(st.integers(0, size - 1))
            sub = whole[place : place + data.draw(st.integers(1, 4))]
        else:
            sub = data.draw(st.binary(min_size=1, max_size=3))
        assert view.rfind(sub, start) == whole.rfind(sub, start)
        prefix = whole[: data.draw(st.integers(0, 12))] + data.draw(st.binary(max_size=1))
        assert view.startswith(prefix) == whole.startswith(prefix)
        assert view.startswith((b"\x00", prefix)) == whole.startswith((b"\x00", prefix))


def test_the_last_place_is_found_across_the_blocks_a_search_reads() -> None:
    # Given bytes of a few blocks, and a view of them
    whole = _bytes(3 * BLOCK + 7, 1)
    view = _view(whole)
    # When the last place of a few of its bytes is searched for, wherever they are near where
    # a search from the end reads its next block, from any start before them
    # Then it is the place the bytes give
    for blocks in (1, 2, 3):
        for offset in range(-6, 6):
            place = len(whole) - blocks * BLOCK + offset
            for length in (1, 2, 3, 4):
                sub = whole[place : place + length]
                for start in (0, place - 1, place):
                    assert view.rfind(sub, start) == whole.rfind(sub, start), (place, length)


#: images a provider may answer, of each type, small and spanning the view's blocks
IMAGES = (
    make_png(5, 3),
    noisy_png(160, 160),
    JPEG_1x1,
    JPEG_1x1[:-2] + bytes(2 * BLOCK) + JPEG_1x1[-2:],
    WEBP_1x1,
    GIF_1x1,
    GIF_1x1 + bytes(BLOCK),
)
MIMES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", None)


def _outcome(check: object) -> tuple[object, ...]:
    assert callable(check)
    try:
        image: DataUri = check()
    except GatewayError as exc:
        return (type(exc).__name__, exc.code, exc.message)
    return (image.mime, image.width, image.height, image.head, b"".join(image.payload()))


@settings(max_examples=80, deadline=None)
@given(
    image=st.sampled_from(IMAGES),
    mime=st.sampled_from(MIMES),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    writes=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=4)), max_size=3),
    tail=st.binary(max_size=8),
    limit=st.sampled_from((10, 5_000, 10_000_000)),
)
def test_any_answer_is_checked_as_decoding_checks_it(
    image: bytes,
    mime: str | None,
    cut: float | None,
    writes: list[tuple[float, bytes]],
    tail: bytes,
    limit: int,
) -> None:
    # Given a provider's image cut short, overwritten and padded anywhere, declared as any type
    data = bytearray(image if cut is None else image[: int(len(image) * cut)])
    for where, text in writes:
        at = int(len(data) * where)
        data[at : at + len(text)] = text
    data += tail
    declared = f"data:{mime};base64," if mime else "data:;base64,"
    uri = declared + base64.b64encode(bytes(data)).decode()

    # When it is checked to be passed on as data, Then it is the same image, byte for byte,
    # or the same refusal in the same words, as when its bytes are decoded whole
    def passed() -> DataUri:
        return data_uri_image(uri, max_bytes=limit, what="generated image", limits=False)

    def decoded() -> DataUri:
        found = decode_data_uri(uri, max_bytes=limit, what="generated image", limits=False)
        return DataUri.of(found)

    assert _outcome(passed) == _outcome(decoded)
