"""Volcengine Ark (BytePlus ModelArk) Seedream / SeedEdit image generation (synchronous).

Upstream docs: https://www.volcengine.com/docs/82379/1541523 (ModelArk:
https://docs.byteplus.com/en/docs/ModelArk/1541523)
Protocol (see shared/docs/provider-wire.md): `POST /images/generations`, OpenAI-like, answers
when the images are made: `{model, created, data:[{url, size}], usage:{generated_images}}`;
links are signed for 24 h. Body `{model, prompt, image (a URL or data URI, or a list of them for
Seedream 4's references), size ("1K"|"2K"|"4K" or "WxH"), response_format, seed, watermark,
sequential_image_generation}`. Errors are OpenAI's `{error:{code, message, param, type}}`;
moderation refusals carry codes such as `OutputImageSensitiveContentDetected` (a 400 here).
BytePlus ModelArk (international) is `https://ark.ap-southeast.bytepluses.com/api/v3`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from imagegw.errors import InvalidRequestError, ProviderError
from imagegw.infra.lazy import httpx
from imagegw.infra.media import inlined
from imagegw.providers.base import (
    Finished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    check_image_count,
)
from imagegw.providers.options import as_float, as_int, common_options, option_names, parse_size
from imagegw.providers.sizes import STEP, SizeLimits
from imagegw.providers.tasks import TaskProvider, refusal, task_settings
from imagegw.providers.upstream import image_answer_limit, send, unreachable, work_timeout

#: sizes Seedream 4 takes by name
NAMED_SIZES: Final = frozenset({"1K", "2K", "4K"})
MAX_SEED: Final = 2_147_483_647
#: moderation codes (input text, input image, output image)
SENSITIVE: Final = "SensitiveContentDetected"


class ModelSpec(NamedTuple):
    """What an Ark model takes (a record read by its fields: a NamedTuple costs the
    cold start a third of what a frozen dataclass costs to define)."""

    kind: ModelKind
    #: fewest and most reference images
    images: tuple[int, int]
    #: side range, and the fewest pixels a picture may have (Seedream 4: 1280x720)
    sides: tuple[int, int] | None
    min_pixels: int = 0
    #: takes `1K`/`2K`/`4K`
    named: bool = False
    #: takes guidance (`guidance_scale`)
    guidance: bool = False


MODELS: Final[dict[str, ModelSpec]] = {
    "doubao-seedream-4-0-250828": ModelSpec(
        ModelKind.GENERATE, (0, 10), (480, 4096), min_pixels=1280 * 720, named=True
    ),
    "doubao-seedream-3-0-t2i-250415": ModelSpec(
        ModelKind.GENERATE, (0, 0), (512, 2048), guidance=True
    ),
    "doubao-seededit-3-0-i2i-250628": ModelSpec(ModelKind.EDIT, (1, 1), None, guidance=True),
}
#: ids not listed: Seedream 4's way (the newer models take references and named sizes)
OTHER: Final = MODELS["doubao-seedream-4-0-250828"]


def spec_of(model: str) -> ModelSpec:
    return next((s for m, s in MODELS.items() if m.lower() == model.lower()), OTHER)


def _at_least(width: int, height: int, pixels: int, hi: int) -> tuple[int, int]:
    """The size scaled up (shape kept) to at least `pixels`, sides multiples of 16."""
    if width * height >= pixels:
        return width, height
    scale = math.sqrt(pixels / (width * height))
    sides = [math.ceil(width * scale / STEP) * STEP, math.ceil(height * scale / STEP) * STEP]
    return min(hi, sides[0]), min(hi, sides[1])


class Ark(TaskProvider):
    name = "ark"
    title = "Volcengine Ark"
    settings_model = task_settings("ark", "https://ark.cn-beijing.volces.com/api/v3")
    catalog = (
        ModelInfo("doubao-seedream-4-0-250828", ModelKind.GENERATE),
        ModelInfo("doubao-seedream-3-0-t2i-250415", ModelKind.GENERATE),
        ModelInfo("doubao-seededit-3-0-i2i-250628", ModelKind.EDIT),
    )
    own_fields = frozenset({"watermark"})

    def classify(self, model: str) -> ModelKind:
        """Every Ark image model id names seedream/seededit; others are by their words."""
        if "seededit" in model.lower():
            return ModelKind.EDIT
        return super().classify(model)

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits | None:
        spec = spec_of(model)
        if spec.sides is None:
            return None  # SeedEdit keeps the input's size ("adaptive")
        side = 2048 if spec.named else 1024
        return SizeLimits(*spec.sides, default=(side, side))

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        unused = {"negative_prompt", "steps", "loras"}
        spec = spec_of(model)
        if not spec.guidance:
            unused.add("guidance")
        if spec.sides is None:
            unused.add("size")
        return frozenset(unused)

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        spec = spec_of(model)
        check_image_count(model, image_count, *spec.images)
        opts = common_options(fields)
        names = option_names(fields)
        body: dict[str, Any] = {}
        size = opts.get("size")
        if isinstance(size, str) and size.strip().upper() in NAMED_SIZES and spec.named:
            body["size"] = size.strip().upper()
        elif size is not None and spec.sides is not None:
            lo, hi = spec.sides
            width, height = parse_size(names["size"], size, lo, hi)
            width, height = _at_least(width, height, spec.min_pixels, hi)
            body["size"] = f"{width}x{height}"
        elif spec.sides is None:
            body["size"] = "adaptive"
        if "seed" in opts:
            body["seed"] = as_int(names["seed"], opts["seed"], -1, MAX_SEED)
        if "guidance" in opts and spec.guidance:
            body["guidance_scale"] = as_float(names["guidance"], opts["guidance"], 1.0, 10.0)
        if fields.get("watermark") is not None:
            if not isinstance(fields["watermark"], bool):
                raise InvalidRequestError("'watermark' must be true or false.", param="watermark")
            body["watermark"] = fields["watermark"]
        return body

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The call's body: one image a call (`n` is made by one call an image)."""
        body: dict[str, Any] = {
            "model": request.model,
            "prompt": request.prompt,
            "response_format": "url",
            **request.options,
        }
        if spec_of(request.model).named:
            body["sequential_image_generation"] = "disabled"  # exactly one picture
        # bytes the gateway holds go inline: the service need not fetch a presigned URL
        images = [i.image.data_uri() if i.image is not None else i.url for i in request.images]
        if len(images) == 1:
            body["image"] = images[0]
        elif images:
            body["image"] = images
        return inlined(body, request.images)

    async def start(self, request: GenerationRequest) -> Finished:
        try:
            response = await send(  # the answer may hold the images themselves (b64_json)
                self.client,
                "POST",
                f"{self.base_url}/images/generations",
                title=self.title,
                deadline=self.settings.generation_timeout,
                limit=image_answer_limit(self.settings),
                json=self.body(request),
                headers=self._headers(request),
                timeout=work_timeout(self.settings),
            )
        except httpx.TransportError as exc:
            raise unreachable(self.title, exc, self.settings) from None
        if response.status_code != 200:
            raise refusal(self.title, response, request.api_key, lambda code: SENSITIVE in code)
        try:
            data = response.json().get("data") or []
        except (ValueError, AttributeError):
            data = []
        urls = tuple(
            d["url"] for d in data if isinstance(d, dict) and isinstance(d.get("url"), str)
        )
        if not urls:
            raise ProviderError("Volcengine Ark answered without an image.", code="provider_error")
        return Finished(urls)
