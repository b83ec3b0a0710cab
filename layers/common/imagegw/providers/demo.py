"""The demo provider: real pictures made offline, for trying the gateway without a token.

Route prefix `/demo/v1/...`. It calls no API: each picture is drawn with Pillow from the prompt,
the model, the size and the seed, so the same request with the same seed gives the same
picture, and each of `n` images differs (image `i` of a request with seed `s` is drawn with
seed `s + i`; without a seed each image gets a random one). An edit model transforms its input
image (recoloured by the prompt, mirrored, framed and captioned).

It behaves like an asynchronous provider (ModelScope's start/check): `start` answers a task id,
`check` answers PENDING for a moment, then RUNNING for a few seconds, then the picture. The task
id carries everything `check` needs (when it started, the seed, the size; for an edit a small
copy of the input), so any instance answers for it: the in-process poll loop and the durable
jobs' Poll step alike (Poll knows the request's prompt and options, not its input images).

Off unless DEMO_PROVIDER=enabled (`make run` turns it on; a stack by its `DemoProvider`
parameter). It needs no provider token (`Provider.needs_token`): a request without one is
served, a gateway key is still checked (and counted) as for any provider.
"""

from __future__ import annotations

import base64
import binascii
import colorsys
import hashlib
import io
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final

import anyio
import httpx
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, UnidentifiedImageError

from imagegw.errors import InvalidRequestError
from imagegw.infra.config import ProviderSetting, Settings
from imagegw.infra.fetcher import Fetcher, FetchError
from imagegw.infra.media import check_image
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    InputImage,
    ModelInfo,
    ModelKind,
    Provider,
    Running,
    Started,
    TaskStatus,
    check_image_count,
)
from imagegw.providers.options import as_int, as_text, common_options, option_names, parse_size
from imagegw.providers.sizes import SizeLimits

#: what the provider is given as a key when the client sent none (never sent anywhere)
NO_TOKEN: Final = "demo"  # noqa: S105 (not a secret: the placeholder of none)
MAX_TEXT: Final = 2000
MAX_SEED: Final = 2**31 - 1
MAX_INPUT_IMAGES: Final = 3
SIDES: Final = (64, 2048)
DEFAULT_SIDE: Final = 1024
#: seconds a task says PENDING before it runs
QUEUED_FOR: Final = 0.8
#: the side of the copy of an edit's input kept in the task id
THUMB_SIDE: Final = 48
_PREFIX: Final = "demo1"


@dataclass(frozen=True)
class Style:
    """How a model draws: its shapes and how many."""

    shapes: tuple[str, ...]
    count: tuple[int, int]
    #: seconds a task runs (after its queued moment)
    seconds: float


STYLES: Final[Mapping[str, Style]] = {
    "demo/shapes": Style(("circle", "rectangle", "triangle"), (9, 16), 3.0),
    "demo/waves": Style(("wave",), (5, 9), 2.0),
    "demo/edit": Style(("circle",), (3, 6), 3.0),
}


def enabled(settings: Settings) -> bool:
    """Whether the deployment serves the demo (DEMO_PROVIDER, the gateway's own setting)."""
    return settings.demo_provider == "enabled"


@dataclass(frozen=True)
class Task:
    """What a task id holds."""

    started_ms: int
    seed: int
    width: int
    height: int
    thumb: bytes = b""

    def encode(self) -> str:
        thumb = base64.urlsafe_b64encode(self.thumb).decode("ascii").rstrip("=")
        return f"{_PREFIX}-{self.started_ms}-{self.seed}-{self.width}x{self.height}-{thumb}"

    @classmethod
    def decode(cls, task_id: str) -> Task | None:
        parts = task_id.split("-", 4)
        if len(parts) != 5 or parts[0] != _PREFIX:
            return None
        try:
            width, height = (int(side) for side in parts[3].split("x", 1))
            thumb = base64.urlsafe_b64decode(parts[4] + "=" * (-len(parts[4]) % 4))
            return cls(int(parts[1]), int(parts[2]), width, height, thumb)
        except (ValueError, binascii.Error):
            return None


def _hue(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, size))


def _gradient(width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]):  # type: ignore[no-untyped-def]
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


def draw_picture(model: str, prompt: str, seed: int, size: tuple[int, int]) -> Image.Image:
    """The picture of `prompt` by `model` with `seed`: the same arguments, the same pixels."""
    style = STYLES.get(model, STYLES["demo/shapes"])
    rng = random.Random(f"{model}\n{prompt}\n{seed}")
    hue = _hue(prompt)
    top = _rgb(hue + rng.uniform(-0.08, 0.08), 0.55, 0.95)
    bottom = _rgb(hue + 0.5 + rng.uniform(-0.1, 0.1), 0.7, 0.35)
    picture = _gradient(*size, top, bottom)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.randint(*style.count)):
        _shape(draw, rng.choice(style.shapes), rng, size, hue)
    picture = Image.alpha_composite(picture.convert("RGBA"), layer)
    _caption(picture, prompt, seed)
    return picture.convert("RGB")


