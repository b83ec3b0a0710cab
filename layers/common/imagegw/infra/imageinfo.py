"""What an image file says it is, read from its own bytes without decoding it: its dimensions
from the header (PNG, JPEG, WebP, GIF) and whether the file is whole (a truncated PNG or
WebP, a JPEG without its end marker, a GIF without its trailer is not).

No image library: the headers are a few fixed fields, and reading them costs nothing beside the
upload itself (`imagegw.infra.media.check_image` calls it before anything is stored).

What is read is any `Readable`: the bytes, or a data URI's base64 read as them a part at a time
(`imagegw.infra.media.Base64View`: a provider's image passed on as data is checked without its
bytes made whole beside its URI).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final, Protocol, SupportsIndex, overload

_PNG: Final = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (the ones with dimensions): C0-CF but DHT, JPG and DAC
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length: TEM, RST0-7, SOI, EOI
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xDA)})


@dataclass(frozen=True)
class Facts:
    """An image's dimensions as its header declares them, and whether the file is whole."""

    width: int
    height: int
    whole: bool


class Readable(Protocol):
    """What is read of an image's bytes (`bytes` is one): its length, a byte, a slice, a
    prefix, and the last place of a few bytes."""

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, index: SupportsIndex, /) -> int: ...

    @overload
    def __getitem__(self, index: slice, /) -> bytes: ...

    def startswith(self, prefix: bytes | tuple[bytes, ...], /) -> bool: ...

    def rfind(self, sub: bytes, start: SupportsIndex, /) -> int: ...


#: bytes read at a time from the end of a GIF for its trailer
_TAIL: Final = 4096


class Unreadable(ValueError):
    """The header cannot be read (too short, or not what its type requires)."""


def facts(data: Readable, mime: str) -> Facts:
    """The header's facts of `data`, of the type `mime` its first bytes showed. Raises
    Unreadable when the header itself is cut or malformed."""
    try:
        if mime == "image/png":
            return _png(data)
        if mime == "image/jpeg":
            return _jpeg(data)
        if mime == "image/webp":
            return _webp(data)
        if mime == "image/gif":
            return _gif(data)
    except (struct.error, IndexError):
        raise Unreadable(mime) from None
    raise Unreadable(mime)


def _png(data: Readable) -> Facts:
    """IHDR first (its CRC right), then chunks up to IEND, each with all its bytes."""
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise Unreadable("png")
    width, height = struct.unpack(">II", data[16:24])
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) != crc:
        raise Unreadable("png")
    at, whole = 8, False
    while at + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        end = at + 12 + length
        if end > len(data):
            break
        if kind == b"IEND":
            whole = True
            break
        at = end
    return Facts(width, height, whole)


def _jpeg(data: Readable) -> Facts:
    """The first start-of-frame segment's dimensions; whole when an end marker follows the
    scan data."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise Unreadable("jpeg")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return Facts(width, height, data.rfind(b"\xff\xd9", at) > at)
        if marker == 0xDA:  # scan data before any frame header
            break
        at += 2 + length
    raise Unreadable("jpeg")


def _webp(data: Readable) -> Facts:
    """The canvas of an extended (VP8X) file, else the lossy or lossless frame's size; whole
    when the file holds as many bytes as its RIFF header says."""
    (size,) = struct.unpack("<I", data[4:8])
    whole = len(data) >= size + 8
    kind = data[12:16]
    if kind == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    elif kind == b"VP8L":
        if data[20] != 0x2F:
            raise Unreadable("webp")
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise Unreadable("webp")
        width, height = struct.unpack("<HH", data[26:30])
        width, height = width & 0x3FFF, height & 0x3FFF
    else:
        raise Unreadable("webp")
    return Facts(width, height, whole)


def _gif(data: Readable) -> Facts:
    """The logical screen's size; whole when the file ends with the trailer (0x3B)."""
    width, height = struct.unpack("<HH", data[6:10])
    return Facts(width, height, _last_not_nul(data) == 0x3B)


def _last_not_nul(data: Readable) -> int:
    """The last byte of `data` that is not NUL (-1: none), read _TAIL bytes at a time from the
    end (no copy of the whole)."""
    end = len(data)
    while end > 0:
        tail = data[max(0, end - _TAIL) : end].rstrip(b"\0")
        if tail:
            return tail[-1]
        end -= _TAIL
    return -1
