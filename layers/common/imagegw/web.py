"""Helpers shared by the routes: the client's key, JSON bodies, error responses."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import SecretStr, ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse

from imagegw.config import Settings
from imagegw.errors import (
    AuthenticationError,
    InvalidRequestError,
    PayloadTooLargeError,
    render,
)
from imagegw.gateway import Gateway
from imagegw.redaction import protect

_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


def gateway_of(request: Request) -> Gateway:
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
    token = match.group(1)
    protect(token)  # redacted from every error and log line of this request from now on
    return SecretStr(token)


def check_length(request: Request, limit: int) -> None:
    """Refuse a body whose declared length is over `limit` bytes before reading it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"The request body is {declared} bytes; the limit is {limit} bytes.",
            code="request_too_large",
        )


async def limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body's chunks, refusing bodies over `limit` bytes as they arrive."""
    check_length(request, limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"The request body is over the limit of {limit} bytes.", code="request_too_large"
            )
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, refusing bodies over `limit` bytes."""
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over `limit` bytes."""
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


async def read_form(request: Request, limit: int) -> list[tuple[str, str | bytes]]:
    """A multipart/form-data body as (name, value) pairs in order: text fields as strings,
    files as their bytes. Bodies over `limit` bytes are refused while they arrive."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise InvalidRequestError(
            "The request body must be multipart/form-data "
            f"(got {content_type[:100] or 'no content type'}).",
            code="invalid_content_type",
        )
    parser = MultiPartParser(request.headers, limited_stream(request, limit), max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequestError(
            f"The multipart body cannot be read: {exc.message}", code="invalid_multipart"
        ) from None
    try:
        return [
            (name, value if isinstance(value, str) else await value.read())
            for name, value in form.multi_items()
        ]
    finally:
        await form.close()


def public_base_url(request: Request, settings: Settings) -> str:
    """The gateway's public URL as the client sees it, for lasting links.

    PUBLIC_BASE_URL wins; else the Host and X-Forwarded-Proto headers (a Function URL and API
    Gateway set both), plus the stage of an API Gateway REST request (`/Prod`), which the Web
    Adapter passes in its `x-amzn-request-context` header.
    """
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("host") or request.url.netloc
    prefix = ""
    context = request.headers.get("x-amzn-request-context")
    if context:
        try:
            parsed = json.loads(context)
        except ValueError:
            parsed = {}
        stage = parsed.get("stage") if isinstance(parsed, dict) else None
        domain = str(parsed.get("domainName", "")) if isinstance(parsed, dict) else ""
        if stage and stage != "$default" and ".execute-api." in domain and domain == host:
            prefix = f"/{stage}"
    return f"{scheme}://{host}{prefix}"


def client_budget(request: Request) -> float | None:
    """Seconds a non-streamed answer may take before the client gives up, from the OpenAI SDKs'
    `x-stainless-read-timeout` (Python) or `x-stainless-timeout` (Cherry Studio sends 600)
    header, less a margin; None if not said.

    The SDKs retry a timed-out request, which would pay for the generation again: answering a
    clear 504 (with x-should-retry: false) just before the client's own timer runs out avoids it.
    """
    raw = request.headers.get("x-stainless-read-timeout") or request.headers.get(
        "x-stainless-timeout"
    )
    try:
        seconds = float(raw) if raw else 0.0
    except ValueError:
        return None
    if not 0 < seconds < 86400:
        return None
    return max(1.0, seconds - max(2.0, 0.05 * seconds))


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """A pydantic error as a 400 naming the first bad field."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return InvalidRequestError(f"Invalid '{param}': {first['msg']}.", param=param)
