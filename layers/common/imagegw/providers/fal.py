"""fal.ai's queue (asynchronous).

Upstream docs: https://docs.fal.ai/model-apis/model-endpoints/queue
Protocol (see shared/docs/provider-wire.md): `POST /{model_id}` (`fal-ai/flux/dev`) with
`Authorization: Key {key}` and the model's own input (`prompt`, `image_size` as a preset or
`{width, height}`, `num_images`, `seed`, `image_url` for edits) answers `{request_id,
status_url, response_url, cancel_url}` (the URLs may drop the model's sub-path). `GET
status_url` answers IN_QUEUE (with `queue_position`) | IN_PROGRESS | COMPLETED (202 until
done); then `GET response_url` answers the model's output (`images:[{url, width, height}]`) or
a 4xx/5xx with `detail` when the run failed (a `content_policy_violation` detail is a 400
here). Both URLs are followed only on fal's own hosts (`FAL_HOSTS`,
`imagegw.providers.tasks.follow`). A task id is the two URLs, space-separated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final, NamedTuple

from imagegw.errors import ProviderError, TransientProviderError
from imagegw.infra.lazy import httpx
from imagegw.infra.media import inlined
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
from imagegw.providers.options import (
    as_float,
    as_int,
    as_text,
    common_options,
    option_names,
    parse_size,
)
from imagegw.providers.sizes import SizeLimits
from imagegw.providers.tasks import (
    TaskProvider,
    aspect,
    batches,
    json_of,
    moderated,
    path_model,
    polled,
    submit,
    task_settings,
)
from imagegw.providers.upstream import message_of

MAX_BATCH: Final = 4
MAX_SEED: Final = 2**31 - 1
SIDE_RANGE: Final = (256, 2048)
MAX_TEXT: Final = 10_000
POLICY: Final = re.compile(r"content_policy|nsfw|safety", re.I)


class ModelSpec(NamedTuple):
    """What a fal model takes (a record read by its fields: a NamedTuple costs the
    cold start a third of what a frozen dataclass costs to define)."""

    kind: ModelKind
    #: "image_url" (one image) or "image_urls" (a list); None: takes none
    image_field: str | None = None
    most_images: int = 1
    #: "size": `image_size {width, height}`; "ratio": `aspect_ratio`
    size: str = "size"
    batch: bool = True
    steps: bool = False


MODELS: Final[dict[str, ModelSpec]] = {
    "fal-ai/flux/dev": ModelSpec(ModelKind.GENERATE, steps=True),
    "fal-ai/flux/schnell": ModelSpec(ModelKind.GENERATE, steps=True),
    "fal-ai/flux-pro/v1.1": ModelSpec(ModelKind.GENERATE),
    "fal-ai/qwen-image": ModelSpec(ModelKind.GENERATE, steps=True),
    "fal-ai/flux-pro/kontext": ModelSpec(ModelKind.EDIT, "image_url", size="ratio"),
    "fal-ai/qwen-image-edit": ModelSpec(ModelKind.EDIT, "image_url", steps=True),
    "fal-ai/bytedance/seedream/v4/edit": ModelSpec(ModelKind.EDIT, "image_urls", most_images=10),
}


def spec_of(model: str, kind: ModelKind) -> ModelSpec:
    found = next((s for m, s in MODELS.items() if m == model.lower()), None)
    if found is not None:
        return found
    return ModelSpec(kind, "image_url" if kind is ModelKind.EDIT else None)


def _urls(task_id: str) -> tuple[str, str]:
    status, _, response = task_id.partition(" ")
    return status, response or status.removesuffix("/status")


class Fal(TaskProvider):
    name = "fal"
    title = "fal"
    settings_model = task_settings("fal", "https://queue.fal.run", hosts="*.fal.run")
    key_header = ("Authorization", "Key ")
    #: every fal model here makes images: one not listed edits if its id says so
    edit_ids = re.compile(r"kontext|edit|inpaint", re.I)
    catalog = tuple(ModelInfo(model, spec.kind) for model, spec in MODELS.items())
    own_fields = frozenset({"num_images", "enable_safety_checker", "output_format"})

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits:
        return SizeLimits(*SIDE_RANGE, default=(1024, 1024))

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        unused = {"loras", "negative_prompt"}
        if not spec_of(model, kind).steps:
            unused |= {"steps", "guidance"}
        return frozenset(unused)

    def requested_images(self, fields: Mapping[str, Any]) -> int:
        if fields.get("n") is None and fields.get("num_images") is not None:
            return as_int("num_images", fields["num_images"], 1, MAX_BATCH)
        return super().requested_images(fields)

    steps_option = "num_inference_steps"

    def workload(self, options: Mapping[str, Any]) -> Workload:
        """Its size is `image_size {width, height}` (or an `aspect_ratio`: no size to learn
        by)."""
        size = options.get("image_size")
        sides = (size.get("width"), size.get("height")) if isinstance(size, Mapping) else ()
        pixels = pixels_of_sides(*sides) if sides else None
        return replace(super().workload(options), pixels=pixels)

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        path_model(self.title, model, (2, 6))  # owner/app[/sub/path]
        spec = spec_of(model, kind)
        edit = spec.image_field is not None
        check_image_count(model, image_count, 1 if edit else 0, spec.most_images if edit else 0)
        opts = common_options(fields)
        names = option_names(fields)
        options: dict[str, Any] = {}
        if "size" in opts:
            width, height = parse_size(names["size"], opts["size"], *SIDE_RANGE)
            if spec.size == "ratio":
                options["aspect_ratio"] = aspect(width, height)
            else:
                options["image_size"] = {"width": width, "height": height}
        if "seed" in opts:
            options["seed"] = as_int(names["seed"], opts["seed"], 0, MAX_SEED)
        if spec.steps and "steps" in opts:
            options["num_inference_steps"] = as_int(names["steps"], opts["steps"], 1, 50)
        if spec.steps and "guidance" in opts:
            options["guidance_scale"] = as_float(names["guidance"], opts["guidance"], 1.0, 20.0)
        if fields.get("output_format") is not None:
            options["output_format"] = as_text("output_format", fields["output_format"], 10)
        if isinstance(fields.get("enable_safety_checker"), bool):
            options["enable_safety_checker"] = fields["enable_safety_checker"]
        return options

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        """Up to 4 images a request (`num_images`)."""
        if not spec_of(request.model, request.kind).batch:
            return super().split(request)
        return batches(request, MAX_BATCH)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        spec = spec_of(request.model, request.kind)
        body: dict[str, Any] = {"prompt": request.prompt, **request.options}
        if spec.batch:
            body["num_images"] = request.n
        # bytes the gateway holds go inline (fal takes data URIs), else the presigned URL
        images = [i.image.data_uri() if i.image is not None else i.url for i in request.images]
        if spec.image_field == "image_urls":
            body["image_urls"] = images
        elif spec.image_field is not None and images:
            body[spec.image_field] = images[0]
        return inlined(body, request.images) if spec.image_field is not None else body

    async def start(self, request: GenerationRequest) -> Started:
        response = await submit(
            self,
            f"{self.base_url}/{request.model}",
            self.body(request),
            self._headers(request),
            request.api_key,
        )
        answer = json_of(self, response, "submission")
        status, result = answer.get("status_url"), answer.get("response_url")
        if isinstance(status, str) and isinstance(result, str) and status and result:
            return Started(f"{status} {result}")
        raise ProviderError("fal answered the submission without a request.", code="provider_error")

    async def status(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        status_url, response_url = _urls(task_id)
        headers = self._headers(request)
        key = request.api_key
        state = await self.poll(
            request, task_id, status_url, what="status URL", done_statuses=frozenset({200, 202})
        )
        status = str(state.get("status") or "").upper()
        if status == "IN_QUEUE":
            position = state.get("queue_position")
            if isinstance(position, int) and not isinstance(position, bool):
                return Running("QUEUED", f"position {position} in the queue")
            return Running("QUEUED")
        if status != "COMPLETED":
            return Running("RUNNING")  # IN_PROGRESS
        # COMPLETED: the response URL holds the output, or the run's error (any status, with a
        # `detail`); only an answer without one (a proxy's 5xx) is worth asking again
        answer = await polled(
            self, task_id, response_url, headers, key, self.hosts,
            what="response URL", done_statuses=frozenset(range(200, 600)) - {429},
        )  # fmt: skip
        if answer.status_code >= 500 and "detail" not in _json_keys(answer):
            raise TransientProviderError(
                f"fal answered {answer.status_code} for the result of task {task_id}.",
                reason=f"answered {answer.status_code}",
                code="provider_unavailable",
            )
        return self._result(answer, request)

    def _result(self, answer: httpx.Response, request: GenerationRequest) -> TaskStatus:
        if answer.status_code != 200:
            reason = message_of(answer)
            if POLICY.search(answer.text[:2000]):
                raise moderated(self.title, reason, request.api_key)
            return Failed(reason)
        try:
            images = answer.json().get("images") or []
        except (ValueError, AttributeError):
            images = []
        urls = tuple(
            i["url"] for i in images if isinstance(i, dict) and isinstance(i.get("url"), str)
        )
        if not urls:
            return Failed("the request completed without an image")
        return Finished(urls, state="SUCCEEDED")


def _json_keys(response: httpx.Response) -> frozenset[str]:
    try:
        body = response.json()
    except ValueError:
        return frozenset()
    return frozenset(body) if isinstance(body, dict) else frozenset()
