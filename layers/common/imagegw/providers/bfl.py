"""Black Forest Labs FLUX API (asynchronous tasks, one image each).

Upstream docs: https://docs.bfl.ai (quick start, "polling_url", regional endpoints)
Protocol (see shared/docs/provider-wire.md): `POST /{model}` with header `x-key` and
`{prompt, width, height | aspect_ratio, seed, output_format, input_image}` answers
`{id, polling_url}`. The task is polled at **the returned polling_url**, which may be on another
host of bfl.ai (`api.us1.bfl.ai`): it is followed only on BFL's own hosts (`BFL_HOSTS`,
`imagegw.providers.tasks.follow`). Its `status` is Pending | Ready | Error | Content Moderated |
Request Moderated | Task not found; `result.sample` is a signed URL that expires in 10 minutes,
so the gateway copies it at once. HTTP errors: 402 no credits, 403 a bad key, 422 invalid
parameters (`{"detail": [...]}`), 429 too many active tasks.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final, NamedTuple

from imagegw.errors import InvalidRequestError, PermissionDeniedError, ProviderError
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Running,
    Started,
    TaskStatus,
    Workload,
    check_image_count,
    pixels_of_sides,
)
from imagegw.providers.options import as_float, as_int, common_options, option_names, parse_size
from imagegw.providers.sizes import SizeLimits
from imagegw.providers.tasks import (
    TaskProvider,
    aspect,
    auth_refusal,
    json_of,
    moderated,
    path_model,
    submit,
    task_settings,
)

#: width/height models: multiples of 32 from 256 to 1440
SIDE_RANGE: Final = (256, 1440)
SIDE_STEP: Final = 32
MAX_SEED: Final = 2**32 - 1
#: the input-image fields of the models that take several (FLUX.2: up to 8)
IMAGE_FIELDS: Final = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
MODERATED: Final = frozenset({"Content Moderated", "Request Moderated"})
OUTPUT_FORMATS: Final = frozenset({"png", "jpeg"})


class ModelSpec(NamedTuple):
    """What a FLUX model takes (a record read by its fields: a NamedTuple costs the
    cold start a third of what a frozen dataclass costs to define)."""

    kind: ModelKind
    images: tuple[int, int]
    #: "wh": width/height; "ratio": aspect_ratio only (kontext, ultra)
    size: str
    steps: bool = False


MODELS: Final[dict[str, ModelSpec]] = {
    "flux-pro-1.1": ModelSpec(ModelKind.GENERATE, (0, 0), "wh"),
    "flux-pro-1.1-ultra": ModelSpec(ModelKind.GENERATE, (0, 0), "ratio"),
    "flux-dev": ModelSpec(ModelKind.GENERATE, (0, 0), "wh", steps=True),
    "flux-2-pro": ModelSpec(ModelKind.GENERATE, (0, 8), "wh"),
    "flux-kontext-pro": ModelSpec(ModelKind.EDIT, (1, 1), "ratio"),
    "flux-kontext-max": ModelSpec(ModelKind.EDIT, (1, 1), "ratio"),
}


def spec_of(model: str, kind: ModelKind) -> ModelSpec:
    found = next((s for m, s in MODELS.items() if m == model.lower()), None)
    if found is not None:
        return found
    if kind is ModelKind.EDIT:
        return ModelSpec(ModelKind.EDIT, (1, 1), "ratio")
    return ModelSpec(ModelKind.GENERATE, (0, 0), "wh")


def _sides(width: int, height: int) -> tuple[int, int]:
    """Sides rounded to BFL's multiples of 32, within its range."""
    lo, hi = SIDE_RANGE
    return tuple(  # type: ignore[return-value]
        min(hi, max(lo, round(side / SIDE_STEP) * SIDE_STEP)) for side in (width, height)
    )


