"""A fake OpenAI-compatible image server in two styles, faithful to provider-wire.md.

Upstream docs: https://platform.openai.com/docs/api-reference/images (and seed 003's README)

``FakeOpenAIImages(style="qwen")`` is seed 003's self-hosted Qwen-Image server (FastAPI): no
auth; ``POST /v1/images/generations`` (JSON) takes ``prompt`` and its own ``width``/``height``
(default 1664x928), ``negative_prompt``, ``num_inference_steps``, ``true_cfg_scale``, ``seed``, and
ignores everything else (``model``, ``n``, ``size``, ``response_format``); ``POST /v1/images/edits``
is multipart with one ``image`` file and ``prompt``. It answers
``{"created","data":[{"b64_json"}]}`` only, one image; a missing field is FastAPI's 422
``{"detail":[{"loc","msg","type"}]}``.

``FakeOpenAIImages(style="openai")`` is OpenAI's API: a bearer key; ``n`` (1-10) and ``size``
honoured; answers ``url`` (served by the fake under ``/files/``) or ``b64_json`` per
``response_format`` (default ``url``); ``gpt-image-*`` models answer ``b64_json`` and refuse
``response_format``; edits are multipart with ``image`` or repeated ``image[]`` files and an
optional ``mask``. Parameters OpenAI does not know are refused with a 400 (the real API does
so). Errors are ``{"error":{"message","type","param","code"}}``. ``stream: true`` (JSON, or
``"true"`` in an edit's form) on a ``gpt-image-*`` model answers ``text/event-stream``: per image,
``partial_images`` (0-3) ``image_generation.partial_image`` events (edits: ``image_edit.*``),
then its ``*.completed`` event; ``stream`` on a dall-e model is a 400. ``fail_stream``: when set,
a streamed answer sends one partial image, then an ``error`` event with this message.

Records: ``requests``: path, ``fields`` (the JSON body or the multipart text fields), ``files``
(``(field, filename, content type, bytes)``), headers without Authorization, status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import uuid
from typing import Any, Final, Literal

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.png import make_png, png_size, sniff_image

Style = Literal["qwen", "openai"]
DEFAULT_TOKENS: Final = frozenset({"sk-openai-test"})
OPENAI_MODELS: Final = frozenset({"gpt-image-1", "dall-e-2", "dall-e-3"})
#: what OpenAI's image endpoints take; anything else is a 400
GENERATE_PARAMS: Final = frozenset(
    {
        "prompt",
        "model",
        "n",
        "size",
        "quality",
        "response_format",
        "style",
        "background",
        "output_format",
        "output_compression",
        "moderation",
        "user",
        "stream",
        "partial_images",
    }
)
EDIT_PARAMS: Final = frozenset(
    {
        "prompt", "model", "n", "size", "quality", "response_format", "background", "user",
        "stream", "partial_images",
    }
)  # fmt: skip
QWEN_DEFAULT_SIZE: Final = (1664, 928)
_SIZE: Final = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class Refused(Exception):
    """An answer other than 200: status and body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> Refused:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return Refused(
        status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


def fastapi_missing(*loc: str) -> Refused:
    return Refused(
        422,
        {"detail": [{"type": "missing", "loc": list(loc), "msg": "Field required", "input": None}]},
    )


class FakeOpenAIImages:
    """ASGI app faking an OpenAI-compatible image server; call the instance.

    Controls: ``style``, ``tokens`` (openai style), ``next_error``: ``(status, body)`` answered by
    the next image request, once.
    """

    def __init__(self, style: Style = "qwen") -> None:
        self.style: Style = style
        self.tokens: set[str] = set(DEFAULT_TOKENS)
        self.next_error: tuple[int, Any] | None = None
        self.fail_stream: str | None = None
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.base_url = ""  # set by the fixture that serves it
        self.app = Starlette(
            routes=[
                Route("/v1/images/generations", self._generations, methods=["POST"]),
                Route("/v1/images/edits", self._edits, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # ----------------------------------------------------------------- endpoints

    async def _generations(self, request: Request) -> Response:
        try:
            fields: Any = json.loads(await request.body())
        except ValueError:
            fields = None
        return await self._answer(request, "generations", fields, [])

    async def _edits(self, request: Request) -> Response:
        fields: dict[str, Any] = {}
        files: list[tuple[str, str, str, bytes]] = []
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    files.append((name, value.filename or "", value.content_type or "", data))
                else:
                    fields[name] = value
        return await self._answer(request, "edits", fields, files)

    async def _answer(
        self, request: Request, kind: str, fields: Any, files: list[tuple[str, str, str, bytes]]
    ) -> Response:
        record = {
            "path": request.url.path,
            "fields": fields,
            "files": files,
            "headers": {k: v for k, v in request.headers.items() if k != "authorization"},
        }
        with self.lock:
            override, self.next_error = self.next_error, None
        try:
            if override is not None:
                raise Refused(*override)
            if not isinstance(fields, dict):
                raise openai_error(400, "We could not parse the JSON body of your request.")
            if self.style == "qwen":
                data = self._qwen(kind, fields, files)
            else:
                data = self._openai(request, kind, fields, files)
            response: Response = JSONResponse({"created": int(time.time()), "data": data})
            if self.style == "openai" and str(fields.get("stream")).lower() == "true":
                response = self._streamed(kind, fields, data)
        except Refused as refused:
            response = JSONResponse(refused.body, status_code=refused.status)
        record["status"] = response.status_code
        with self.lock:
            self.requests.append(record)
        await asyncio.sleep(0)
        return response

    # ----------------------------------------------------------------- seed 003's server

    def _qwen(
        self, kind: str, fields: dict[str, Any], files: list[tuple[str, str, str, bytes]]
    ) -> list[dict[str, str]]:
        if not isinstance(fields.get("prompt"), str):
            raise fastapi_missing("body", "prompt")
        if kind == "edits":
            image = next((data for name, _, _, data in files if name == "image"), None)
            if image is None:
                raise fastapi_missing("body", "image")
            size = png_size(image) if sniff_image(image) == "png" else QWEN_DEFAULT_SIZE
        else:
            size = (int(fields.get("width", 1664)), int(fields.get("height", 928)))
        return [{"b64_json": base64.b64encode(make_png(*size)).decode()}]

    # ----------------------------------------------------------------- OpenAI's API

    def _openai(
        self,
        request: Request,
        kind: str,
        fields: dict[str, Any],
        files: list[tuple[str, str, str, bytes]],
    ) -> list[dict[str, str]]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            raise openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        known = GENERATE_PARAMS if kind == "generations" else EDIT_PARAMS
        for name in fields:
            if name not in known:
                raise openai_error(
                    400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
                )
        model = str(fields.get("model") or "dall-e-2")
        if model not in OPENAI_MODELS:
            raise openai_error(
                404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        if not isinstance(fields.get("prompt"), str) or not fields["prompt"]:
            raise openai_error(400, "Missing required parameter: 'prompt'.", param="prompt")
        streamed = str(fields.get("stream")).lower() == "true"
        if streamed and not model.startswith("gpt-image"):
            raise openai_error(400, f"Streaming is not supported for {model}.", param="stream")
        partial = fields.get("partial_images")
        if partial is not None and str(partial) not in ("0", "1", "2", "3"):
            raise openai_error(400, "'partial_images' must be 0 to 3.", param="partial_images")
        b64 = model.startswith("gpt-image")
        if b64 and "response_format" in fields:
            raise openai_error(
                400, "Unknown parameter: 'response_format'.", param="response_format"
            )
        b64 = b64 or fields.get("response_format") == "b64_json"
        if kind == "edits" and not any(name in ("image", "image[]") for name, *_ in files):
            raise openai_error(400, "Missing required parameter: 'image'.", param="image")
        n = int(fields.get("n") or 1)
        match = _SIZE.match(str(fields.get("size") or "1024x1024"))
        size = (int(match.group(1)), int(match.group(2))) if match else (1024, 1024)
        data = []
        for index in range(n):
            png = make_png(*size, (index * 60 % 256, 90, 30))
            if b64:
                data.append({"b64_json": base64.b64encode(png).decode()})
            else:
                name = f"{uuid.uuid4().hex}.png"
                with self.lock:
                    self.files[name] = png
                base = self.base_url.removesuffix("/v1") or str(request.base_url).rstrip("/")
                data.append({"url": f"{base}/files/{name}"})
        return data

    def _streamed(self, kind: str, fields: dict[str, Any], data: list[dict[str, str]]) -> Response:
        """OpenAI's image event stream of `data` (b64 items): previews, then each image."""
        prefix = "image_edit" if kind == "edits" else "image_generation"
        partials = int(fields.get("partial_images") or 0)
        blocks: list[str] = []

        def send(name: str, payload: dict[str, Any]) -> None:
            blocks.append(f"event: {name}\ndata: {json.dumps(payload)}\n\n")

        common = {"size": "auto", "quality": "auto", "background": "auto", "output_format": "png"}
        for item in data:
            png = base64.b64decode(item["b64_json"])
            width, height = png_size(png)
            for index in range(partials):
                preview = make_png(max(1, width // 4), max(1, height // 4), (index * 80, 0, 0))
                send(
                    f"{prefix}.partial_image",
                    {
                        "type": f"{prefix}.partial_image",
                        "b64_json": base64.b64encode(preview).decode(),
                        "partial_image_index": index,
                        "created_at": int(time.time()),
                        **common,
                    },
                )
                if self.fail_stream is not None:
                    error = {"message": self.fail_stream, "type": "server_error"}
                    send("error", {"type": "error", "error": error})
                    return Response("".join(blocks), media_type="text/event-stream")
            usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0,
                     "text_tokens": 0}, "output_tokens": 0, "total_tokens": 0}  # fmt: skip
            send(
                f"{prefix}.completed",
                {
                    "type": f"{prefix}.completed",
                    "b64_json": item["b64_json"],
                    "created_at": int(time.time()),
                    "usage": usage,
                    **common,
                },
            )
        return Response("".join(blocks), media_type="text/event-stream")

    async def _file(self, request: Request) -> Response:
        with self.lock:
            png = self.files.get(request.path_params["name"])
        if png is None:
            return Response(status_code=404)
        return Response(png, media_type="image/png")