def edit_picture(source: Image.Image, prompt: str, seed: int, size: tuple[int, int]) -> Image.Image:
    """`source` transformed by `prompt`: fitted to `size`, mirrored, recoloured in the prompt's
    hue, a few shapes over it, framed and captioned."""
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
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.randint(*STYLES["demo/edit"].count)):
        _shape(draw, "circle", rng, size, hue)
    border = max(4, min(size) // 40)
    draw.rectangle(
        (0, 0, size[0] - 1, size[1] - 1), outline=(*_rgb(hue, 0.8, 0.9), 255), width=border
    )
    picture = Image.alpha_composite(picture, layer)
    _caption(picture, prompt, seed)
    return picture.convert("RGB")


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


class Demo(Provider):
    name = "demo"
    title = "Demo"
    max_prompt_chars = MAX_TEXT
    needs_token: ClassVar[bool] = False
    catalog = tuple(
        ModelInfo(
            model,
            ModelKind.EDIT if model.endswith("edit") else ModelKind.GENERATE,
            seconds=QUEUED_FOR + style.seconds,
        )
        for model, style in STYLES.items()
    )

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, fetcher: Fetcher | None = None
    ) -> None:
        super().__init__(settings, client, fetcher)
        #: the clock task ids are stamped with (seconds; tests step it)
        self.clock: Callable[[], float] = time.time

    @classmethod
    def declared_settings(cls) -> tuple[ProviderSetting, ...]:
        return ()  # it calls no API; its switch is the gateway's own (DEMO_PROVIDER)

    @property
    def base_url(self) -> str:
        return ""

    @classmethod
    def available(cls, settings: Settings) -> bool:
        return enabled(settings)

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits:
        return SizeLimits(*SIDES, default=(DEFAULT_SIDE, DEFAULT_SIDE))

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        return frozenset({"steps", "guidance", "loras"})

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        check_image_count(
            model,
            image_count,
            1 if kind is ModelKind.EDIT else 0,
            0 if kind is ModelKind.GENERATE else MAX_INPUT_IMAGES,
        )
        opts = common_options(fields)
        names = option_names(fields)
        body: dict[str, Any] = {}
        if "negative_prompt" in opts:
            body["negative_prompt"] = as_text("negative_prompt", opts["negative_prompt"], MAX_TEXT)
        if "size" in opts:
            body["size"] = "{}x{}".format(*parse_size(names["size"], opts["size"], *SIDES))
        if "seed" in opts:
            body["seed"] = as_int(names["seed"], opts["seed"], 0, MAX_SEED)
        return body

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        """One call an image; with a seed `s`, image `i` is drawn with `s + i` (each differs,
        the same request gives the same pictures)."""
        parts = super().split(request)
        seed = request.options.get("seed")
        if seed is None:
            return parts
        return [
            replace(part, options={**part.options, "seed": (int(seed) + i) % (MAX_SEED + 1)})
            for i, part in enumerate(parts)
        ]

    def _size(self, request: GenerationRequest) -> tuple[int, int]:
        size = request.options.get("size")
        if size is None:
            return DEFAULT_SIDE, DEFAULT_SIDE
        return parse_size("size", size, *SIDES)

    async def _input(self, image: InputImage, index: int) -> Image.Image:
        """An input image: its bytes when uploaded, else downloaded by the guarded fetcher."""
        data = image.image.data if image.image is not None else None
        if data is None:
            try:
                fetched = await self.fetcher.fetch(image.url, limit=self.settings.max_image_bytes)
            except FetchError:
                raise InvalidRequestError(
                    f"Input image {index} could not be downloaded from its URL.",
                    param="image",
                    code="invalid_image",
                ) from None
            data = check_image(fetched, max_bytes=self.settings.max_image_bytes).data
        return _open(data, index)

    async def start(self, request: GenerationRequest) -> Started:
        seed = request.options.get("seed")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        width, height = self._size(request)
        thumb = b""
        if request.images:
            source = await self._input(request.images[0], 1)
            small = ImageOps.exif_transpose(source).convert("RGB")
            small.thumbnail((THUMB_SIDE, THUMB_SIDE))
            thumb = _jpeg(small, quality=70)
        started = round(self.clock() * 1000)
        return Started(Task(started, int(seed), width, height, thumb).encode())

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        task = Task.decode(task_id)
        if task is None:
            return Failed(f"'{task_id[:40]}' is not a demo task")
        elapsed = self.clock() - task.started_ms / 1000
        style = STYLES.get(request.model, STYLES["demo/shapes"])
        if elapsed < QUEUED_FOR:
            return Running("PENDING")
        if elapsed < QUEUED_FOR + style.seconds:
            return Running("RUNNING")
        size = (task.width, task.height)
        source: Image.Image | None = None
        if request.images:  # the whole input, where the caller still has it
            source = await self._input(request.images[0], 1)
        elif task.thumb:
            source = _open(task.thumb, 1)

        def paint() -> bytes:  # CPU work: off the event loop
            if source is not None:
                return _jpeg(edit_picture(source, request.prompt, task.seed, size))
            return _jpeg(draw_picture(request.model, request.prompt, task.seed, size))

        data = base64.b64encode(await anyio.to_thread.run_sync(paint)).decode("ascii")
        return Finished((f"data:image/jpeg;base64,{data}",))
