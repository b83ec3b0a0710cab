"""Replicate predictions (asynchronous).

Upstream docs: https://replicate.com/docs/reference/http#predictions.create
Protocol (see shared/docs/provider-wire.md): `POST /models/{owner}/{name}/predictions` (or
`POST /predictions` with `version` for `owner/name:version`), Bearer, body `{input:{prompt,
aspect_ratio | width/height, num_outputs, seed, ...}}`, answers 201 `{id, status: "starting",
urls:{get, cancel}, output, error}`. The prediction is polled at **`urls.get`**, followed only on
Replicate's own hosts (`REPLICATE_HOSTS`, `imagegw.providers.tasks.follow`): starting |
processing | succeeded | failed | canceled; `output` is a list of URLs or one URL, deleted after
an hour (the gateway copies them at once). Errors are `{title, detail, status}`; a failed
prediction's `error` naming NSFW content is a moderation refusal (a 400 here).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from imagegw.errors import ProviderError
from imagegw.infra.media import InlineImages
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Running,
    Started,
    TaskStatus,
    check_image_count,
)
from imagegw.providers.options import as_int, as_text, common_options, option_names, parse_size
from imagegw.providers.sizes import SizeLimits
from imagegw.providers.tasks import (
    TaskProvider,
    batches,
    json_of,
    moderated,
    path_model,
    submit,
    task_settings,
)

MAX_SEED: Final = 2**31 - 1
MAX_TEXT: Final = 10_000
#: input images up to this size are sent inline (Replicate's advice for data URLs)
MAX_INLINE: Final = 256 * 1024
#: Replicate's own word for a moderation refusal in `error`
NSFW: Final = re.compile(r"nsfw|sensitive|safety|content (?:policy|moderat)", re.I)
#: the aspect ratios Replicate's FLUX models take (other models: their own list, `MODELS`)
RATIOS: Final = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")


class ModelSpec(NamedTuple):
    """What a Replicate model takes (a record read by its fields: a NamedTuple costs the
    cold start a third of what a frozen dataclass costs to define)."""

    kind: ModelKind
    #: the input field of the edited image (None: takes none)
    image_field: str | None = None
    #: the batch field and its most (None: one image a prediction)
    batch: tuple[str, int] | None = None
    #: the `aspect_ratio` values the model takes
    ratios: tuple[str, ...] = RATIOS


MODELS: Final[dict[str, ModelSpec]] = {
    "black-forest-labs/flux-schnell": ModelSpec(ModelKind.GENERATE, batch=("num_outputs", 4)),
    "black-forest-labs/flux-dev": ModelSpec(ModelKind.GENERATE, batch=("num_outputs", 4)),
    "black-forest-labs/flux-1.1-pro": ModelSpec(ModelKind.GENERATE),
    "bytedance/seedream-4": ModelSpec(
        ModelKind.GENERATE, ratios=("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9")
    ),
    "google/imagen-4": ModelSpec(ModelKind.GENERATE, ratios=("1:1", "9:16", "16:9", "3:4", "4:3")),
    "black-forest-labs/flux-kontext-pro": ModelSpec(ModelKind.EDIT, image_field="input_image"),
    "qwen/qwen-image-edit": ModelSpec(ModelKind.EDIT, image_field="image"),
}


def spec_of(model: str, kind: ModelKind) -> ModelSpec:
    base = model.split(":", 1)[0].lower()
    found = next((s for m, s in MODELS.items() if m == base), None)
    if found is not None:
        return found
    return ModelSpec(kind, image_field="input_image" if kind is ModelKind.EDIT else None)


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...] = RATIOS) -> str:
    """The listed aspect ratio nearest to width:height in shape."""
    shape = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = (int(x) for x in ratio.split(":"))
        return abs(math.log(w / h) - shape)

    return min(ratios, key=distance)


class Replicate(TaskProvider):
    name = "replicate"
    title = "Replicate"
    settings_model = task_settings(
        "replicate", "https://api.replicate.com/v1", hosts="api.replicate.com"
    )
    #: every Replicate model here makes images: one not listed edits if its id says so
    edit_ids = re.compile(r"kontext|edit|inpaint", re.I)
    catalog = tuple(ModelInfo(model, spec.kind) for model, spec in MODELS.items())
    own_fields = frozenset({"output_format", "num_outputs"})

    def catalogue_id(self, model: str) -> str:
        return model.split(":", 1)[0].lower()  # owner/name[:version]

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits:
        return SizeLimits(256, 1440, default=(1024, 1024))

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        return frozenset({"loras", "steps", "guidance", "negative_prompt"})

    def requested_images(self, fields: Mapping[str, Any]) -> int:
        if fields.get("n") is None and fields.get("num_outputs") is not None:
            return as_int("num_outputs", fields["num_outputs"], 1, 4)
        return super().requested_images(fields)

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        path_model(self.title, model, (2, 2), version=True)  # owner/name[:version]
        spec = spec_of(model, kind)
        edit = spec.image_field is not None
        check_image_count(model, image_count, 1 if edit else 0, 1 if edit else 0)
        opts = common_options(fields)
        names = option_names(fields)
        options: dict[str, Any] = {}
        if "size" in opts:
            width, height = parse_size(names["size"], opts["size"], 256, 1440)
            options["aspect_ratio"] = nearest_ratio(width, height, spec.ratios)
        if "seed" in opts:
            options["seed"] = as_int(names["seed"], opts["seed"], 0, MAX_SEED)
        if fields.get("output_format") is not None:
            options["output_format"] = as_text("output_format", fields["output_format"], 10)
        return options

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        """Models with `num_outputs` make up to 4 a prediction; the others one."""
        batch = spec_of(request.model, request.kind).batch
        if batch is None:
            return super().split(request)
        return batches(request, batch[1])

    def call(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The submission's URL and body."""
        spec = spec_of(request.model, request.kind)
        model_input: dict[str, Any] = {"prompt": request.prompt, **request.options}
        if spec.batch is not None:
            model_input[spec.batch[0]] = request.n
        inline = False
        if spec.image_field is not None and request.images:
            image = request.images[0]
            inline = image.image is not None and len(image.image.data) <= MAX_INLINE
            model_input[spec.image_field] = (
                image.image.data_uri() if inline and image.image is not None else image.url
            )
        model, _, version = request.model.partition(":")
        body = {"version": version, "input": model_input} if version else {"input": model_input}
        body = InlineImages(body) if inline else body  # the image's bytes in it
        if version:
            return f"{self.base_url}/predictions", body
        return f"{self.base_url}/models/{model}/predictions", body

    async def start(self, request: GenerationRequest) -> Started:
        url, body = self.call(request)
        response = await submit(self, url, body, self._headers(request), request.api_key)
        answer = json_of(self, response, "submission")
        urls = answer.get("urls") if isinstance(answer.get("urls"), dict) else {}
        get = (urls or {}).get("get")
        if isinstance(get, str) and get:
            return Started(get)
        if isinstance(answer.get("id"), str):
            return Started(f"{self.base_url}/predictions/{answer['id']}")
        raise ProviderError("Replicate answered without a prediction.", code="provider_error")

    async def status(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        answer = await self.poll(request, task_id, task_id)
        status = str(answer.get("status") or "").lower()
        if status == "succeeded":
            output = answer.get("output")
            items = output if isinstance(output, list) else [output]
            urls = tuple(item for item in items if isinstance(item, str) and item)
            if not urls:
                return Failed("the prediction succeeded but returned no image")
            return Finished(urls, state="SUCCEEDED")
        if status == "failed":
            error = str(answer.get("error") or "no reason given")
            if NSFW.search(error):
                raise moderated(self.title, error, request.api_key)
            return Failed(error)
        if status == "canceled":
            return Failed("the prediction was canceled", state="CANCELED")
        return Running("RUNNING" if status == "processing" else "PENDING")  # starting
