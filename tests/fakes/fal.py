"""A fake fal.ai queue, after provider-wire.md and fal's queue docs
(https://docs.fal.ai/model-apis/model-endpoints/queue).

Base URL ``{api}`` (``https://queue.fal.run``). ``POST /{model_id}`` with ``Authorization: Key
…`` checks the model's input (``image_size`` a preset or ``{width, height}``, ``num_images``
1-4, kontext's ``aspect_ratio``, the edit models' ``image_url``/``image_urls``) and answers
``{request_id, status_url, response_url, cancel_url, queue_position}``, the URLs on the **poll
host** and without the model's sub-path (``fal-ai/flux/requests/{id}``, as fal does).
``GET …/requests/{id}/status`` answers 202 IN_QUEUE (``queue_position``) | 202 IN_PROGRESS |
200 COMPLETED; ``GET …/requests/{id}`` then answers the output ``{images:[{url, width, height,
content_type}], seed, has_nsfw_concepts}`` (cdn links), or the run's error: 422 ``{"detail":
[{…, "type": "content_policy_violation"}]}`` (``moderate_next``), 500 ``{"detail": reason}``
(``fail_next``); before completion 400 "Request is still in progress". A bad key is 401.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.task_hosts import Task, TaskHostsFake, input_size

TOKEN: Final = "fal-test-key-id:fal-test-secret"
#: model -> (image field or None, size field)
MODELS: Final[dict[str, tuple[str | None, str]]] = {
    "fal-ai/flux/dev": (None, "image_size"),
    "fal-ai/flux/schnell": (None, "image_size"),
    "fal-ai/flux-pro/v1.1": (None, "image_size"),
    "fal-ai/qwen-image": (None, "image_size"),
    "fal-ai/flux-pro/kontext": ("image_url", "aspect_ratio"),
    "fal-ai/qwen-image-edit": ("image_url", "image_size"),
    "fal-ai/bytedance/seedream/v4/edit": ("image_urls", "image_size"),
}
PRESETS: Final = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
FLAGGED: Final = (
    "The content could not be processed because it contained material flagged by a content checker."
)


def _invalid(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, 422
    )


class FakeFal(TaskHostsFake):
    default_tokens = frozenset({TOKEN})

    def __init__(self) -> None:
        super().__init__()
        self.url_ttl = 7 * 86_400.0
        self.throttle_next = False
        self.app = Starlette(
            routes=[
                Route("/results/{name}", self.serve_file, methods=["GET"]),
                Route("/{app:path}/requests/{rid}/status", self._status, methods=["GET"]),
                Route("/{app:path}/requests/{rid}", self._response, methods=["GET"]),
                Route("/{model:path}", self._submit, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme == "Key" and token in self.tokens

    async def _submit(self, request: Request) -> Response:
        entry = await self.record(request)
        if not self._authorized(request):
            return JSONResponse({"detail": "Invalid authentication credentials"}, 401)
        if self.throttle_next:
            self.throttle_next = False
            return JSONResponse({"detail": "Too many requests"}, 429, headers={"retry-after": "3"})
        model = request.path_params["model"]
        if model not in MODELS:
            return JSONResponse({"detail": f"Application '{model}' not found"}, 404)
        image_field, size_field = MODELS[model]
        body: dict[str, Any] = entry["body"] if isinstance(entry["body"], dict) else {}
        if not isinstance(body.get("prompt"), str):
            return _invalid("prompt", "field required")
        count = body.get("num_images", 1)
        if not isinstance(count, int) or not 1 <= count <= 4:
            return _invalid("num_images", "ensure this value is between 1 and 4")
        size = PRESETS["landscape_4_3"]
        if size_field == "image_size" and "image_size" in body:
            value = body["image_size"]
            if isinstance(value, dict) and all(
                isinstance(value.get(k), int) for k in ("width", "height")
            ):
                size = (value["width"], value["height"])
            elif value in PRESETS:
                size = PRESETS[value]
            else:
                return _invalid("image_size", "must be a preset or {width, height}")
        if size_field == "aspect_ratio" and "image_size" in body:
            return _invalid("image_size", "extra fields not permitted")
        if image_field is not None:
            given = body.get(image_field)
            values = given if isinstance(given, list) else [given]
            inputs = await self.inputs_of(values)
            if inputs is None:
                return _invalid(image_field, "could not load the image")
            if "image_size" not in body:
                size = input_size(inputs[0])
        task = self.new_task(size, count)
        app = "/".join(model.split("/")[:2])  # the URLs drop the model's sub-path
        base = f"{self.poll_url}/{app}/requests/{task.id}"
        return JSONResponse(
            {
                "request_id": task.id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            }
        )

    def _task(self, request: Request) -> Task | None:
        return self.tasks.get(request.path_params["rid"])

    async def _status(self, request: Request) -> Response:
        await self.record(request)
        if not self._authorized(request):
            return JSONResponse({"detail": "Invalid authentication credentials"}, 401)
        task = self._task(request)
        if task is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        stage = self.advance(task)
        base = str(request.url).removesuffix("/status").split("?")[0]
        if stage == "queued":
            return JSONResponse(
                {"status": "IN_QUEUE", "queue_position": 2, "response_url": base}, 202
            )
        if stage == "running":
            return JSONResponse({"status": "IN_PROGRESS", "logs": [], "response_url": base}, 202)
        return JSONResponse({"status": "COMPLETED", "logs": [], "response_url": base}, 200)

    async def _response(self, request: Request) -> Response:
        await self.record(request)
        if not self._authorized(request):
            return JSONResponse({"detail": "Invalid authentication credentials"}, 401)
        task = self._task(request)
        if task is None:
            return JSONResponse({"detail": "Request not found"}, 404)
        if task.polls < self.polls_to_finish:
            return JSONResponse({"detail": "Request is still in progress"}, 400)
        if task.moderated:
            detail = [
                {"loc": ["body", "prompt"], "msg": FLAGGED, "type": "content_policy_violation"}
            ]
            return JSONResponse({"detail": detail}, 422)
        if task.failure is not None:
            return JSONResponse({"detail": task.failure}, 500)
        images = [
            {"url": url, "width": task.size[0], "height": task.size[1], "content_type": "image/png"}
            for url in task.urls
        ]
        return JSONResponse(
            {"images": images, "seed": 42, "has_nsfw_concepts": [False] * len(images), "prompt": ""}
        )
