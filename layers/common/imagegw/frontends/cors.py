"""CORS for the requests that came through API Gateway only (`CORS_SCOPE=api-gateway`).

On Lambda the Function URL answers browsers' CORS itself (its `Cors` settings), so the app must
not add the headers a second time there; the REST API passes every request, preflights included,
to the app, which answers CORS for those. The Lambda Web Adapter tells the two apart for us: it
forwards the event's request context as the `x-amzn-request-context` header, and only an API
Gateway REST (payload 1.0) context has a `resourcePath`.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from imagegw.errors import InvalidRequestError
from imagegw.frontends.inbound import parse_json_text

REQUEST_CONTEXT_HEADER = "x-amzn-request-context"


def came_through_rest_api(headers: Headers) -> bool:
    """Whether the Web Adapter forwarded this request from an API Gateway REST API event."""
    raw = headers.get(REQUEST_CONTEXT_HEADER)
    if not raw:
        return False
    try:
        context = parse_json_text(raw, what=REQUEST_CONTEXT_HEADER)  # depth-bounded
    except InvalidRequestError:
        return False
    return isinstance(context, dict) and "resourcePath" in context


class ApiGatewayCORS:
    """Starlette's CORSMiddleware, applied only to requests that came through API Gateway."""

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and came_through_rest_api(Headers(scope=scope)):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
