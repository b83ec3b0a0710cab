"""A fake Alibaba DashScope (Wan image synthesis), after provider-wire.md and DashScope's API
reference (https://help.aliyun.com/en/model-studio/text-to-image-v2-api-reference).

Base URL ``{api}/api/v1``. ``POST /api/v1/services/aigc/text2image/image-synthesis`` (and
``image2image`` for wanx2.1-imageedit) needs ``X-DashScope-Async: enable`` (else 403
``AccessDenied`` "current user api does not support synchronous calls"), checks ``size`` ("W*H",
sides 512-1440) and ``n`` (1-4), and answers ``{output:{task_id, task_status:"PENDING"},
request_id}``. ``GET /api/v1/tasks/{id}`` walks PENDING → RUNNING → SUCCEEDED (``results[].url``
on the cdn host, signed for 24 h) or FAILED (``code``/``message``; moderation is
``DataInspectionFailed``). Errors are ``{code, message, request_id}``: 401 ``InvalidApiKey``,
429 ``Throttling.RateQuota`` (``throttle_next``).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.task_hosts import TaskHostsFake, input_size

TOKEN: Final = "sk-dashscope-test"
T2I_MODELS: Final = frozenset(
    {
        "wan2.5-t2i-preview",
        "wan2.2-t2i-flash",
        "wan2.2-t2i-plus",
        "wanx2.1-t2i-turbo",
        "wanx2.1-t2i-plus",
    }
)
EDIT_MODELS: Final = frozenset({"wanx2.1-imageedit"})
INSPECTION: Final = "Input data may contain inappropriate content."


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "request_id": str(uuid.uuid4())}, status)


class FakeDashScope(TaskHostsFake):
    default_tokens = frozenset({TOKEN})

    def __init__(self) -> None:
        super().__init__()
        self.url_ttl = 86_400.0
        self.throttle_next = False
        self.app = Starlette(
            routes=[
                Route(
                    "/api/v1/services/aigc/{kind}/image-synthesis", self._submit, methods=["POST"]
                ),
                Route("/api/v1/tasks/{task_id}", self._task, methods=["GET"]),
                Route("/results/{name}", self.serve_file, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token in self.tokens

    async def _submit(self, request: Request) -> Response:
        entry = await self.record(request)
        if not self._authorized(request):
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        if self.throttle_next:
            self.throttle_next = False
            return _error(429, "Throttling.RateQuota", "Requests rate limit exceeded.")
        if request.headers.get("x-dashscope-async") != "enable":
            return _error(
                403, "AccessDenied", "current user api does not support synchronous calls"
            )
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        kind = request.path_params["kind"]
        models = EDIT_MODELS if kind == "image2image" else T2I_MODELS
        model = body.get("model")
        if model not in models:
            return _error(400, "InvalidParameter", "Model not exist.")
        task_input: dict[str, Any] = body.get("input") or {}
        parameters: dict[str, Any] = body.get("parameters") or {}
        if not isinstance(task_input.get("prompt"), str) or not task_input["prompt"]:
            return _error(400, "InvalidParameter", "Field required: input.prompt")
        n = parameters.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 4:
            return _error(400, "InvalidParameter", "The n must be between 1 and 4.")
        size = (1024, 1024)
        if kind == "image2image":
            if task_input.get("function") is None:
                return _error(400, "InvalidParameter", "Field required: input.function")
            inputs = await self.inputs_of([task_input.get("base_image_url")])
            if inputs is None:
                return _error(400, "InvalidParameter", "Download the media resource timed out.")
            size = input_size(inputs[0])
        elif "size" in parameters:
            width, _, height = str(parameters["size"]).partition("*")
            if not (width.isdigit() and height.isdigit()):
                return _error(400, "InvalidParameter", "size must be like 1024*1024")
            if not all(512 <= int(side) <= 1440 for side in (width, height)):
                return _error(
                    400, "InvalidParameter", "The width and height must be in [512, 1440]."
                )
            size = (int(width), int(height))
        task = self.new_task(size, n)
        return JSONResponse(
            {
                "output": {"task_status": "PENDING", "task_id": task.id},
                "request_id": str(uuid.uuid4()),
            }
        )

    async def _task(self, request: Request) -> Response:
        await self.record(request)
        if not self._authorized(request):
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        task = self.tasks.get(request.path_params["task_id"])
        if task is None:
            return _error(404, "NotFound", "task not found")
        stage = self.advance(task)
        output: dict[str, Any] = {"task_id": task.id}
        if stage == "queued":
            output["task_status"] = "PENDING"
        elif stage == "running":
            output["task_status"] = "RUNNING"
        elif task.moderated:
            output.update(task_status="FAILED", code="DataInspectionFailed", message=INSPECTION)
        elif task.failure is not None:
            output.update(task_status="FAILED", code="InternalError", message=task.failure)
        else:
            output.update(
                task_status="SUCCEEDED",
                results=[{"url": url} for url in task.urls],
                task_metrics={"TOTAL": task.count, "SUCCEEDED": task.count, "FAILED": 0},
            )
            answer = {"request_id": str(uuid.uuid4()), "output": output}
            answer["usage"] = {"image_count": task.count}
            return JSONResponse(answer)
        return JSONResponse({"request_id": str(uuid.uuid4()), "output": output})
