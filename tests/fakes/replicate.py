"""A fake Replicate predictions API, after provider-wire.md and Replicate's HTTP reference
(https://replicate.com/docs/reference/http).

Base URL ``{api}/v1``. ``POST /v1/models/{owner}/{name}/predictions`` (Bearer) checks the input
(``aspect_ratio`` from FLUX's list, ``num_outputs`` 1-4 where the model has it, the edit
models' image field) and answers 201 with the prediction ``{id, model, input, status:
"starting", output: null, error: null, urls:{get, cancel, web}}``; its ``urls.get`` is on the
**poll host** (so the gateway must follow it, and only there). ``GET /v1/predictions/{id}``
walks starting → processing → succeeded (``output``: a list of cdn links deleted after an hour,
or one link for single-output models) | failed (``error``; moderation: "NSFW content detected").
Errors are ``{title, detail, status}``: 401 Unauthenticated, 404 Not found, 422 Input
validation failed, 429 with ``retry-after``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.task_hosts import TaskHostsFake, input_size, size_of

TOKEN: Final = "r8_test_token_0001"
RATIOS: Final = frozenset(
    {"1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"}
)
#: model -> (image field or None, takes num_outputs, output is a list)
MODELS: Final[dict[str, tuple[str | None, bool, bool]]] = {
    "black-forest-labs/flux-schnell": (None, True, True),
    "black-forest-labs/flux-dev": (None, True, True),
    "black-forest-labs/flux-1.1-pro": (None, False, False),
    "bytedance/seedream-4": (None, False, True),
    "google/imagen-4": (None, False, False),
    "black-forest-labs/flux-kontext-pro": ("input_image", False, False),
    "qwen/qwen-image-edit": ("image", False, True),
}
NSFW: Final = "NSFW content detected. Try running it again, or try a different prompt."


def _problem(status: int, title: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"title": title, "detail": detail, "status": status}, status, headers=headers
    )


class FakeReplicate(TaskHostsFake):
    default_tokens = frozenset({TOKEN})

    def __init__(self) -> None:
        super().__init__()
        self.url_ttl = 3600.0  # output files are deleted after an hour
        self.throttle_next = False
        self.models: dict[str, str] = {}  # prediction id -> model
        self.app = Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions/{pid}", self._get, methods=["GET"]),
                Route("/results/{name}", self.serve_file, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token in self.tokens

    def _prediction(self, task_id: str, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": task_id,
            "model": self.models.get(task_id, ""),
            "status": status,
            "output": None,
            "error": None,
            "logs": "",
            "created_at": datetime.now(UTC).isoformat(),
            "urls": {
                "get": f"{self.poll_url}/v1/predictions/{task_id}",
                "cancel": f"{self.poll_url}/v1/predictions/{task_id}/cancel",
                "web": f"https://replicate.com/p/{task_id}",
            },
            **extra,
        }

    async def _create(self, request: Request) -> Response:
        entry = await self.record(request)
        if not self._authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        if self.throttle_next:
            self.throttle_next = False
            return _problem(
                429, "Request was throttled", "Too many requests", **{"retry-after": "7"}
            )
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        if model not in MODELS:
            return _problem(404, "Not found", "The requested resource could not be found.")
        image_field, batched, _ = MODELS[model]
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        model_input: dict[str, Any] = body.get("input") or {}
        problems = []
        if not isinstance(model_input.get("prompt"), str):
            problems.append("input: prompt is required")
        ratio = model_input.get("aspect_ratio", "1:1")
        if ratio not in RATIOS:
            problems.append(f"input.aspect_ratio: must be one of {sorted(RATIOS)}")
        count = model_input.get("num_outputs", 1) if batched else 1
        if batched and (not isinstance(count, int) or not 1 <= count <= 4):
            problems.append("input.num_outputs: must be between 1 and 4")
        if not batched and "num_outputs" in model_input:
            problems.append("input: Additional property num_outputs is not allowed")
        size = size_of(ratio)
        if image_field is not None:
            inputs = await self.inputs_of([model_input.get(image_field)])
            if inputs is None:
                problems.append(f"input: {image_field} is required (a URL or data URL)")
            elif "aspect_ratio" not in model_input:
                size = input_size(inputs[0])
        if problems:
            return _problem(422, "Input validation failed", "\n".join(f"- {p}" for p in problems))
        task = self.new_task(size, count)
        self.models[task.id] = model
        return JSONResponse(self._prediction(task.id, "starting", input=model_input), 201)

    async def _get(self, request: Request) -> Response:
        await self.record(request)
        if not self._authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        task = self.tasks.get(request.path_params["pid"])
        if task is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        stage = self.advance(task)
        if stage == "queued":
            return JSONResponse(self._prediction(task.id, "starting"))
        if stage == "running":
            return JSONResponse(self._prediction(task.id, "processing"))
        if task.moderated:
            return JSONResponse(self._prediction(task.id, "failed", error=NSFW))
        if task.failure is not None:
            return JSONResponse(self._prediction(task.id, "failed", error=task.failure))
        as_list = MODELS[self.models[task.id]][2]
        output = task.urls if as_list else task.urls[0]
        return JSONResponse(self._prediction(task.id, "succeeded", output=output))
