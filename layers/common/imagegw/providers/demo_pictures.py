"""The demo provider's pictures, drawn with Pillow (`imagegw.providers.demo`).

Imported on the demo's first picture, not with the provider registry: a gateway that never
serves the demo never imports Pillow (docs/architecture.md "Cold start and memory"). Every
function takes and gives bytes; the same arguments give the same pixels.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, UnidentifiedImageError

from imagegw.errors import InvalidRequestError


def _hue(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, size))


def _gradient(
    width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]
) -> Image.Image:
    column = Image.linear_gradient("L").resize((1, height))
    base = Image.new("RGB", (width, height), top)
    return Image.composite(
        Image.new("RGB", (width, height), bottom), base, column.resize((width, height))
    )


def _shape(
    draw: ImageDraw.ImageDraw, kind: str, rng: random.Random, size: tuple[int, int], hue: float
) -> None:
    width, height = size
    unit = min(width, height)
    color = (
        *_rgb(hue + rng.uniform(-0.25, 0.25), rng.uniform(0.45, 0.95), rng.uniform(0.55, 1.0)),
        rng.randint(110, 220),
    )
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    radius = unit * rng.uniform(0.05, 0.22)
    if kind == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
    elif kind == "rectangle":
        draw.rounded_rectangle(
            (x - radius, y - radius * 0.6, x + radius, y + radius * 0.6),
            radius=radius / 5,
            fill=color,
        )
    elif kind == "triangle":
        turn = rng.uniform(0, 2 * math.pi)
        corners = [
            (
                x + radius * math.cos(turn + k * 2 * math.pi / 3),
                y + radius * math.sin(turn + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
        draw.polygon(corners, fill=color)
    else:  # a wave across the picture
        amplitude, phase = height * rng.uniform(0.03, 0.12), rng.uniform(0, 2 * math.pi)
        period = width * rng.uniform(0.3, 0.9)
        points = [
            (px, y + amplitude * math.sin(phase + 2 * math.pi * px / period))
            for px in range(0, width + 8, 8)
        ]
        draw.line(
            points, fill=color, width=max(2, round(unit * rng.uniform(0.01, 0.05))), joint="curve"
        )


def _caption(picture: Image.Image, prompt: str, seed: int) -> None:
    width, height = picture.size
    size = max(10, min(width, height) // 22)
    font = _font(size)
    text = " ".join(prompt.split())
    limit = max(8, int(width / (size * 0.55)))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    band = Image.new("RGBA", (width, size * 2 + 8), (0, 0, 0, 130))
    picture.paste(band, (0, height - band.height), band)
    draw = ImageDraw.Draw(picture)
    draw.text((size // 2, height - band.height + 4), text, fill=(255, 255, 255), font=font)
    draw.text(
        (size // 2, height - band.height + size + 6),
        f"demo · seed {seed}",
        fill=(220, 220, 220),
        font=_font(size * 3 // 4),
    )


def draw(
    model: str,
    shapes: Sequence[str],
    count: tuple[int, int],
    prompt: str,
    seed: int,
    size: tuple[int, int],
) -> bytes:
    """The picture (JPEG) of `prompt` by `model` with `seed`, drawn with `count` of `shapes`:
    the same arguments, the same pixels."""
    rng = random.Random(f"{model}\n{prompt}\n{seed}")
    hue = _hue(prompt)
    top = _rgb(hue + rng.uniform(-0.08, 0.08), 0.55, 0.95)
    bottom = _rgb(hue + 0.5 + rng.uniform(-0.1, 0.1), 0.7, 0.35)
    picture = _gradient(*size, top, bottom)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(layer)
    for _ in range(rng.randint(*count)):
        _shape(pen, rng.choice(shapes), rng, size, hue)
    picture = Image.alpha_composite(picture.convert("RGBA"), layer)
    _caption(picture, prompt, seed)
    return _jpeg(picture.convert("RGB"))


def edit(data: bytes, prompt: str, seed: int, size: tuple[int, int]) -> bytes:
    """The picture `data` (a readable image) transformed by `prompt`, as a JPEG: fitted to
    `size`, mirrored, recoloured in the prompt's hue, a few circles over it, framed and
    captioned."""
    source = _open(data, 1)
    rng = random.Random(f"edit\n{prompt}\n{seed}")
    hue = _hue(prompt)
    fitted = ImageOps.fit(
        ImageOps.exif_transpose(source).convert("RGB"), size, Image.Resampling.LANCZOS
    )
    fitted = ImageOps.mirror(fitted).filter(ImageFilter.SMOOTH)
    tinted = ImageOps.colorize(
        ImageOps.grayscale(fitted), black=_rgb(hue + 0.5, 0.8, 0.15), white=_rgb(hue, 0.35, 1.0)
    )
    picture = Image.blend(fitted, tinted, 0.7).convert("RGBA")
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(layer)
    for _ in range(rng.randint(3, 6)):
        _shape(pen, "circle", rng, size, hue)
    border = max(4, min(size) // 40)
    pen.rectangle(
        (0, 0, size[0] - 1, size[1] - 1), outline=(*_rgb(hue, 0.8, 0.9), 255), width=border
    )
    picture = Image.alpha_composite(picture, layer)
    _caption(picture, prompt, seed)
    return _jpeg(picture.convert("RGB"))


def _jpeg(picture: Image.Image, quality: int = 88) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _open(data: bytes, index: int) -> Image.Image:
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidRequestError(
            f"Input image {index} could not be read as a picture.",
            param="image",
            code="invalid_image",
        ) from None
    return picture


def check_readable(data: bytes, index: int) -> None:
    """A 400 naming input image `index` when `data` cannot be read as a picture."""
    _open(data, index)
