"""Helpers shared by the routes: the one request reader (the client's key, headers, JSON and
multipart bodies, each checked by `imagegw.frontends.inbound`) and error responses.

Routes read a request only through these functions, key first (`api_key` looks at headers
only, so a request with a malformed key is refused before its body is read).
"""

from __future__ import annotations

import codecs
import hashlib
import re
from typing import Any, Final

from pydantic import SecretStr
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from imagegw.access import lease
from imagegw.access.gate import Caller
from imagegw.errors import (
    AuthenticationError,
    InvalidRequestError,
    PayloadTooLargeError,
)
from imagegw.frontends.common import gateway_of
from imagegw.frontends.cors import came_through_rest_api
from imagegw.frontends.inbound import (
    check_header,
    check_key,
    check_text,
    parse_apart,
    parse_json_text,
)
from imagegw.infra.config import Settings
from imagegw.infra.spans import Apart
from imagegw.providers import PROVIDERS
from imagegw.providers.demo import NO_TOKEN
from imagegw.redaction import protect
from imagegw.runners.stepfunctions.service import owner_of

#: the longest a non-streamed answer through the REST API may take: API Gateway closes a
#: regional REST API's stream after 5 minutes without a byte (README "Limits"), less a margin
REST_IDLE_BUDGET: Final = 285.0

_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)
#: an API Gateway stage name ("$default", of HTTP APIs, is never a path prefix)
_STAGE = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: a Host header: a DNS name or IPv4 address, or a bracketed IPv6 address, and a port
_HOST = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")


def header(request: Request, name: str) -> str | None:
    """A request header the routes read, None when absent; a 400 unless printable ASCII."""
    value = request.headers.get(name)
    return None if value is None else check_header(value, name)


def api_key(request: Request) -> SecretStr:
    """The client's bearer token, passed on to the provider as its key: printable ASCII of a
    bounded length (`inbound.check_key`), else a 401 that never repeats it. Reads headers only:
    call it before reading the body."""
    value = request.headers.get("authorization")
    if not value:
        raise AuthenticationError(
            "Missing Authorization header: send your provider key as 'Bearer <key>'.",
            code="missing_api_key",
        )
    match = _BEARER.match(value)
    if match is None:
        raise AuthenticationError(
            "Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key"
        )
    token = check_key(match.group(1))
    protect(token)  # redacted from every error and log line of this request from now on
    return SecretStr(token)


def bearer_for(request: Request, provider: str) -> SecretStr:
    """`api_key`, except that a request without an Authorization header to a provider that
    needs no token (the demo) is the anonymous caller `NO_TOKEN`, unless ACCESS_MODE is
    `keys` (anyone may try the demo, except where only gateway keys are served)."""
    if _tokenless(provider) and _anonymous(request):
        return SecretStr(NO_TOKEN)
    return api_key(request)


def _tokenless(provider: str) -> bool:
    served = PROVIDERS.get(provider)
    return served is not None and not served.needs_token


def _anonymous(request: Request) -> bool:
    """No Authorization header, where that may be served (not in the `keys` access mode)."""
    if gateway_of(request).settings.access_mode == "keys":
        return False
    return request.headers.get("authorization") is None


def anonymous(caller: Caller) -> bool:
    """Whether `caller` is the demo's anonymous caller (no token, or the placeholder `NO_TOKEN`
    sent as one: a token anyone could guess), whom nothing tells apart from any other."""
    return not caller.keyed and caller.bearer.get_secret_value() == NO_TOKEN


def owner_for(caller: Caller) -> str:
    """Who keeps what `caller` stores (files, batches): a hash of their bearer token. The demo's
    anonymous callers cannot be told apart, so they keep nothing another could list: a 401."""
    if anonymous(caller):
        raise AuthenticationError(
            "Files and batches are kept apart by token, and callers without one cannot be told "
            "apart: send one as 'Bearer <key>' (the demo takes any but 'demo').",
            code="missing_api_key",
        )
    return owner_of(caller.bearer.get_secret_value())


async def authorize(request: Request, provider: str) -> tuple[Caller, SecretStr]:
    """The caller (`imagegw.access.gate`, by ACCESS_MODE) and the token the provider gets: the
    client's own, or for a gateway key the next server-held token of the provider's pool (its
    lease made current, so a refused submission fails over). A provider that needs no token
    (the demo) takes a request without one, unless ACCESS_MODE is `keys`. Reads headers only:
    call it before reading the body (a refused key then writes, starts and calls nothing)."""
    access = gateway_of(request).access
    tokenless = _tokenless(provider)
    if tokenless and _anonymous(request):
        lease.use(None)
        return Caller(SecretStr(NO_TOKEN)), SecretStr(NO_TOKEN)
    bearer = api_key(request)
    caller = await access.caller(bearer.get_secret_value(), provider)
    if not caller.keyed:
        lease.use(None)
        return caller, bearer
    if tokenless:  # a gateway key, checked and counted; no server-held token to lease
        lease.use(None)
        return caller, SecretStr(NO_TOKEN)
    leased = await access.lease(provider, caller.record.hash if caller.record else None)
    lease.use(leased)
    return caller, leased.token


