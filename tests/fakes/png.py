"""Tiny image helpers for tests: solid-colour PNGs built with zlib, and 1x1 sample files.

No Pillow: a PNG is written by hand (signature, IHDR, one IDAT, IEND, each with its CRC).
The 1x1 JPEG, GIF and WEBP byte strings are small valid files used to test format sniffing.
"""

from __future__ import annotations

import random
import struct
import zlib
from functools import lru_cache
from typing import Final

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC over type and payload."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@lru_cache(maxsize=32)
def make_png(width: int, height: int, rgb: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """A valid solid-colour 8-bit RGB PNG of ``width`` x ``height`` pixels."""
    if width <= 0 or height <= 0:
        raise ValueError(f"PNG dimensions must be positive, got {width}x{height}")
    if any(not 0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour components must be 0..255, got {rgb}")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    scanline = b"\x00" + bytes(rgb) * width  # filter type 0 (None), then the pixels
    idat = zlib.compress(scanline * height, 6)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@lru_cache(maxsize=4)
def noisy_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid 8-bit RGB PNG of random pixels: it does not compress (3 bytes a pixel and a
    little more), so a large picture is as large as real photos are."""
    rng = random.Random(seed)
    scanlines = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(scanlines, 1)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height read from a PNG's IHDR chunk; ``ValueError`` if ``data`` is no PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


# A 1x1 grey baseline JPEG: JFIF APP0, a flat quantisation table, SOF0 (one component),
# one-code DC and AC Huffman tables, and a scan holding a single block (DC diff 0, EOB).
JPEG_1x1: Final = (
    b"\xff\xd8"
    b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    b"\xff\xdb\x00\x43\x00" + b"\x01" * 64 + b"\xff\xc0\x00\x0b\x08\x00\x01\x00\x01\x01\x01\x11\x00"
    b"\xff\xc4\x00\x14\x00\x01" + b"\x00" * 15 + b"\x00"
    b"\xff\xc4\x00\x14\x10\x01" + b"\x00" * 15 + b"\x00"
    b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    b"\x3f"
    b"\xff\xd9"
)

# The classic 43-byte transparent 1x1 GIF89a.
GIF_1x1: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

# A 1x1 lossy WEBP (RIFF container, "VP8 " chunk), as used by browser feature detection.
WEBP_1x1: Final = (
    b'RIFF"\x00\x00\x00WEBPVP8 \x16\x00\x00\x000\x01\x00\x9d\x01*\x01\x00\x01\x00'
    b"\x0e\xc0\xfe%\xa4\x00\x03p\x00\x00\x00\x00"
)


def sniff_image(data: bytes) -> str | None:
    """The image format ("png", "jpeg", "gif", "webp") named by ``data``'s magic, else None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    return None
