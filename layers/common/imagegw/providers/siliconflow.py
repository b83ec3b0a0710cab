"""SiliconFlow image generation (synchronous).

Upstream docs: https://docs.siliconflow.cn/cn/api-reference/images/images-generations
Protocol (see shared/docs/provider-wire.md): `POST /images/generations` answers when the images
are made: `{"images":[{"url":...}],"timings":{...},"seed":...}`, with an
`x-siliconcloud-trace-id` header. Output URLs expire after one hour (IMAGE_LINKS=stored copies
them). Parameters and input-image counts differ by model (`MODELS`); the service ignores
parameters a model does not take. Error bodies are inconsistent (`imagegw.providers.upstream`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from imagegw.errors import GatewayError, InvalidRequestError, NotFoundError, ProviderError
from imagegw.infra.config import BaseUrl, ProviderSettings
from imagegw.infra.lazy import httpx
from imagegw.infra.log import logger
from imagegw.infra.media import inlined
from imagegw.providers.base import (
    Finished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Provider,
    check_image_count,
)
from imagegw.providers.options import (
    as_float,
    as_int,
    as_text,
    common_options,
    image_count,
    option_names,
    parse_size,
)
from imagegw.providers.sizes import SizeLimits
from imagegw.providers.upstream import error_for, send, unreachable, work_timeout

TRACE_HEADER: Final = "x-siliconcloud-trace-id"
#: the input-image fields, in order (`image2`/`image3` only on Qwen-Image-Edit-2509)
IMAGE_FIELDS: Final = ("image", "image2", "image3")
MAX_BATCH: Final = 4
MAX_SEED: Final = 9_999_999_999
#: steps: the wire doc's 1-100 (the API reference); seed 001's table says 1-50
MAX_STEPS: Final = 100
#: no documented limit on image sides: a sanity bound (the recommended sizes are far inside)
SIZE_RANGE: Final = (64, 2048)
#: no documented limit on the negative prompt: a sanity bound
MAX_NEGATIVE_PROMPT: Final = 10_000
#: error code of "Model does not exist" (a 400 that is really a 404)
NO_SUCH_MODEL: Final = 20012


class ModelSpec(NamedTuple):
    """What one SiliconFlow model takes (a record read by its fields: a NamedTuple costs the
    cold start a third of what a frozen dataclass costs to define)."""

    kind: ModelKind
    #: fewest and most input images
    images: tuple[int, int]
    #: `image_size` sent when none is given; None: the model takes no `image_size`
    default_size: str | None
    #: the wire name of `guidance` and its range
    guidance: tuple[str, float, float]
    #: whether it makes up to MAX_BATCH images a call (`batch_size`)
    batch: bool = False


_CFG: Final = ("cfg", 0.1, 20.0)
_GUIDANCE_SCALE: Final = ("guidance_scale", 0.0, 20.0)

#: the models of seed 001 (listed by /siliconflow/v1/models)
MODELS: Final[dict[str, ModelSpec]] = {
    "Qwen/Qwen-Image": ModelSpec(ModelKind.GENERATE, (0, 0), "1328x1328", _CFG),
    "Qwen/Qwen-Image-Edit": ModelSpec(ModelKind.EDIT, (1, 1), None, _CFG),
    "Qwen/Qwen-Image-Edit-2509": ModelSpec(ModelKind.EDIT, (1, 3), None, _CFG),
    "Kwai-Kolors/Kolors": ModelSpec(
        ModelKind.GENERATE, (0, 0), "1024x1024", _GUIDANCE_SCALE, batch=True
    ),
}
#: other ids, by their class (docs/providers.md "Model classes")
OTHER_GENERATE: Final = ModelSpec(ModelKind.GENERATE, (0, 0), "1024x1024", _GUIDANCE_SCALE)
OTHER_EDIT: Final = ModelSpec(ModelKind.EDIT, (1, 3), None, _GUIDANCE_SCALE)


class _Image(BaseModel):
    model_config = ConfigDict(defer_build=True)

    url: str


class _Generated(BaseModel):
    model_config = ConfigDict(defer_build=True)

    images: list[_Image]


def spec_of(model: str, kind: ModelKind) -> ModelSpec:
    for known, spec in MODELS.items():
        if known.lower() == model.lower():
            return spec
    return OTHER_EDIT if kind is ModelKind.EDIT else OTHER_GENERATE


class SiliconFlowSettings(ProviderSettings):
    """SiliconFlow's settings: where its API is."""

    siliconflow_base_url: BaseUrl = "https://api.siliconflow.cn/v1"


