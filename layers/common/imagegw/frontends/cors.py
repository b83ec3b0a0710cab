"""CORS for the requests that came through API Gateway only (`CORS_SCOPE=api-gateway`).

On Lambda the Function URL answers browsers' CORS itself (its `Cors` settings), so the app must
not add the headers a second time there; the REST API passes every request, preflights included,
to the app, which answers CORS for those (`imagegw.frontends.app.Envelope` applies Starlette's
CORSMiddleware to the requests `is_rest_api_context` picks). The Lambda Web Adapter tells the
two apart for us: it forwards the event's request context as the `x-amzn-request-context`
header, and only an API Gateway REST (payload 1.0) context has a `resourcePath`.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from imagegw.errors import InvalidRequestError
from imagegw.frontends.inbound import parse_json_text

REQUEST_CONTEXT_HEADER = "x-amzn-request-context"


def came_through_rest_api(headers: Headers) -> bool:
    """Whether the Web Adapter forwarded this request from an API Gateway REST API event."""
    return is_rest_api_context(headers.get(REQUEST_CONTEXT_HEADER))


def is_rest_api_context(raw: str | None) -> bool:
    """Whether `raw`, the request context header's value, is an API Gateway REST API's."""
    if not raw:
        return False
    try:
        context = parse_json_text(raw, what=REQUEST_CONTEXT_HEADER)  # depth-bounded
    except InvalidRequestError:
        return False
    return isinstance(context, dict) and "resourcePath" in context
