"""A fake Black Forest Labs API, after provider-wire.md and BFL's docs (https://docs.bfl.ai;
https://help.bfl.ai/articles/2916279050-why-did-my-request-fail).

Base URL ``{api}/v1``. ``POST /v1/{model}`` with ``x-key`` checks the body (width/height
multiples of 32 from 256 to 1440; kontext's ``aspect_ratio`` from 21:9 to 9:21; kontext's
``input_image`` base64 or a URL) and answers ``{id, polling_url, cost}`` whose polling URL is on
the **poll host** (``api.us1.bfl.ai``), ``GET /v1/get_result?id=`` there (or on the api host)
answers ``status`` Pending (with ``progress``) | Ready (``result.sample``, a cdn link signed for
10 minutes) | Error | Content Moderated | Request Moderated | Task not found. HTTP errors as
BFL's: 403 ``{"detail": "Not authenticated - Invalid Authentication"}`` for a bad key, 402 no
credits, 422 FastAPI validation ``{"detail": [{loc, msg, type}]}``, 429 too many active tasks.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.task_hosts import TaskHostsFake, input_size, size_of

TOKEN: Final = "bfl-test-key-0001"
WH_MODELS: Final = frozenset({"flux-pro-1.1", "flux-dev", "flux-2-pro"})
RATIO_MODELS: Final = frozenset({"flux-pro-1.1-ultra", "flux-kontext-pro", "flux-kontext-max"})
BAD_KEY: Final = "Not authenticated - Invalid Authentication"
TOO_MANY: Final = "You have reached the maximum number of active tasks (24)."


def _invalid(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, 422
    )


class FakeBFL(TaskHostsFake):
    default_tokens = frozenset({TOKEN})

    def __init__(self) -> None:
        super().__init__()
        self.url_ttl = 600.0  # BFL's result links expire in 10 minutes
        self.throttle_next = False
        self.app = Starlette(
            routes=[
                Route("/v1/get_result", self._result, methods=["GET"]),
                Route("/v1/{model}", self._submit, methods=["POST"]),
                Route("/results/{name}", self.serve_file, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def _submit(self, request: Request) -> Response:
        entry = await self.record(request)
        if request.headers.get("x-key") not in self.tokens:
            return JSONResponse({"detail": BAD_KEY}, 403)
        if self.throttle_next:
            self.throttle_next = False
            return JSONResponse({"detail": TOO_MANY}, 429, headers={"retry-after": "5"})
        model = request.path_params["model"]
        if model not in WH_MODELS | RATIO_MODELS:
            return JSONResponse({"detail": "Not Found"}, 404)
        body: dict[str, Any] = entry["body"] if isinstance(entry["body"], dict) else {}
        if not isinstance(body.get("prompt"), str):
            return _invalid("prompt", "Field required")
        size = (1024, 768) if model in WH_MODELS else (1024, 1024)
        if model in WH_MODELS:
            width, height = body.get("width", 1024), body.get("height", 768)
            for name, side in (("width", width), ("height", height)):
                if not isinstance(side, int) or side % 32 or not 256 <= side <= 1440:
                    return _invalid(name, "must be a multiple of 32 from 256 to 1440")
            size = (width, height)
        elif "aspect_ratio" in body:
            ratio = body["aspect_ratio"]
            w, _, h = str(ratio).partition(":")
            if not (w.isdigit() and h.isdigit() and 9 / 21 <= int(w) / int(h) <= 21 / 9):
                return _invalid("aspect_ratio", "must be between 21:9 and 9:21")
            size = size_of(ratio)
        images = [body[k] for k in ("input_image", "input_image_2") if body.get(k) is not None]
        if images:
            if model not in ("flux-kontext-pro", "flux-kontext-max", "flux-2-pro"):
                return _invalid("input_image", "Extra inputs are not permitted")
            inputs = await self.inputs_of(images)
            if inputs is None:
                return _invalid("input_image", "could not decode the image")
            if "aspect_ratio" not in body and model in RATIO_MODELS:
                size = input_size(inputs[0])
        task = self.new_task(size)
        return JSONResponse(
            {
                "id": task.id,
                "polling_url": f"{self.poll_url}/v1/get_result?id={task.id}",
                "cost": 4.0,
            }
        )

    async def _result(self, request: Request) -> Response:
        await self.record(request)
        if request.headers.get("x-key") not in self.tokens:
            return JSONResponse({"detail": BAD_KEY}, 403)
        task = self.tasks.get(request.query_params.get("id", ""))
        if task is None:
            return JSONResponse({"id": request.query_params.get("id"), "status": "Task not found"})
        stage = self.advance(task)
        answer: dict[str, Any] = {"id": task.id, "result": None, "progress": None}
        if stage == "queued":
            answer["status"] = "Pending"
        elif stage == "running":
            answer.update(status="Pending", progress=0.5)
        elif task.moderated:
            answer.update(
                status="Content Moderated",
                details={"Moderation Reasons": ["Derivative Works Filter"]},
            )
        elif task.failure is not None:
            answer.update(status="Error", details=task.failure)
        else:
            answer.update(
                status="Ready",
                result={"sample": task.urls[0], "seed": 1, "duration": 3.2},
                progress=1.0,
            )
        answer["preview"] = None
        answer["request_id"] = str(uuid.uuid4())
        return JSONResponse(answer)