class SiliconFlow(Provider):
    name = "siliconflow"
    title = "SiliconFlow"
    settings_model = SiliconFlowSettings
    catalog = tuple(ModelInfo(model, spec.kind) for model, spec in MODELS.items())

    own_fields = frozenset({"batch_size"})
    size_option = "image_size"
    steps_option = "num_inference_steps"

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits | None:
        default = spec_of(model, kind).default_size
        if default is None:
            return None  # edit models take no image_size
        width, height = parse_size("image_size", default, *SIZE_RANGE)
        return SizeLimits(*SIZE_RANGE, default=(width, height))

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        if spec_of(model, kind).default_size is None:
            return frozenset({"loras", "size"})
        return frozenset({"loras"})

    @property
    def chat_base_url(self) -> str:
        return self.base_url

    def requested_images(self, fields: Mapping[str, Any]) -> int:
        """`n`, or the seed's `batch_size` (1-4); both must agree when both are given."""
        n = None if fields.get("n") is None else image_count(fields["n"])
        batch = fields.get("batch_size")
        size = None if batch is None else as_int("batch_size", batch, 1, MAX_BATCH)
        if n is not None and size is not None and n != size:
            raise InvalidRequestError(
                "'n' and 'batch_size' give different image counts; send one of them.",
                param="batch_size",
            )
        return n or size or 1

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        spec = spec_of(model, kind)
        check_image_count(model, image_count, *spec.images)
        opts = common_options(fields)
        names = option_names(fields)
        body: dict[str, Any] = {}
        if "negative_prompt" in opts:
            body["negative_prompt"] = as_text(
                "negative_prompt", opts["negative_prompt"], MAX_NEGATIVE_PROMPT
            )
        if "size" in opts:  # checked even where dropped: a typo is worth a 400
            width, height = parse_size(names["size"], opts["size"], *SIZE_RANGE)
            if spec.default_size is not None:
                body["image_size"] = f"{width}x{height}"
        elif spec.default_size is not None:
            body["image_size"] = spec.default_size
        if "seed" in opts:
            body["seed"] = as_int(names["seed"], opts["seed"], 0, MAX_SEED)
        if "steps" in opts:
            body["num_inference_steps"] = as_int(names["steps"], opts["steps"], 1, MAX_STEPS)
        if "guidance" in opts:
            wire, low, high = spec.guidance
            body[wire] = as_float(names["guidance"], opts["guidance"], low, high)
        return body

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        """Kolors makes up to 4 images a call (`batch_size`); the others one a call."""
        if not spec_of(request.model, request.kind).batch:
            return super().split(request)
        return [
            replace(request, n=min(MAX_BATCH, request.n - done))
            for done in range(0, request.n, MAX_BATCH)
        ]

    def _error(self, response: httpx.Response, request: GenerationRequest) -> GatewayError:
        trace = _trace(response)
        note = f" (trace id {trace})" if trace else ""
        error = error_for(
            self.title,
            response,
            key=request.api_key,
            note=note,
            model=request.model,
            known=self.known_ids,
        )
        if response.status_code == 400 and _code(response) == NO_SUCH_MODEL:
            return NotFoundError(error.message, param="model", code="model_not_found")
        return error

    async def start(self, request: GenerationRequest) -> Finished:
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        body.update(request.options)
        if spec_of(request.model, request.kind).batch and request.n > 1:
            body["batch_size"] = request.n
        for name, image in zip(IMAGE_FIELDS, request.images, strict=False):
            # bytes we hold go inline: the service need not fetch a presigned URL
            body[name] = image.image.data_uri() if image.image is not None else image.url
        try:
            response = await send(
                self.client,
                "POST",
                f"{self.base_url}/images/generations",
                title=self.title,
                deadline=self.settings.generation_timeout,
                json=inlined(body, request.images[: len(IMAGE_FIELDS)]),
                headers={"Authorization": f"Bearer {request.api_key.get_secret_value()}"},
                timeout=work_timeout(self.settings),
            )
        except httpx.TransportError as exc:
            raise unreachable(self.title, exc, self.settings) from None
        if response.status_code != 200:
            raise self._error(response, request)
        try:
            images = _Generated.model_validate_json(response.content).images
        except ValidationError:
            images = []
        if not images:
            raise ProviderError("SiliconFlow answered without an image.", code="provider_error")
        logger.info(
            "siliconflow images",
            extra={"model": request.model, "images": len(images), "trace_id": _trace(response)},
        )
        return Finished(tuple(image.url for image in images))


def _code(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _trace(response: httpx.Response) -> str | None:
    trace: str | None = response.headers.get(TRACE_HEADER)
    return trace
