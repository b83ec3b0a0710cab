"""The ASGI app: routes from `imagegw.frontends.routes` (each front end's module imported at its
first request), one error handler, CORS, request logging and a deadline on reading request
bodies.

The same app runs under the Lambda Web Adapter (functions/api) and in `make run`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegw.errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTimeoutError,
)
from imagegw.frontends import routes
from imagegw.frontends.common import error_response
from imagegw.frontends.cors import ApiGatewayCORS
from imagegw.frontends.demo_routing import TokenlessToDemo
from imagegw.frontends.paths import NormalizePath
from imagegw.infra import apimetrics
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.providers import PROVIDERS
from imagegw.runners.gateway import Gateway

if TYPE_CHECKING:
    import httpx

    from imagegw.infra.storage import ImageStore

EXPOSED_HEADERS = [
    "retry-after",
    "x-request-id",
    "x-should-retry",
    "location",
    "preference-applied",
    "x-ignored-parameters",
    "x-model-treatment",
]


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _gateway_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        return error_response(
            NotFoundError(f"No route for {request.method} {path}.", code="unknown_url")
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("allow")
        return error_response(
            MethodNotAllowedError(
                f"{request.method} is not allowed on {path}.",
                code="method_not_allowed",
                headers={"allow": allowed} if allowed else None,
            )
        )
    return error_response(GatewayError(str(exc.detail), code=str(exc.status_code)))


async def _client_left(request: Request, exc: Exception) -> Response:
    """A client that hung up while sending its body: nothing started, nobody reads the
    answer; an ordinary event, not a failure of the gateway."""
    logger.info("client left while sending its body", extra={"path": request.url.path})
    return error_response(
        InvalidRequestError(
            "The client disconnected before sending its whole request body.",
            code="client_disconnected",
        )
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return error_response(exc)


class RequestLog:
    """Pure ASGI middleware (streaming-safe): a request id header, the same id on every log
    line of the request (and the job id, once a job is known:
    `imagegw.runners.stepfunctions.service`), one
    log line a request, and the request's metrics (`imagegw.infra.apimetrics`).

    The ids are Powertools' context keys (a context variable): each request runs in a task of
    its own, so concurrent requests never see each other's ids."""

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
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message["headers"] = headers
            await send(message)

        token = apimetrics.begin()
        logger.thread_safe_append_keys(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # after the last byte: streams are not held up
            recorder = apimetrics.finish(token, status)
            extra: dict[str, object] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round((time.monotonic() - began) * 1000),
            }
            if recorder is not None and recorder.codes:  # the error codes the client was told
                extra["error"] = ",".join(sorted(recorder.codes))
            logger.info("request", extra=extra)
            logger.thread_safe_remove_keys(["request_id", "job_id"])


class BodyDeadline:
    """Pure ASGI middleware: a client has `timeout` seconds from the start of its request to
    send the whole body, else a 408 and the connection is closed. uvicorn waits for a body as
    long as the client keeps the connection open, so a request declaring more bytes than it
    sends would hold a connection (and the task reading it) forever.

    Only reads of the body are timed: once it is complete, or once the answer has started,
    `receive` passes through untouched (streamed answers listen on it for the client leaving).
    An answer given before the body was read whole (an unknown route, a 405, an early error)
    carries `connection: close`, so the server does not wait for the rest either.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _declares_body(scope):
            # nothing to time (`GET /v1/models`)
            await self.app(scope, receive, send)
            return
        pending = True
        deadline = asyncio.get_running_loop().time() + self.timeout
        started = False

        async def receive_in_time() -> Message:
            nonlocal pending
            if not pending or started:
                return await receive()
            try:
                # asyncio's own timeout: anyio's cancel scope cost more than the read
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"The request body did not arrive within {self.timeout:g} seconds.",
                    code="body_timeout",
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                pending = False
            return message

        async def send_closing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                if pending:
                    headers = [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() != b"connection"
                    ]
                    message["headers"] = [*headers, (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive_in_time, send_closing)


def _declares_body(scope: Scope) -> bool:
    """Whether the request announces a body (a non-zero Content-Length, or chunked)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def all_routes() -> list[BaseRoute]:
    return [Route("/healthz", health), *routes.routes()]


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
        # nothing before readiness that a first request may not need: the S3 client (boto3,
        # the heaviest import) is built in the background from the first provider call on,
        # while the provider works (`Gateway.client`; docs/architecture.md "Cold start and memory")
        yield
        await gateway.aclose()

    middleware = [
        Middleware(RequestLog),
        # `/chat/completions`, `/v1//models`, `/v1/models/`: the routes' one spelling
        Middleware(NormalizePath, providers=PROVIDERS),
        Middleware(TokenlessToDemo, settings=settings),  # no token: the demo, when it is on
        Middleware(BodyDeadline, timeout=settings.body_timeout),
    ]
    if settings.cors_origins:
        # CORS_SCOPE=api-gateway (the stack): the Function URL answers CORS itself
        cors = CORSMiddleware if settings.cors_scope == "all" else ApiGatewayCORS
        middleware.append(
            Middleware(
                cors,
                allow_origins=settings.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=EXPOSED_HEADERS,
                max_age=86400,
            )
        )
    app = Starlette(
        routes=all_routes(),
        middleware=middleware,
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_left,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    # (the Batch API's service is made by its first request: `routes.batches.batches_of`)
    app.state.gateway = gateway
    return app
