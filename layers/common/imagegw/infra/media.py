"""Input images: data-URI decoding, type detection by content, size checks, and the header's
dimensions and wholeness (`imagegw.infra.imageinfo`). A data URI whose image is passed on as
it came (`data_uri_image`) is checked from its base64 (`Base64View`), its bytes never whole."""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, SupportsIndex, overload

from imagegw.errors import InvalidRequestError, PayloadTooLargeError
from imagegw.infra.imageinfo import Readable, Unreadable, facts
from imagegw.infra.spans import TEXT_PART, text_parts

#: MIME type -> file extension, for the formats providers accept
EXTENSIONS: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
}

#: the longest side of an input image any model here takes (WebP's own limit is 16383)
MAX_SIDE: Final = 16384
#: the most pixels of an input image (a decoder's memory: 4 bytes each, 256 MiB)
MAX_PIXELS: Final = 64 * 1024 * 1024

#: bytes of an image encoded at a time into its data URI (a multiple of 3: no padding between;
#: 384 KiB, 512 KiB of base64, TEXT_PART: an answer holds the image and one such part)
URI_STEP: Final = TEXT_PART // 4 * 3
#: characters of a data URI passed on as it came written at a time (`DataUri.payload`): a part
#: is two copies, its slice and their bytes, so half of TEXT_PART holds what a part encoded
#: from an image's bytes holds
URI_PART: Final = TEXT_PART // 2
#: base64 characters of a data URI decoded at a time (a multiple of 4: whole groups; 64 KiB: the
#: slice and its bytes beside the URI and the image's buffer are small)
DECODE_STEP: Final = 1 << 16

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),", re.I)