def check_length(request: Request, limit: int) -> None:
    """Refuse a body whose declared length is over `limit` bytes before reading it."""
    declared = request.headers.get("content-length", "").strip()
    if not (declared.isascii() and declared.isdigit()):
        return  # absent or not a number: the server refuses those; the stream is counted anyway
    if len(declared) > 18 or int(declared) > limit:  # 18 digits: no int() of thousands
        raise PayloadTooLargeError(
            f"The request body is {declared[:20]} bytes; the limit is {limit} bytes.",
            code="request_too_large",
        )


class _Counted:
    """A request body counted as it arrives: past `limit` bytes, a 413; once whole, its SHA-256
    kept as `request.state.body_sha256` (the body as read: `imagegw.frontends.replays`)."""

    __slots__ = ("digest", "limit", "request", "size")

    def __init__(self, request: Request, limit: int) -> None:
        check_length(request, limit)
        self.request, self.limit, self.size = request, limit, 0
        self.digest = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLargeError(
                f"The request body is over the limit of {self.limit} bytes.",
                code="request_too_large",
            )
        self.digest.update(chunk)

    def whole(self) -> None:
        self.request.state.body_sha256 = self.digest.hexdigest()


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over `limit` bytes and anything
    that could not be sent on as UTF-8 JSON (`inbound.parse_json`). Read a chunk at a time,
    each long plain string in it (a client's data URI) held apart as it comes
    (`imagegw.infra.spans.Apart`, `inbound.parse_apart`): a client's 4 MB image is one str,
    not also the body's bytes and their text alive beside it while it is parsed."""
    counted = _Counted(request, limit)
    apart = Apart()
    async for chunk in request.stream():
        counted.add(chunk)
        apart.feed(chunk)
    counted.whole()
    body = parse_apart(apart)
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    return body


def _limited(request: Request, limit: int) -> Request:
    """The same request, its body counted as it arrives: over `limit` bytes, a 413."""
    counted = _Counted(request, limit)

    async def receive() -> Message:
        message = await request.receive()
        if message["type"] == "http.request":
            counted.add(message.get("body", b""))
            if not message.get("more_body"):
                counted.whole()
        return message

    return Request(request.scope, receive)


def _as_latin1(request: Request) -> tuple[Request, str]:
    """The request as Starlette should read its form: text fields in latin-1, which turns any
    bytes into text and back unchanged, so each one is decoded here, strictly, in the body's own
    charset (Starlette would read a text field that is not valid in it as latin-1, forwarding
    mojibake). Its charset (`utf-8` unless the Content-Type names a known one)."""
    media, params = parse_options_header(request.headers.get("content-type", ""))
    named = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(named).name
    except LookupError:
        charset = "latin-1"  # as Starlette reads a charset it does not know
    rest = b"".join(
        b"; " + name + b'="' + value.replace(b'"', b"") + b'"'
        for name, value in params.items()
        if name != b"charset"
    )
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"]
    headers.append((b"content-type", media + rest + b"; charset=latin-1"))
    return Request({**request.scope, "headers": headers}, request.receive), charset


def _decoded(value: str, charset: str, name: str) -> str:
    """A latin-1 read text (a field's name or value) decoded in `charset`; a 400 if it is not
    valid there."""
    try:
        return value.encode("latin-1").decode(charset)
    except UnicodeError:
        field = name[:64].encode("latin-1", "replace").decode("utf-8", "replace")
        raise InvalidRequestError(
            f"The multipart body cannot be read: the field '{field}' is not valid {charset} text",
            code="invalid_multipart",
        ) from None


async def read_form(
    request: Request, limit: int, *, filenames: dict[str, str] | None = None
) -> list[tuple[str, str | bytes]]:
    """A multipart/form-data body as (name, value) pairs in order: text fields as strings,
    files as their bytes, read with Starlette's `Request.form`. Bodies over `limit` bytes are
    refused while they arrive; a text field that is not valid in the body's charset is a 400.
    `filenames`, when given, gets each file field's file name (as sent, by field name)."""
    content_type = (header(request, "Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise InvalidRequestError(
            "The request body must be multipart/form-data "
            f"(got {content_type[:100] or 'no content type'}).",
            code="invalid_content_type",
        )
    latin1, charset = _as_latin1(_limited(request, limit))
    try:
        form = await latin1.form(max_part_size=limit)
    except (MultiPartException, HTTPException) as exc:  # in an app, Starlette raises the latter
        why = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise InvalidRequestError(
            f"The multipart body cannot be read: {why}", code="invalid_multipart"
        ) from None
    try:
        items: list[tuple[str, str | bytes]] = []
        for raw_name, value in form.multi_items():
            name = _decoded(raw_name, charset, raw_name)
            if isinstance(value, str):
                items.append((name, _decoded(value, charset, name)))
            else:
                items.append((name, await value.read()))
                if filenames is not None and value.filename:
                    filenames[name] = _decoded(value.filename, charset, name)
    finally:
        await form.close()
    for name, text in items:  # an odd charset (utf-7) can still decode to surrogates
        check_text(name, None)
        if isinstance(text, str):
            check_text(text, name)
    return items


def public_base_url(request: Request, settings: Settings) -> str:
    """The gateway's public URL as the client sees it, for lasting links.

    PUBLIC_BASE_URL wins; else the Host and X-Forwarded-Proto headers (a Function URL and API
    Gateway set both), plus the stage of an API Gateway REST request (`/Prod`), which the Web
    Adapter passes in its `x-amzn-request-context` header.

    Both headers are checked (a 400 otherwise), so a link is never built from a forged value
    that is not a host or a scheme.
    """
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    proto = header(request, "X-Forwarded-Proto")
    # (the scope's scheme is what `request.url.scheme` says, without building the URL)
    scheme = (proto or request.scope.get("scheme", "http")).split(",")[0].strip().lower()
    if scheme not in ("http", "https"):
        raise InvalidRequestError(
            "The 'X-Forwarded-Proto' header must be http or https.",
            param="X-Forwarded-Proto",
            code="invalid_header",
        )
    host = header(request, "Host")
    if host is None:  # HTTP/1.0: where the server listens
        host = request.url.netloc
    elif not _HOST.fullmatch(host):
        raise InvalidRequestError(
            "The 'Host' header is not a host name.", param="Host", code="invalid_header"
        )
    prefix = ""
    parsed = request_context(request)
    stage = parsed.get("stage")
    domain = str(parsed.get("domainName", ""))
    if isinstance(stage, str) and _STAGE.fullmatch(stage) and _is_rest_api(domain, host):
        prefix = f"/{stage}"
    return f"{scheme}://{host}{prefix}"


def _is_rest_api(domain: str, host: str) -> bool:
    """Whether the request came to an API Gateway's own domain (custom domains have no stage
    in their paths)."""
    return ".execute-api." in domain and domain == host


def request_context(request: Request) -> dict[str, Any]:
    """The API Gateway request context the Lambda Web Adapter forwards as the
    `x-amzn-request-context` header; {} when absent or unreadable (it only refines links)."""
    raw = request.headers.get("x-amzn-request-context")
    if not raw:
        return {}
    try:
        parsed = parse_json_text(raw, what="x-amzn-request-context")
    except InvalidRequestError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def client_wait(request: Request) -> float | None:
    """Seconds the client waits for a non-streamed answer, from the OpenAI SDKs'
    `x-stainless-read-timeout` (Python) or `x-stainless-timeout` (Cherry Studio sends 600)
    header; None if not said (or not a sane number)."""
    raw = header(request, "X-Stainless-Read-Timeout") or header(request, "X-Stainless-Timeout")
    try:
        seconds = float(raw) if raw else 0.0
    except ValueError:
        return None
    return seconds if 0 < seconds < 86400 else None


def client_budget(request: Request) -> float | None:
    """Seconds a non-streamed answer may take before the client gives up (`client_wait`), less
    a margin; through the REST API at most REST_IDLE_BUDGET (API Gateway closes a streamed
    response after 5 minutes without a byte, and a JSON answer sends none until it is done);
    None if neither applies.

    The SDKs retry a timed-out request, which would pay for the generation again: answering a
    clear 504 (with x-should-retry: false) just before the client's own timer (or API
    Gateway's) runs out avoids it.
    """
    seconds = client_wait(request)
    budget = None if seconds is None else max(1.0, seconds - max(2.0, 0.05 * seconds))
    if came_through_rest_api(request.headers):
        budget = min(budget or REST_IDLE_BUDGET, REST_IDLE_BUDGET)
    return budget
