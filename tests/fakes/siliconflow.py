"""A fake SiliconFlow image API, faithful to the wire facts in provider-wire.md (seed 001).

Upstream docs: https://docs.siliconflow.cn/cn/api-reference/images/images-generations

Serve it with :class:`fakes.server.ServerThread`; its base URL is then ``{server.url}/v1`` like the
real ``https://api.siliconflow.cn/v1``. ``POST /v1/images/generations`` is synchronous: it answers
``{"images":[{"url":...}],"timings":{"inference":...},"seed":...}`` with an
``x-siliconcloud-trace-id`` header once the images are "made" (after ``latency`` seconds).

What it enforces, per model, as the real service does: ``image_size`` is required by
Qwen/Qwen-Image and Kwai-Kolors/Kolors and refused by the edit models; ``batch_size`` 1-4
(Kolors only); ``seed`` 0..9999999999; ``num_inference_steps`` 1-100; ``guidance_scale`` 0-20
(Kolors); ``cfg`` 0.1-20 (Qwen/Qwen-Image); input images (``image``, and ``image2``/``image3`` on
Qwen-Image-Edit-2509 only) as URLs it fetches or ``data:image/...;base64,`` URIs: Qwen-Image-Edit
needs ``image``, 2509 ``image`` and at most two more. Parameters a model does not take are ignored
(seed 001: "the service ignores extra parameters"). Errors come in the service's inconsistent
shapes: ``{"code","message","data"}`` for 400/429/503, bare JSON strings for 401/403/504, plain
text for 404. The code of a 400 other than "Model does not exist" (20012) is not documented; the
fake uses 20015.

Output images are served under ``/files/`` with an ``Expires`` query like the service's OSS
links; they answer 403 AccessDenied once expired (``url_ttl`` seconds, or ``expire_files``).

Records: ``requests`` (body, headers without Authorization, status), ``inputs`` (the bytes of
each accepted request's input images), ``file_requests``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import threading
import time
import uuid
from typing import Any, Final

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.png import make_png, png_size, sniff_image

TRACE_HEADER: Final = "x-siliconcloud-trace-id"
DEFAULT_TOKENS: Final = frozenset({"sk-sf-test-token"})
QWEN_IMAGE: Final = "Qwen/Qwen-Image"
QWEN_EDIT: Final = "Qwen/Qwen-Image-Edit"
QWEN_EDIT_2509: Final = "Qwen/Qwen-Image-Edit-2509"
KOLORS: Final = "Kwai-Kolors/Kolors"
MODELS: Final = frozenset({QWEN_IMAGE, QWEN_EDIT, QWEN_EDIT_2509, KOLORS})
#: model -> (required image fields, further image fields it takes)
IMAGE_FIELDS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    QWEN_IMAGE: ((), ()),
    KOLORS: ((), ()),
    QWEN_EDIT: (("image",), ()),
    QWEN_EDIT_2509: (("image",), ("image2", "image3")),
}
SIZED: Final = frozenset({QWEN_IMAGE, KOLORS})

MODEL_MISSING: Final = "Model does not exist. Please check it carefully."
INVALID_TOKEN: Final = "Invalid token"
RATE_LIMITED: Final = "Request was rejected due to rate limiting. Details: TPM limit reached."
OVERLOADED: Final = "Model service overloaded. Please try again later."
#: the documented error answers, by status: (body, is JSON)
DOCUMENTED_ERRORS: Final[dict[int, tuple[Any, bool]]] = {
    400: ({"code": 20012, "message": MODEL_MISSING, "data": None}, True),
    401: (INVALID_TOKEN, True),
    403: ("Sorry, your account balance is insufficient", True),
    404: ("404 page not found", False),
    429: ({"message": RATE_LIMITED, "data": None}, True),
    503: ({"code": 50505, "message": OVERLOADED, "data": None}, True),
    504: ("Gateway Timeout", True),
}
_SIZE: Final = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class Refused(Exception):
    """A request the service refuses with a 400 ``{"code","message","data"}``."""

    def __init__(self, message: str, code: int = 20015) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def error_response(status: int, body: Any, is_json: bool = True, **headers: str) -> Response:
    """One of the service's error answers, JSON (a string or an object) or plain text."""
    trace = {TRACE_HEADER: uuid.uuid4().hex, **headers}
    if is_json:
        return Response(json.dumps(body), status, media_type="application/json", headers=trace)
    return PlainTextResponse(str(body), status, headers=trace)


def _number(body: dict[str, Any], name: str, low: float, high: float, integer: bool) -> None:
    value = body.get(name)
    if value is None:
        return
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise Refused(f"Parameter {name} is invalid: must be between {low:g} and {high:g}.")


