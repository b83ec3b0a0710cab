"""The demo provider: real pictures made offline, for trying the gateway without a token.

Route prefix `/demo/v1/...`. It calls no API: each picture is drawn with Pillow from the prompt,
the model, the size and the seed, so the same request with the same seed gives the same
picture, and each of `n` images differs (image `i` of a request with seed `s` is drawn with
seed `s + i`; without a seed each image gets a random one). An edit model transforms its input
image (recoloured by the prompt, mirrored, framed and captioned).

It behaves like an asynchronous provider (ModelScope's start/check): `start` answers a task id,
`check` answers PENDING for a moment, then RUNNING for a few seconds, then the picture. The task
id carries what `check` needs besides the request (when it started, the seed, the size), so any
instance answers for it: the in-process poll loop and the durable jobs' Poll step alike. An
edit's input stays where the request keeps it (the client's upload or URL, a job's copy in the
bucket, which Poll reads for this provider: `Provider.checks_with_inputs`), not in the id.

Off unless DEMO_PROVIDER=enabled (`make run` turns it on; a stack by its `DemoProvider`
parameter). It needs no provider token (`Provider.needs_token`): a request without one is
served, a gateway key is still checked (and counted) as for any provider.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio

from imagegw.errors import InvalidRequestError
from imagegw.infra.config import ProviderSettings, Settings
from imagegw.infra.lazy import httpx
from imagegw.infra.media import ImageBytes, InputImage, check_image
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
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

if TYPE_CHECKING:
    from imagegw.infra.fetcher import Fetcher

#: what the provider is given as a key when the client sent none (never sent anywhere)
NO_TOKEN: Final = "demo"  # noqa: S105 (not a secret: the placeholder of none)
MAX_TEXT: Final = 2000
MAX_SEED: Final = 2**31 - 1
MAX_INPUT_IMAGES: Final = 3
SIDES: Final = (64, 2048)
DEFAULT_SIDE: Final = 1024
#: seconds a task says PENDING before it runs
QUEUED_FOR: Final = 0.8
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

    def encode(self) -> str:
        return f"{_PREFIX}-{self.started_ms}-{self.seed}-{self.width}x{self.height}"

    @classmethod
    def decode(cls, task_id: str) -> Task | None:
        # a fifth part: an id made before edits' inputs left it (a copy of the input), unused
        parts = task_id.split("-", 4)
        if len(parts) not in (4, 5) or parts[0] != _PREFIX:
            return None
        try:
            width, height = (int(side) for side in parts[3].split("x", 1))
            return cls(int(parts[1]), int(parts[2]), width, height)
        except ValueError:
            return None


class DemoSettings(ProviderSettings):
    """None: the demo calls no API, and its switch is the gateway's own (DEMO_PROVIDER)."""


class Demo(Provider):
    name = "demo"
    title = "Demo"
    settings_model = DemoSettings
    max_prompt_chars = MAX_TEXT
    needs_token: ClassVar[bool] = False
    checks_with_inputs: ClassVar[bool] = True
    catalog = tuple(
        ModelInfo(
            model,
            ModelKind.EDIT if model.endswith("edit") else ModelKind.GENERATE,
            seconds=style.seconds,  # of RUNNING, as every prior
        )
        for model, style in STYLES.items()
    )

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, fetcher: Fetcher | None = None
    ) -> None:
        super().__init__(settings, client, fetcher)
        #: the clock task ids are stamped with (seconds; tests step it)
        self.clock: Callable[[], float] = time.time

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

    async def _input(self, image: InputImage, index: int) -> bytes:
        """An input image: its bytes when uploaded, else downloaded by the guarded fetcher."""
        from imagegw.infra.fetcher import FetchError

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
        return data

    async def start(self, request: GenerationRequest) -> Started:
        seed = request.options.get("seed")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        width, height = self._size(request)
        if request.images:  # an unreadable input is the client's 400 now, not a failed task
            from imagegw.providers import demo_pictures  # Pillow: on first use

            source = await self._input(request.images[0], 1)
            await anyio.to_thread.run_sync(demo_pictures.check_readable, source, 1)
        started = round(self.clock() * 1000)
        return Started(Task(started, int(seed), width, height).encode())

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
        from imagegw.providers import demo_pictures  # Pillow: on first use

        size = (task.width, task.height)
        source: bytes | None = None
        if request.images:
            source = await self._input(request.images[0], 1)

        def paint() -> bytes:  # CPU work: off the event loop
            if source is not None:
                return demo_pictures.edit(source, request.prompt, task.seed, size)
            return demo_pictures.draw(
                request.model, style.shapes, style.count, request.prompt, task.seed, size
            )

        painted = ImageBytes(await anyio.to_thread.run_sync(paint), "image/jpeg")
        return Finished((painted.data_uri(),))
