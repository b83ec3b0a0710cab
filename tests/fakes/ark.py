"""A fake Volcengine Ark image API (Seedream / SeedEdit), after provider-wire.md and Ark's
reference (https://www.volcengine.com/docs/82379/1541523).

Base URL ``{api}/api/v3``. ``POST /api/v3/images/generations`` is synchronous and OpenAI-like:
``{model, created, data:[{url, size}], usage:{generated_images, output_tokens, total_tokens}}``,
links on the cdn host signed for 24 h. Per model, as the service: Seedream 4 takes ``size``
``1K``/``2K``/``4K`` or ``WxH`` of 1280x720 to 4096x4096 pixels and up to 10 reference
``image``s (a URL or data URI, or a list); Seedream 3 ``WxH`` with sides 512-2048 and no image;
SeedEdit exactly one ``image`` and ``size: adaptive``. Errors are ``{error:{code, message,
param, type}}``: 401 ``AuthenticationError``, 404 ``InvalidEndpointOrModel.NotFound``, 400
``InvalidParameter``, 400 ``OutputImageSensitiveContentDetected`` (``moderate_next``), 500
``InternalServiceError`` (``fail_next``), 429 ``RateLimitExceeded.EndpointRPMExceeded``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.task_hosts import TaskHostsFake, input_size

TOKEN: Final = "ark-test-key-0001"
SEEDREAM_4: Final = "doubao-seedream-4-0-250828"
SEEDREAM_3: Final = "doubao-seedream-3-0-t2i-250415"
SEEDEDIT: Final = "doubao-seededit-3-0-i2i-250628"
NAMED: Final = {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (4096, 4096)}
SENSITIVE: Final = "The request failed because the output image may contain sensitive information."


def _error(status: int, code: str, message: str, kind: str, param: str = "") -> JSONResponse:
    request_id = uuid.uuid4().hex
    return JSONResponse(
        {
            "error": {
                "code": code,
                "message": f"{message} Request id: {request_id}",
                "param": param,
                "type": kind,
            }
        },
        status,
    )


class Invalid(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class FakeArk(TaskHostsFake):
    default_tokens = frozenset({TOKEN})

    def __init__(self) -> None:
        super().__init__()
        self.url_ttl = 86_400.0
        self.throttle_next = False
        self.app = Starlette(
            routes=[
                Route("/api/v3/images/generations", self._generate, methods=["POST"]),
                Route("/results/{name}", self.serve_file, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def _generate(self, request: Request) -> Response:
        entry = await self.record(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return _error(
                401,
                "AuthenticationError",
                "The API key in the request is missing or invalid.",
                "Unauthorized",
            )
        if self.throttle_next:
            self.throttle_next = False
            return _error(
                429,
                "RateLimitExceeded.EndpointRPMExceeded",
                "The request has exceeded the RPM limit.",
                "TooManyRequests",
            )
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        model = body.get("model")
        if model not in (SEEDREAM_4, SEEDREAM_3, SEEDEDIT):
            return _error(
                404,
                "InvalidEndpointOrModel.NotFound",
                f"The model or endpoint {model} does not exist or you do not have access to it.",
                "NotFound",
            )
        try:
            size = await self._checked(model, body)
        except Invalid as invalid:
            return _error(400, "InvalidParameter", invalid.message, "BadRequest", invalid.param)
        with self.lock:
            failure, self.next_failure = self.next_failure, None
            moderated, self.next_moderation = self.next_moderation, False
        if moderated:
            return _error(400, "OutputImageSensitiveContentDetected", SENSITIVE, "BadRequest")
        if failure is not None:
            return _error(500, "InternalServiceError", failure, "InternalServerError")
        url = self.file_url(*size)
        return JSONResponse(
            {
                "model": model,
                "created": int(time.time()),
                "data": [{"url": url, "size": f"{size[0]}x{size[1]}"}],
                "usage": {"generated_images": 1, "output_tokens": 4096, "total_tokens": 4096},
            }
        )

    async def _checked(self, model: str, body: dict[str, Any]) -> tuple[int, int]:
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise Invalid("The parameter `prompt` is required.", "prompt")
        images = body.get("image")
        listed = images if isinstance(images, list) else [] if images is None else [images]
        if model == SEEDREAM_3 and listed:
            raise Invalid("The parameter `image` is not supported by this model.", "image")
        if model == SEEDEDIT and len(listed) != 1:
            raise Invalid("The parameter `image` must be one image.", "image")
        if len(listed) > 10:
            raise Invalid("At most 10 reference images are supported.", "image")
        inputs = await self.inputs_of(listed) if listed else []
        if inputs is None:
            raise Invalid("The image could not be downloaded or decoded.", "image")
        size = body.get("size")
        if model == SEEDEDIT:
            if size not in (None, "adaptive"):
                raise Invalid("The parameter `size` only supports adaptive.", "size")
            return input_size(inputs[0])
        if model == SEEDREAM_4 and size in NAMED:
            return NAMED[size]
        width, _, height = str(size or "1024x1024").partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise Invalid("The parameter `size` is invalid.", "size")
        w, h = int(width), int(height)
        if model == SEEDREAM_3 and not (512 <= w <= 2048 and 512 <= h <= 2048):
            raise Invalid("The parameter `size` must be within [512x512, 2048x2048].", "size")
        if model == SEEDREAM_4 and not (1280 * 720 <= w * h <= 4096 * 4096):
            raise Invalid("The parameter `size` must be within [1280x720, 4096x4096].", "size")
        return w, h