class BlackForestLabs(TaskProvider):
    name = "bfl"
    title = "Black Forest Labs"
    #: BFL_HOSTS: the hosts polling URLs may be on, besides BFL_BASE_URL's
    settings_model = task_settings("bfl", "https://api.bfl.ai/v1", hosts="*.bfl.ai")
    key_header = ("x-key", "")
    edit_ids = re.compile(r"kontext|fill|edit", re.I)
    catalog = (
        ModelInfo("flux-pro-1.1", ModelKind.GENERATE, seconds=8.0),
        ModelInfo("flux-pro-1.1-ultra", ModelKind.GENERATE, seconds=15.0),
        ModelInfo("flux-dev", ModelKind.GENERATE, seconds=10.0),
        ModelInfo("flux-2-pro", ModelKind.GENERATE, seconds=15.0),
        ModelInfo("flux-kontext-pro", ModelKind.EDIT, seconds=10.0),
        ModelInfo("flux-kontext-max", ModelKind.EDIT, seconds=15.0),
    )
    own_fields = frozenset({"output_format", "safety_tolerance", "prompt_upsampling"})

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits:
        return SizeLimits(*SIDE_RANGE, default=(1024, 1024))

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        unused = {"negative_prompt", "loras"}
        if not spec_of(model, kind).steps:
            unused |= {"steps", "guidance"}
        return frozenset(unused)

    def workload(self, options: Mapping[str, Any]) -> Workload:
        """Its size is `width` and `height` (or only an `aspect_ratio`: no size to learn by)."""
        pixels = pixels_of_sides(options.get("width"), options.get("height"))
        return replace(super().workload(options), pixels=pixels)

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        path_model(self.title, model, (1, 1))
        spec = spec_of(model, kind)
        check_image_count(model, image_count, *spec.images)
        opts = common_options(fields)
        names = option_names(fields)
        body: dict[str, Any] = {}
        if "size" in opts:
            width, height = _sides(*parse_size(names["size"], opts["size"], *SIDE_RANGE))
            if spec.size == "wh":
                body["width"], body["height"] = width, height
            else:
                body["aspect_ratio"] = aspect(width, height)
        if "seed" in opts:
            body["seed"] = as_int(names["seed"], opts["seed"], 0, MAX_SEED)
        if spec.steps and "steps" in opts:
            body["steps"] = as_int(names["steps"], opts["steps"], 1, 50)
        if spec.steps and "guidance" in opts:
            body["guidance"] = as_float(names["guidance"], opts["guidance"], 1.5, 5.0)
        if fields.get("output_format") is not None:
            if fields["output_format"] not in OUTPUT_FORMATS:
                raise InvalidRequestError(
                    "'output_format' must be png or jpeg.", param="output_format"
                )
            body["output_format"] = fields["output_format"]
        if fields.get("safety_tolerance") is not None:
            body["safety_tolerance"] = as_int("safety_tolerance", fields["safety_tolerance"], 0, 6)
        if fields.get("prompt_upsampling") is not None:
            if not isinstance(fields["prompt_upsampling"], bool):
                raise InvalidRequestError(
                    "'prompt_upsampling' must be true or false.", param="prompt_upsampling"
                )
            body["prompt_upsampling"] = fields["prompt_upsampling"]
        body.setdefault("output_format", "png")
        return body

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt, **request.options}
        for name, image in zip(IMAGE_FIELDS, request.images, strict=False):
            # base64 (what BFL documents for kontext) when held, else the presigned URL
            body[name] = (
                base64.b64encode(image.image.data).decode()
                if image.image is not None
                else image.url
            )
        return body

    async def start(self, request: GenerationRequest) -> Started:
        url = f"{self.base_url}/{request.model}"
        try:
            response = await submit(
                self, url, self.body(request), self._headers(request), request.api_key
            )
        except PermissionDeniedError as exc:
            if exc.code == "insufficient_quota":  # a 402: no credit
                raise
            raise auth_refusal(exc) from None  # BFL answers a bad key 403
        answer = json_of(self, response, "submission")
        polling = answer.get("polling_url")
        task = answer.get("id")
        if isinstance(polling, str) and polling:
            return Started(polling)
        if isinstance(task, str) and task:
            return Started(f"{self.base_url}/get_result?id={task}")
        raise ProviderError(
            "Black Forest Labs answered the submission without a task.", code="provider_error"
        )

    async def status(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        answer = await self.poll(request, task_id, task_id)
        status = str(answer.get("status") or "")
        result = answer.get("result") if isinstance(answer.get("result"), dict) else {}
        if status == "Ready":
            sample = (result or {}).get("sample")
            if not isinstance(sample, str):
                return Failed("the task is ready but has no image")
            return Finished((sample,), state="SUCCEEDED")
        if status in MODERATED:
            raise moderated(self.title, f"{status.lower()}")
        if status == "Error":
            details = answer.get("details") or (result or {}).get("error") or "no reason given"
            return Failed(str(details), state="ERROR")
        if status == "Task not found":
            return Failed("the task was not found (it may have expired)", state="FAILED")
        progress = answer.get("progress")
        if isinstance(progress, int | float) and not isinstance(progress, bool) and progress > 0:
            return Running("RUNNING", f"{min(100.0, progress * 100):.0f} %")
        return Running("PENDING")
