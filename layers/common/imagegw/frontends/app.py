"""The ASGI app: routes from `imagegw.frontends.routes` (each front end's module imported at its
first request), one error handler, and one envelope around the routes (`Envelope`: request
ids and logging, path spelling, demo routing, a deadline on reading request bodies, CORS).

The same app runs under the Lambda Web Adapter (functions/api) and in `make run`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

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
from imagegw.frontends.cors import REQUEST_CONTEXT_HEADER, is_rest_api_context
from imagegw.frontends.demo_routing import demo_path, serves_tokenless
from imagegw.frontends.paths import normalize
from imagegw.infra import apimetrics
from imagegw.infra.collector import requests
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.providers import PROVIDERS
from imagegw.runners.gateway import Gateway

if TYPE_CHECKING:
    import httpx

    from imagegw.infra.storage import ImageStore

REQUEST_CONTEXT = REQUEST_CONTEXT_HEADER.encode()
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


class Envelope:
    """Pure ASGI middleware (streaming-safe), the one layer every request goes through before
    its route, with one wrapper of `send` and, for a request with a body, one of `receive`:

    - **request id and log**: an `x-request-id` header, the same id on every log line of the
      request (and the job id, once a job is known: `imagegw.runners.stepfunctions.service`),
      one log line a request (the path as the client wrote it) after its last byte, and the
      request's metrics (`imagegw.infra.apimetrics`). The ids are Powertools' context keys (a
      context variable): each request runs in a task of its own, so concurrent requests never
      see each other's ids;
    - **path spelling**: routes see `imagegw.frontends.paths.normalize(path)`;
    - **demo routing**: a request without an `Authorization` header goes to the demo provider
      when it serves token-less requests (`imagegw.frontends.demo_routing`);
    - **body deadline**: a client has `body_timeout` seconds from the start of its request to
      send the whole body, else a 408 and the connection is closed. uvicorn waits for a body
      as long as the client keeps the connection open, so a request declaring more bytes than
      it sends would hold a connection (and the task reading it) forever. Only reads of the
      body are timed: once it is complete, or once the answer has started, `receive` passes
      through untouched (streamed answers listen on it for the client leaving). An answer
      given before the body was read whole (an unknown route, a 405, an early error) carries
      `connection: close`, so the server does not wait for the rest either;
    - **CORS**: Starlette's `CORSMiddleware` around the routes, for every request
      (`CORS_SCOPE=all`) or only for those that came through API Gateway's REST API
      (`imagegw.frontends.cors`), when CORS_ALLOW_ORIGINS names any origin;
    - **requests in flight** (`imagegw.infra.collector.requests`): after one that ends alone,
      what the process loaded for good meanwhile is frozen out of the collector's walks.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_timeout: float,
        providers: Collection[str] = (),
        tokenless_to_demo: bool = False,
        cors: dict[str, Any] | None = None,
        cors_scope: str = "all",
    ) -> None:
        self.app = app
        self.timeout = body_timeout
        self.providers = frozenset(name.lower() for name in providers)
        self.demo = tokenless_to_demo
        self.cors = CORSMiddleware(app, **cors) if cors is not None else None
        self.cors_always = cors_scope == "all"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        began = time.monotonic()
        declares_body = authorized = False
        context: bytes | None = None
        for name, value in scope["headers"]:  # one pass over the headers
            if name == b"transfer-encoding" or (
                name == b"content-length" and value.strip() != b"0"
            ):
                declares_body = True
            elif name == b"authorization":
                authorized = True
            elif name == REQUEST_CONTEXT and context is None:
                context = value
        path: str = scope["path"]
        route = normalize(path, self.providers)
        if self.demo and not authorized:
            route = demo_path(route)
        inner = scope if route == path else {**scope, "path": route}
        app = self.app
        if self.cors is not None and (
            self.cors_always or is_rest_api_context(context.decode("latin-1") if context else None)
        ):
            app = self.cors
        status = 0
        pending = declares_body  # body bytes announced and not read yet
        started = False
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def send_once(message: Message) -> None:
            nonlocal status, started
            if not started and message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = message.get("headers", [])
                if pending:
                    headers = [
                        (name, value) for name, value in headers if name.lower() != b"connection"
                    ]
                    headers.append((b"connection", b"close"))
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

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

        token = apimetrics.begin()
        logger.thread_safe_append_keys(request_id=request_id)
        requests.began()
        try:
            await app(inner, receive_in_time if declares_body else receive, send_once)
        finally:
            requests.ended()  # (what the process loaded for good frozen: infra/collector)
            # after the last byte: streams are not held up
            recorder = apimetrics.finish(token, status)
            extra: dict[str, object] = {
                "method": scope["method"],
                "path": path,
                "status": status,
                "ms": round((time.monotonic() - began) * 1000),
            }
            if recorder is not None and recorder.codes:  # the error codes the client was told
                extra["error"] = ",".join(sorted(recorder.codes))
            logger.info("request", extra=extra)
            logger.thread_safe_remove_keys(["request_id", "job_id"])


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
        # nothing before readiness that a first request may not need: the S3 client (botocore,
        # the heaviest import) is built in the background from the first provider call on,
        # while the provider works, where results are stored (`Gateway.client`;
        # docs/architecture.md "Cold start and memory")
        yield
        await gateway.aclose()

    cors = {
        "allow_origins": settings.cors_origins,
        "allow_methods": ["*"],
        "allow_headers": ["*"],
        "expose_headers": EXPOSED_HEADERS,
        "max_age": 86400,
    }
    envelope = Middleware(
        Envelope,
        body_timeout=settings.body_timeout,
        # `/chat/completions`, `/v1//models`, `/v1/models/`: the routes' one spelling
        providers=PROVIDERS,
        tokenless_to_demo=serves_tokenless(settings),  # no token: the demo, when it is on
        # CORS_SCOPE=api-gateway (the stack): the Function URL answers CORS itself
        cors=cors if settings.cors_origins else None,
        cors_scope=settings.cors_scope,
    )
    app = Starlette(
        routes=all_routes(),
        middleware=[envelope],
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
