"""The ASGI app: thin routes wiring request parsing, providers, the poll loop and rendering.

The same app runs under the Lambda Web Adapter (functions/api) and in `make run`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegw import generation
from imagegw.config import Settings
from imagegw.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    render,
)
from imagegw.gateway import Gateway
from imagegw.generation import Event, Progress
from imagegw.images import decode_refs
from imagegw.log import logger
from imagegw.messages import parse_messages
from imagegw.options import image_count
from imagegw.providers.base import GenerationRequest, ModelKind, Provider
from imagegw.schemas import ChatRequest, Completion, model_card, model_list
from imagegw.storage import ImageStore
from imagegw.streaming import chat_stream, collect, markdown

_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)
EXPOSED_HEADERS = ["retry-after", "x-request-id", "x-should-retry"]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = render(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def api_key(request: Request) -> SecretStr:
    """The client's bearer token, passed on to the provider as its key."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError(
            "Missing Authorization header: send your provider key as 'Bearer <key>'.",
            code="missing_api_key",
        )
    match = _BEARER.match(header)
    if match is None:
        raise AuthenticationError(
            "Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key"
        )
    return SecretStr(match.group(1))


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"The request body is {declared} bytes; the limit is {limit} bytes.",
            code="request_too_large",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"The request body is over the limit of {limit} bytes.", code="request_too_large"
            )
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def _validation_error(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return InvalidRequestError(f"Invalid '{param}': {first['msg']}.", param=param)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def list_models(request: Request) -> Response:
    provider = _gateway(request).provider(request.path_params.get("provider"))
    return JSONResponse(model_list(provider.name, [m.id for m in provider.catalog]))


async def get_model(request: Request) -> Response:
    provider = _gateway(request).provider(request.path_params.get("provider"))
    model = request.path_params["model"]
    if not any(m.id == model for m in provider.catalog):
        raise NotFoundError(
            f"The model '{model}' is not listed by {provider.title}.", param="model"
        )
    return JSONResponse(model_card(provider.name, model))


def _events(
    store: ImageStore,
    provider: Provider,
    request: GenerationRequest,
    inputs: tuple[Any, ...],
    settings: Settings,
) -> AsyncIterator[Event]:
    """Upload input images, then run the generation."""

    async def events() -> AsyncIterator[Event]:
        began = time.monotonic()
        staged = request
        if any(not isinstance(item, str) for item in inputs):
            yield Progress("UPLOADING", 0.0, 0, request.n)
        if inputs:
            staged = _replace_images(request, await store.stage(inputs))
        async for event in generation.run(provider, staged, settings):
            if isinstance(event, Progress):
                event = Progress(event.state, time.monotonic() - began, event.done, event.total)
            yield event

    return events()


def _replace_images(request: GenerationRequest, images: tuple[Any, ...]) -> GenerationRequest:
    from dataclasses import replace

    return replace(request, images=images)


async def chat_completions(request: Request) -> Response:
    gateway = _gateway(request)
    provider = gateway.provider(request.path_params.get("provider"))
    key = api_key(request)
    body = await read_json(request, gateway.settings.max_body_bytes)
    try:
        chat = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    kind = provider.classify(chat.model)
    messages = [m.model_dump() for m in chat.messages]
    parsed = parse_messages(messages, edit=kind is ModelKind.EDIT)
    n = image_count(chat.fields.get("n"))
    options = provider.prepare(chat.model, kind, chat.fields, len(parsed.images))
    inputs = decode_refs(parsed.images, max_bytes=gateway.settings.max_image_bytes)
    job = GenerationRequest(
        provider=provider.name,
        model=chat.model,
        kind=kind,
        prompt=parsed.prompt,
        api_key=key,
        options=options,
        n=n,
    )
    logger.info(
        "chat generation",
        extra={
            "provider": provider.name,
            "model": chat.model,
            "kind": str(kind),
            "images": len(inputs),
            "from_history": parsed.from_history,
            "n": n,
            "stream": chat.stream,
        },
    )
    events = _events(gateway.store, provider, job, inputs, gateway.settings)
    completion = Completion(chat.model)
    if not chat.stream:
        result = await collect(events)
        return JSONResponse(completion.message(markdown(result)))
    intro = f"{provider.title} · {chat.model} · {n} image{'s' if n > 1 else ''}"
    if parsed.from_history:
        intro += " · editing the previous image"
    return StreamingResponse(
        chat_stream(
            events,
            completion,
            include_usage=chat.include_usage,
            keepalive_interval=gateway.settings.keepalive_interval,
            intro=intro + "\n",
        ),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _gateway_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(
            NotFoundError(f"No route for {request.method} {request.url.path}.", code="unknown_url")
        )
    if exc.status_code == 405:
        allowed = exc.headers.get("allow", "") if exc.headers else ""
        return error_response(
            MethodNotAllowedError(
                f"{request.method} is not allowed on {request.url.path}.",
                code="method_not_allowed",
                headers={"allow": allowed} if allowed else None,
            )
        )
    return error_response(GatewayError(str(exc.detail), code=str(exc.status_code)))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return error_response(exc)


class RequestLog:
    """Pure ASGI middleware (streaming-safe): a request id header and one log line a request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        began = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.monotonic() - began) * 1000),
                },
            )


def _routes() -> list[Route]:
    routes = [Route("/", health), Route("/healthz", health)]
    for prefix in ("", "/{provider}"):
        routes += [
            Route(f"{prefix}/v1/models", list_models, methods=["GET"]),
            Route(f"{prefix}/v1/models/{{model:path}}", get_model, methods=["GET"]),
            Route(f"{prefix}/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    return routes


def create_app(
    settings: Settings | None = None,
    *,
    http_client: httpx.AsyncClient | None = None,
    store: ImageStore | None = None,
) -> Starlette:
    """The gateway app. Reads settings from the environment unless given; does no I/O."""
    settings = settings or Settings.from_env()
    gateway = Gateway(settings, http_client=http_client, store=store)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.aclose()

    middleware = [Middleware(RequestLog)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=EXPOSED_HEADERS,
                max_age=86400,
            )
        )
    app = Starlette(
        routes=_routes(),
        middleware=middleware,
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