def sniff_mime(data: Readable) -> str | None:
    """The image type told by the bytes themselves (PNG, JPEG, WEBP or GIF), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return None


class InlineImages(dict[str, Any]):
    """A provider request's JSON body that holds images' data URIs (`ImageBytes.data_uri`):
    encoded as any dict, but the provider client sends each long data URI in it as it is, a
    part at a time, not copied into the body's JSON text and its bytes (`imagegw.infra.spans`
    `spliced`, through `imagegw.infra.clients.JsonTemplate.request`). Any other body is a
    plain dict: nothing is looked for in it."""


@dataclass(frozen=True)
class ImageBytes:
    """A checked image: its bytes and the type its bytes show."""

    data: bytes
    mime: str
    #: the dimensions its header declares (0: not read)
    width: int = field(default=0, compare=False)
    height: int = field(default=0, compare=False)
    #: the data URI it was decoded from, when that is what its bytes encode to (`canonical_uri`)
    uri: str = field(default="", compare=False, repr=False)

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.mime]

    def data_uri(self) -> str:
        """The image as a `data:` URI: the one it was decoded from when that is canonical (a
        client's or a provider's, passed on: not encoded once more), else made from its bytes
        (`DataUri.text`)."""
        return self.uri or DataUri.of(self).text()


@dataclass(frozen=True, eq=False)
class DataUri:
    """An image an answer carries as a `data:` URI, never made into one text: its `head`, then
    its base64 `payload` written a part at a time, encoded URI_STEP bytes of the image at a
    time (or, for a provider's own URI of it, passed on as it is: `of`). An answer holds the
    image's bytes and a part, not the bytes and the whole URI's text beside them."""

    mime: str
    width: int
    height: int
    #: the image's bytes, or a data URI of them that is already what they encode to
    source: bytes | str

    @classmethod
    def of(cls, image: ImageBytes) -> DataUri:
        """`image` as a data URI: the one it was decoded from when that is canonical (a
        provider's base64 answer: not encoded once more), else its bytes."""
        return cls(image.mime, image.width, image.height, image.uri or image.data)

    @property
    def head(self) -> str:
        """The URI up to its payload: `data:<type>;base64,`."""
        return f"data:{self.mime};base64,"

    def payload_size(self) -> int:
        """The characters of the payload."""
        if isinstance(self.source, str):
            return len(self.source) - len(self.head)
        return 4 * -(-len(self.source) // 3)

    def payload(self) -> Iterator[bytes]:
        """The payload's ASCII bytes, a part (of URI_STEP bytes of the image, TEXT_PART
        characters of base64; of a URI passed on, URI_PART characters) at a time (a payload of
        `imagegw.infra.spans`)."""
        if isinstance(self.source, str):
            return text_parts(self.source, len(self.head), URI_PART)
        return self._encoded(self.source)

    @staticmethod
    def _encoded(data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        for at in range(0, len(view), URI_STEP):
            yield base64.b64encode(view[at : at + URI_STEP])

    def payload_text(self) -> str:
        """The payload as one text, for a value that must hold it whole (an answer not written
        around its payloads: a batch's output line): the copy `payload` avoids."""
        if isinstance(self.source, str):
            return self.source[len(self.head) :]
        return self._appended("")

    def text(self) -> str:
        """The whole URI as one text (see `payload_text`)."""
        return self.source if isinstance(self.source, str) else self._appended(self.head)

    def _appended(self, text: str) -> str:
        """`text` and the payload: its base64 appended a part at a time to the one text (which
        CPython grows in place), never the whole image's base64 as bytes beside it."""
        for part in self.payload():
            text += part.decode("ascii")
        return text


#: JPEG markers that start a frame (SOF0-SOF15 but DHT, JPG and DAC): they hold the size
_SOF: frozenset[int] = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, JPEG, WEBP or GIF header; None when not found."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if data.startswith((b"GIF87a", b"GIF89a")):
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_dimensions(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_dimensions(data)
    except struct.error:
        return None
    return None


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return int(width), int(height)
        at += 2 + int(length)
    return None


@dataclass(frozen=True)
class InputImage:
    """An input image as providers may need it: a URL they can fetch, and bytes when known."""

    url: str
    image: ImageBytes | None = None


def inlined(body: dict[str, Any], images: Iterable[InputImage]) -> dict[str, Any]:
    """A provider's JSON body as `InlineImages` when one of `images` went in it as a data URI
    (its bytes are held: `ImageBytes.data_uri`), else `body` itself."""
    return InlineImages(body) if any(i.image is not None for i in images) else body


def is_data_uri(ref: str) -> bool:
    return ref[:5].lower() == "data:"


def is_http_url(ref: str) -> bool:
    return ref[:7].lower() == "http://" or ref[:8].lower() == "https://"


def check_image(
    data: bytes, *, max_bytes: int, what: str = "image", limits: bool = True
) -> ImageBytes:
    """Check size, type and wholeness of raw image bytes, and (`limits`: an input image) that
    its declared dimensions are within what any model takes: a 400 `invalid_image` (a 413 when
    too many bytes) before anything is stored or sent."""
    mime, width, height = _checked(data, max_bytes=max_bytes, what=what, limits=limits)
    return ImageBytes(data, mime, width, height)


def _checked(data: Readable, *, max_bytes: int, what: str, limits: bool) -> tuple[str, int, int]:
    """`check_image`'s checks of `data`: its type and dimensions."""
    if len(data) == 0:
        raise InvalidRequestError(f"The {what} is empty.", code="invalid_image")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"The {what} is {len(data)} bytes; the limit is {max_bytes} bytes.",
            code="image_too_large",
        )
    mime = sniff_mime(data)
    if mime is None:
        raise InvalidRequestError(
            f"The {what} is not a PNG, JPEG, WEBP or GIF image.", code="invalid_image"
        )
    kind = EXTENSIONS[mime].upper()
    try:
        found = facts(data, mime)
    except Unreadable:
        raise InvalidRequestError(
            f"The {what} has an unreadable {kind} header.", code="invalid_image"
        ) from None
    if not found.whole:
        raise InvalidRequestError(
            f"The {what} is cut short: not a whole {kind} file.", code="invalid_image"
        )
    if found.width < 1 or found.height < 1:
        raise InvalidRequestError(f"The {what} declares no pixels.", code="invalid_image")
    if limits and (
        max(found.width, found.height) > MAX_SIDE or found.width * found.height > MAX_PIXELS
    ):
        raise InvalidRequestError(
            f"The {what} is {found.width}x{found.height} pixels; images up to {MAX_SIDE} "
            f"pixels a side and {MAX_PIXELS // 2**20} megapixels are taken.",
            code="image_dimensions_too_large",
        )
    return mime, found.width, found.height


def decode_data_uri(
    uri: str, *, max_bytes: int, what: str = "image", limits: bool = True
) -> ImageBytes:
    """Decode a `data:image/...;base64,...` URI and check what it holds."""
    start = _payload_start(uri, max_bytes=max_bytes, what=what)
    data = plain_base64(uri, start)
    if data is None:
        try:  # else as before: line breaks dropped, then only base64 characters taken
            data = base64.b64decode("".join(uri[start:].split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(
                f"The {what} has invalid base64 data.", code="invalid_image"
            ) from None
    image = check_image(data, max_bytes=max_bytes, what=what, limits=limits)
    return replace(image, uri=uri) if canonical_uri(uri, image) else image


def _payload_start(uri: str, *, max_bytes: int, what: str) -> int:
    """Where the payload of `uri`, a base64 data URI not too large for `max_bytes`, starts."""
    match = _DATA_URI.match(uri)
    if match is None or ";base64" not in match.group("params").lower():
        raise InvalidRequestError(
            f"The {what} is not a base64 data URI (expected data:image/png;base64,...).",
            code="invalid_image",
        )
    # a base64 payload of N chars decodes to about 3N/4 bytes: refuse huge ones before decoding
    if (len(uri) - match.end()) * 3 // 4 > max_bytes + 3:
        raise PayloadTooLargeError(
            f"The {what} is larger than the limit of {max_bytes} bytes.", code="image_too_large"
        )
    return match.end()


def data_uri_image(
    uri: str, *, max_bytes: int, what: str = "image", limits: bool = True
) -> DataUri:
    """The image a data URI carries, checked as `decode_data_uri` checks it (the same
    refusals), to be passed on as a data URI: when `uri` is canonical (`canonical_uri`), it
    is checked from its base64 (`Base64View`) and passed on as it is, its bytes never made
    whole beside it; else decoded (`decode_data_uri`) and its bytes passed on."""
    start = _payload_start(uri, max_bytes=max_bytes, what=what)
    view = Base64View.of(uri, start)
    if view is not None:
        mime = sniff_mime(view)
        head = f"data:{mime};base64,"
        if mime is not None and start == len(head) and uri.startswith(head):
            found, width, height = _checked(view, max_bytes=max_bytes, what=what, limits=limits)
            return DataUri(found, width, height, uri)
    return DataUri.of(decode_data_uri(uri, max_bytes=max_bytes, what=what, limits=limits))


class Base64View:
    """The bytes a plain base64 payload (`text[start:]`) encodes, read as `bytes` are
    (`imagegw.infra.imageinfo.Readable`) without being decoded whole: a slice decodes only its
    own characters (the last BLOCK of bytes read is kept: a header's walk reads near places)."""

    #: bytes decoded at a time for a read within one block (a multiple of 3)
    BLOCK: Final = DECODE_STEP // 4 * 3

    __slots__ = ("_block", "_cached", "size", "start", "text")

    def __init__(self, text: str, start: int, size: int) -> None:
        self.text, self.start, self.size = text, start, size
        self._block, self._cached = -1, b""

    @classmethod
    def of(cls, text: str, start: int) -> Base64View | None:
        """The view of `text[start:]` when it is plain base64 (as `plain_base64` takes it: its
        whole checked, a part at a time), else None."""
        size = _plain_size(text, start)
        if size is None:
            return None
        try:
            found = sum(len(part) for part in _plain_parts(text, start))
        except ValueError:
            return None
        return cls(text, start, size) if found == size else None

    def __len__(self) -> int:
        return self.size

    def _decoded(self, first: int, end: int) -> bytes:
        """Bytes `first` to `end` (0 <= first <= end <= size)."""
        if first >= end:
            return b""
        block = first // self.BLOCK
        if (end - 1) // self.BLOCK == block:
            if block != self._block:
                at = self.start + block * DECODE_STEP
                self._cached = binascii.a2b_base64(self.text[at : at + DECODE_STEP])
                self._block = block
            base = block * self.BLOCK
            return self._cached[first - base : end - base]
        group = first // 3
        chars = self.text[self.start + group * 4 : self.start + -(-end // 3) * 4]
        return binascii.a2b_base64(chars)[first - group * 3 : end - group * 3]

    @overload
    def __getitem__(self, index: SupportsIndex, /) -> int: ...

    @overload
    def __getitem__(self, index: slice, /) -> bytes: ...

    def __getitem__(self, index: SupportsIndex | slice, /) -> int | bytes:
        if isinstance(index, slice):
            first, end, step = index.indices(self.size)
            if step != 1:
                raise ValueError("a step is not read")
            return self._decoded(first, max(first, end))
        at = index.__index__()
        if at < 0:
            at += self.size
        if not 0 <= at < self.size:
            raise IndexError("index out of range")
        return self._decoded(at, at + 1)[0]

    def startswith(self, prefix: bytes | tuple[bytes, ...], /) -> bool:
        prefixes = prefix if isinstance(prefix, tuple) else (prefix,)
        return any(self[: len(p)] == p for p in prefixes)

    def rfind(self, sub: bytes, start: SupportsIndex, /) -> int:
        """The last place of `sub` at or after `start` (-1: none), read BLOCK bytes at a time
        from the end."""
        first = max(0, start.__index__())
        end = self.size
        while end - first >= len(sub):
            at = max(first, end - self.BLOCK)
            found = self._decoded(at, end).rfind(sub)
            if found >= 0:
                return at + found
            if at == first:
                break
            end = at + len(sub) - 1
        return -1


def plain_base64(text: str, start: int) -> bytes | None:
    """The bytes of `text[start:]` when it is plain base64 (no line breaks, padding only at its
    end; checked as it is decoded), else None. Decoded DECODE_STEP characters at a time into
    the one buffer the bytes end in: neither the payload nor the bytes are copied whole (a
    slice of the text would be a copy of the payload, and joined parts a second of the bytes)."""
    size = _plain_size(text, start)
    if size is None:
        return None
    if size <= 0:
        return b""
    out = io.BytesIO()
    out.seek(size - 1)
    out.write(b"\0")  # the buffer sized once; getvalue() gives it without a copy
    out.seek(0)
    try:
        for part in _plain_parts(text, start):
            out.write(part)
    except ValueError:
        return None
    return out.getvalue() if out.tell() == size else None


def _plain_size(text: str, start: int) -> int | None:
    """The bytes `text[start:]` encodes if it is plain base64; None when it cannot be."""
    chars = len(text) - start
    if chars % 4:
        return None
    return chars // 4 * 3 - (2 if text.endswith("==") else 1 if text.endswith("=") else 0)


def _plain_parts(text: str, start: int) -> Iterator[bytes]:
    """The bytes of `text[start:]`, DECODE_STEP characters at a time; a ValueError where it
    is not plain base64 (padding inside it, a character out of the alphabet)."""
    for at in range(start, len(text), DECODE_STEP):
        part = text[at : at + DECODE_STEP]
        if at + DECODE_STEP < len(text) and part.endswith("="):
            raise ValueError("padding inside the payload")
        yield binascii.a2b_base64(part, strict_mode=True)  # (binascii.Error: a ValueError)


def canonical_uri(uri: str, image: ImageBytes) -> bool:
    """Whether `uri`, a data URI that decoded to `image`, is exactly what its bytes encode to:
    its declared type is the one the bytes show and its payload is plain base64 of their length
    (no line breaks, no padding but at its end). Such a URI can be passed on as it is instead
    of being encoded again."""
    head = f"data:{image.mime};base64,"
    start = len(head)
    return (
        uri.startswith(head)
        and len(uri) - start == 4 * -(-len(image.data) // 3)
        and uri.find("=", start, len(uri) - 2) < 0
    )


def decode_refs(refs: Sequence[str], *, max_bytes: int) -> tuple[str | ImageBytes, ...]:
    """Data URIs decoded and checked; http(s) URLs kept as they are (the provider fetches them)."""
    many = len(refs) > 1
    return tuple(
        decode_data_uri(ref, max_bytes=max_bytes, what=f"image {i + 1}" if many else "image")
        if is_data_uri(ref)
        else ref
        for i, ref in enumerate(refs)
    )