class FakeSiliconFlow:
    """ASGI app faking SiliconFlow's image API; call the instance.

    Controls (plain attributes): ``tokens``, ``models``, ``latency`` (seconds each generation
    takes), ``url_ttl`` (seconds output links live), ``expire_files`` (links answer expired now),
    ``next_error``: ``(status, body, is_json, headers)`` answered by the next generation, once
    (see ``fail_next``).
    """

    def __init__(self, *, tokens: set[str] | None = None, latency: float = 0.05) -> None:
        self.tokens: set[str] = set(DEFAULT_TOKENS if tokens is None else tokens)
        self.models: set[str] = set(MODELS)
        self.latency = latency
        self.url_ttl: float = 3600.0
        self.expire_files = False
        self.next_error: tuple[int, Any, bool, dict[str, str]] | None = None
        self.requests: list[dict[str, Any]] = []
        self.inputs: list[list[bytes]] = []
        self.file_requests: list[str] = []
        self.files: dict[str, tuple[int, int, tuple[int, int, int]]] = {}
        self.lock = threading.Lock()
        self.base_url = ""  # set by the fixture that serves it
        self.app = Starlette(
            routes=[
                Route("/v1/images/generations", self._generate, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ],
            exception_handlers={404: self._not_found, 405: self._not_found},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def fail_next(self, status: int, **headers: str) -> None:
        """Answer the next generation with the documented error body of `status`."""
        body, is_json = DOCUMENTED_ERRORS[status]
        self.next_error = (status, body, is_json, headers)

    # ----------------------------------------------------------------- generation

    async def _generate(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        record: dict[str, Any] = {
            "body": body,
            "headers": {k: v for k, v in request.headers.items() if k != "authorization"},
        }
        with self.lock:
            override, self.next_error = self.next_error, None
        if override is not None:
            status, payload, is_json, headers = override
            response = error_response(status, payload, is_json, **headers)
        else:
            response = await self._checked(request, body)
        record["status"] = response.status_code
        with self.lock:
            self.requests.append(record)
        return response

    async def _checked(self, request: Request, body: Any) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            return error_response(401, INVALID_TOKEN)
        try:
            if not isinstance(body, dict):
                raise Refused("Invalid request body.")
            model = body.get("model")
            if model not in self.models:
                raise Refused(MODEL_MISSING, code=20012)
            size = self._size(model, body)
            count = self._count(model, body)
            inputs = await self._inputs(model, body)
        except Refused as refused:
            payload = {"code": refused.code, "message": refused.message, "data": None}
            return error_response(400, payload)
        await asyncio.sleep(self.latency)
        if size is None:  # an edit: the picture keeps the first input's size
            size = png_size(inputs[0]) if sniff_image(inputs[0]) == "png" else (1024, 1024)
        base = self.base_url or f"{str(request.base_url).rstrip('/')}/v1"
        expires = int(time.time() + self.url_ttl)
        urls = []
        with self.lock:
            self.inputs.append(inputs)
            for _ in range(count):
                name = f"{uuid.uuid4().hex}.png"
                colour = (len(self.files) * 40 % 256, 120, 200)
                self.files[name] = (size[0], size[1], colour)
                signature = uuid.uuid4().hex[:16]
                files_base = base.removesuffix("/v1")
                urls.append(
                    f"{files_base}/files/{name}?OSSAccessKeyId=LTAIfake&Expires={expires}"
                    f"&Signature={signature}"
                )
        seed = body.get("seed")
        return JSONResponse(
            {
                "images": [{"url": url} for url in urls],
                "timings": {"inference": self.latency},
                "seed": seed if isinstance(seed, int) else 4242,
            },
            headers={TRACE_HEADER: uuid.uuid4().hex},
        )

    @staticmethod
    def _size(model: str, body: dict[str, Any]) -> tuple[int, int] | None:
        value = body.get("image_size")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise Refused("Parameter prompt is required.")
        if model not in SIZED:
            if value is not None:
                raise Refused(f"Parameter image_size is not supported by {model}.")
            return None
        if value is None:
            raise Refused("Parameter image_size is required.")
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            raise Refused("Parameter image_size is invalid: use widthxheight.")
        return int(match.group(1)), int(match.group(2))

    @staticmethod
    def _count(model: str, body: dict[str, Any]) -> int:
        _number(body, "seed", 0, 9_999_999_999, integer=True)
        _number(body, "num_inference_steps", 1, 100, integer=True)
        if model == KOLORS:
            _number(body, "batch_size", 1, 4, integer=True)
            _number(body, "guidance_scale", 0, 20, integer=False)
            return int(body.get("batch_size") or 1)
        if model == QWEN_IMAGE:
            _number(body, "cfg", 0.1, 20, integer=False)
        return 1

    async def _inputs(self, model: str, body: dict[str, Any]) -> list[bytes]:
        required, optional = IMAGE_FIELDS[model]
        inputs = []
        for name in (*required, *optional):
            value = body.get(name)
            if value is None:
                if name in required:
                    raise Refused(f"Parameter {name} is required for {model}.")
                continue
            inputs.append(await self._image(name, value))
        return inputs

    @staticmethod
    async def _image(name: str, value: Any) -> bytes:
        if not isinstance(value, str):
            raise Refused(f"Parameter {name} must be a URL or a base64 data URI.")
        if value.startswith("data:"):
            header, _, payload = value.partition(",")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise Refused(f"Parameter {name} has invalid base64 data.") from None
            if ";base64" not in header or sniff_image(data) is None:
                raise Refused(f"Parameter {name} is not a base64 image.")
            return data
        try:
            async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
                answer = await client.get(value, follow_redirects=True)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError):
            raise Refused(f"Failed to download {name}.") from None
        if answer.status_code != 200 or sniff_image(answer.content) is None:
            raise Refused(f"Failed to download {name}: HTTP {answer.status_code}.")
        return answer.content

    # ----------------------------------------------------------------- output links

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self.lock:
            self.file_requests.append(name)
            made = self.files.get(name)
        expires = request.query_params.get("Expires", "")
        if made is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        if self.expire_files or not expires.isdigit() or int(expires) < time.time():
            return _oss_error(403, "AccessDenied", "Request has expired.")
        width, height, colour = made
        data = await asyncio.to_thread(make_png, width, height, colour)
        return Response(data, media_type="image/png")

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return error_response(404, "404 page not found", is_json=False)


def _oss_error(status: int, code: str, message: str) -> Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>\n"
    )
    return Response(xml, status_code=status, media_type="application/xml")
