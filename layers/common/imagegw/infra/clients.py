"""The HTTP clients' set-up, in one place for every driver: the client of the providers' APIs,
and the layers every client's transport is wrapped in when it is built.

The API function keeps one provider client for its life (`Gateway.client`); the job task
functions keep one per Lambda instance (`imagegw.runners.stepfunctions.steps`), so a warm
instance reuses its connections.

Transport layers: a module that observes HTTP calls (the task functions' X-Ray tracing,
`imagegw.infra.telemetry`) adds a layer with `add_transport_layer` when it is imported; every
client built afterwards (`provider_client`, the guarded fetcher's) gets its transport wrapped
in it when it is built, as httpx intends (a transport given at construction): no library class
or private attribute is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from http.cookiejar import Cookie, CookieJar
from typing import Any, Final, Literal, TypeVar

import httpcore
import httpx

from imagegw.infra.config import Settings
from imagegw.infra.http11 import FramedRequest, KeptRequest
from imagegw.infra.media import InlineImages
from imagegw.infra.spans import REQUEST_PART, encoded, size, spliced
from imagegw.infra.transport import Parts, PooledTransport

#: provider requests in flight at once (more wait in a FIFO queue for a slot). The pool's work
#: per request does not grow with it (`imagegw.infra.transport`); one connection serves a
#: request for milliseconds, so a few dozen serve hundreds of streams. The requests
#: `imagegw.providers.upstream.send` makes (submissions) also take one of as many turns before
#: they are built (`turn`).
MAX_PROVIDER_CONNECTIONS: Final = 100

#: JSON request templates the provider client keeps (`build_request`): one per provider, key
#: and kind of call in use; as many templates of requests with no body (`bare_request`)
TEMPLATES_KEPT: Final = 256
_JSON: Final = frozenset({"json", "headers", "timeout"})
#: a bodiless request's body, as httpx makes it (`bare_request`)
_NO_BODY: Final = b""
#: a long data URI of a body that holds images (`InlineImages`: an image a client sent,
#: passed on) is sent as it is, a part of URI_PART characters at a time, not copied into the
#: body's text and bytes (`JsonTemplate.request`, `imagegw.infra.spans.spliced`)
URI_PART: Final = REQUEST_PART

Hook = Callable[..., Awaitable[Any]]
_T = TypeVar("_T")
#: wraps a transport in another (that calls it)
TransportLayer = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]

_LAYERS: list[TransportLayer] = []


class AnswerTimeout(httpx.ReadTimeout):
    """A provider's whole answer did not come within the call's deadline
    (`imagegw.providers.upstream.send`). An httpx read timeout, so callers word it as they
    word one: the request may have started."""


def add_transport_layer(layer: TransportLayer) -> None:
    """Wrap the transport of every client built from now on in `layer` (once per layer)."""
    if layer not in _LAYERS:
        _LAYERS.append(layer)


def remove_transport_layer(layer: TransportLayer) -> None:
    if layer in _LAYERS:
        _LAYERS.remove(layer)


def layered(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """`transport` in the layers added so far (the first added is the innermost)."""
    for layer in _LAYERS:
        transport = layer(transport)
    return transport


class NoCookies(CookieJar):
    """A cookie jar that keeps nothing: the provider client is shared by every request of an
    instance, whoever's key it carries, so a cookie one answer sets must never ride along with
    another's request; and a poll spends nothing on cookies."""

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


class JsonTemplate:
    """What `client.build_request(method, url, headers=..., timeout=...)` makes of any JSON
    body, made once: the URL parsed and the client's headers merged (that was most of a
    submission's own CPU). `request(body)` is the request the client would build, its body
    encoded as httpx encodes JSON, its type and length last among its headers; a body that
    holds images (`InlineImages`) is sent as those bytes in parts, each long data URI in it as
    it is (`imagegw.infra.spans.spliced`)."""

    __slots__ = ("extensions", "head", "headers", "method", "url", "wire_url")

    def __init__(
        self, client: httpx.AsyncClient, method: str, url: str, headers: Any, timeout: Any
    ) -> None:
        made = client.build_request(method, url, headers=headers, timeout=timeout)
        kept = httpx.Headers(made.headers)
        for framing in ("content-length", "transfer-encoding", "content-type"):
            if framing in kept:
                del kept[framing]
        kept["Content-Type"] = "application/json"
        self.method, self.url, self.headers = method, made.url, kept
        self.extensions = made.extensions
        #: its requests' head on the wire but their Content-Length line (`framed`): None until
        #: the first is sent, False when it was not of that shape
        self.head: bytes | Literal[False] | None = None
        self.wire_url: httpcore.URL | None = None

    def request(self, body: Any) -> httpx.Request:
        if type(body) is InlineImages:
            pieces = spliced(body)
            if pieces is not None:
                return self._request(Parts(size(pieces), lambda: encoded(pieces)))
        content = json.dumps(
            body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        # its headers the template's and its length, as httpx adds it to a body in memory (the
        # request given its stream: httpx does not normalise every header again)
        headers = httpx.Headers(self.headers)
        headers["Content-Length"] = str(len(content))
        request = httpx.Request(
            self.method,
            self.url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions=self.extensions,
        )
        request.read()
        return request

    def _request(self, stream: Parts) -> httpx.Request:
        """`request` of a body sent in parts (`spliced`): not read (that would join them)."""
        headers = httpx.Headers(self.headers)
        headers["Content-Length"] = str(stream.length)
        return httpx.Request(
            self.method, self.url, headers=headers, stream=stream, extensions=self.extensions
        )

    def framed(self, pool: PooledTransport, request: httpx.Request) -> FramedRequest | None:
        """The pool's form of a request this template made (`request`), its head the
        template's (checked once, by `pool.keep` of the first request sent) with the request's
        own Content-Length: its headers are not checked and made into bytes again at each
        submission. None when the first request's head did not end with its Content-Length
        (then the pool makes each, as for any request)."""
        stream = request.stream
        if isinstance(stream, Parts):  # a body around data URIs (`request`)
            content: Iterable[bytes] = stream
            size = stream.length
        else:
            whole = request.content
            content, size = (whole,), len(whole)
        tail = b"Content-Length: %d\r\n\r\n" % size
        if self.head is None:
            kept = pool.keep(request)
            head, chunked, length, closes = kept.wire
            fits = not chunked and not closes and length == size and head.endswith(tail)
            self.head = head[: -len(tail)] if fits else False
            self.wire_url = kept.url
        if self.head is False or self.wire_url is None:
            return None
        return FramedRequest(
            request.method.encode("ascii"),
            self.wire_url,
            head=self.head + tail,
            length=size,
            content=content,
            extensions=request.extensions,
        )


class BareTemplate:
    """What `client.build_request(method, url, headers=..., timeout=...)` makes of a request
    with no body (a task's poll), for any URL of one origin, made once: the client's headers
    merged, the Host header included. `request(url)` is the request the client would build for
    `url` (of that origin); `kept` the pool's form of the template's own request
    (`imagegw.infra.transport.PooledTransport.keep`), once asked, from which those of the
    others are made (`KeptRequest.retarget`)."""

    __slots__ = ("extensions", "headers", "kept", "made", "method")

    def __init__(
        self, client: httpx.AsyncClient, method: str, url: httpx.URL, headers: Any, timeout: Any
    ) -> None:
        made = client.build_request(method, url, headers=headers, timeout=timeout)
        self.made, self.method = made, made.method
        self.headers, self.extensions = made.headers, made.extensions
        self.kept: KeptRequest | None = None

    def request(self, url: httpx.URL) -> httpx.Request:
        request = httpx.Request(
            self.method,
            url,
            headers=self.headers,
            extensions=self.extensions,
            stream=httpx.ByteStream(_NO_BODY),
        )
        request.read()  # as httpx's own build of a request with no body (`request.content`)
        return request

    def keep(self, pool: PooledTransport, request: httpx.Request) -> KeptRequest:
        """`pool.keep(request)` for a request this template made."""
        if self.kept is None:
            self.kept = pool.keep(self.made)
        return self.kept.retarget(request.url.raw_path)


class ProviderClient(httpx.AsyncClient):
    """The provider client: an httpx client that also knows its pool when no transport layer
    wraps it (`direct`, for `direct_transport`), its turns (`turn`), and the templates of its
    JSON requests (`build_request`) and of its requests with no body (`bare_request`)."""

    direct: PooledTransport | None = None
    turns: asyncio.Semaphore | None = None
    templates: OrderedDict[tuple[Any, ...], JsonTemplate] | None = None
    bare: OrderedDict[tuple[Any, ...], BareTemplate] | None = None


def _timeout_key(timeout: Any) -> Any:
    """A call's timeout by value: a call may make its timeout afresh (`upstream.work_timeout`)."""
    if isinstance(timeout, httpx.Timeout):
        return (timeout.connect, timeout.read, timeout.write, timeout.pool)
    return timeout


def _kept(
    templates: OrderedDict[tuple[Any, ...], _T], key: tuple[Any, ...], make: Callable[[], _T]
) -> _T:
    """The template of `key` in `templates` (made by `make` when missing): TEMPLATES_KEPT kept,
    the least recently used dropped."""
    template = templates.get(key)
    if template is None:
        template = templates[key] = make()
        if len(templates) > TEMPLATES_KEPT:
            templates.popitem(last=False)
    else:
        templates.move_to_end(key)
    return template


def bare_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: Any = httpx.USE_CLIENT_DEFAULT,
) -> tuple[httpx.Request, BareTemplate | None]:
    """`client.build_request(method, url, headers=headers, timeout=timeout)` of a request with
    no body, and the template it was made from (`BareTemplate`: one per method, origin,
    headers and timeout, TEMPLATES_KEPT kept, the least recently used dropped), or None when
    made by the client itself (another client than the provider client, a relative URL)."""
    if not isinstance(client, ProviderClient):
        return client.build_request(method, url, headers=headers, timeout=timeout), None
    parsed = httpx.URL(url)
    if parsed.is_relative_url:
        return client.build_request(method, url, headers=headers, timeout=timeout), None
    key = (method, parsed.scheme, parsed.netloc, _timeout_key(timeout), *headers.items())
    if client.bare is None:
        client.bare = OrderedDict()
    template = _kept(
        client.bare, key, lambda: BareTemplate(client, method, parsed, headers, timeout)
    )
    return template.request(parsed), template


def build_request(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Request:
    """`client.build_request(method, url, **kwargs)`. A JSON request of the provider client
    (a submission: `json`, and `headers` and `timeout` if any) is made from the template of its
    method, URL, headers and timeout (`JsonTemplate`, TEMPLATES_KEPT kept, the least recently
    used dropped). The provider client keeps no cookies (`NoCookies`), so the template holds
    all the client would add."""
    return json_request(client, method, url, **kwargs)[0]


def json_request(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Request, JsonTemplate | None]:
    """`build_request`, and the template the request was made from (None: made by the client
    itself)."""
    if not isinstance(client, ProviderClient) or "json" not in kwargs or kwargs.keys() - _JSON:
        return client.build_request(method, url, **kwargs), None
    headers, timeout = kwargs.get("headers"), kwargs.get("timeout", httpx.USE_CLIENT_DEFAULT)
    if headers is not None and not isinstance(headers, Mapping):
        return client.build_request(method, url, **kwargs), None
    key = (method, url, _timeout_key(timeout), *(headers or {}).items())
    if client.templates is None:
        client.templates = OrderedDict()
    template = _kept(
        client.templates, key, lambda: JsonTemplate(client, method, url, headers, timeout)
    )
    return template.request(kwargs["json"]), template


@contextlib.asynccontextmanager
async def turn(client: httpx.AsyncClient, deadline: float) -> AsyncIterator[float]:
    """A turn to build and send a request through the provider client (the seconds waited for
    it): at most MAX_PROVIDER_CONNECTIONS at once, the others waiting in a FIFO queue before
    their request is built, for at most `deadline` seconds (then `TimeoutError`). The pool
    bounds the requests in flight all the same, but a request waiting there holds the client's
    send, auth, redirect and transport frames, its timeouts and its request objects; waiting
    here, a stream of a burst (1,000 streams submitting at once) holds only its own coroutines.
    No turn for another client (a test's)."""
    if not isinstance(client, ProviderClient):
        yield 0.0
        return
    if client.turns is None:  # made on the loop that uses it, as the pool's slots are
        client.turns = asyncio.Semaphore(MAX_PROVIDER_CONNECTIONS)
    turns, waited = client.turns, 0.0
    if turns.locked():
        began = time.monotonic()
        async with asyncio.timeout(deadline):
            await turns.acquire()
        waited = time.monotonic() - began
    else:
        await turns.acquire()  # free: at once
    try:
        yield waited
    finally:
        turns.release()


def provider_client(
    settings: Settings, *, event_hooks: Mapping[str, Sequence[Hook]] | None = None
) -> httpx.AsyncClient:
    """A client for the owner's provider base URLs: explicit timeouts, a pool whose work does
    not grow with its size or its queue, no redirects (a provider that redirects is not
    followed anywhere), no cookies (`NoCookies`). Connections that could not be made are tried
    once more: nothing was sent, so a submit cannot start a task twice
    (`imagegw.infra.transport`). Answers are read through `imagegw.providers.upstream`, which
    bounds their size and their whole time."""
    pooled = PooledTransport(max_connections=MAX_PROVIDER_CONNECTIONS, retries=1, lean=True)
    transport = layered(pooled)
    client = ProviderClient(
        cookies=NoCookies(),
        timeout=httpx.Timeout(settings.provider_timeout, connect=10.0),
        transport=transport,
        follow_redirects=False,
        event_hooks={name: list(hooks) for name, hooks in (event_hooks or {}).items()},
    )
    client.direct = pooled if transport is pooled else None
    return client


def direct_transport(client: httpx.AsyncClient, request: httpx.Request) -> PooledTransport | None:
    """The pool under a client `provider_client` built with no transport layer (none observes
    its calls), for a request that needs none of the client's own work: one whose body is in
    memory (a poll's GET, a JSON submission: `imagegw.providers.upstream.exchange`,
    `PooledTransport.read_whole`). None for any other client (a test's, a traced one), for a
    streamed or multipart body, or when the client has response hooks: such requests go
    through the client. The caller runs the client's request hooks (the provider client's
    one warms the S3 client on the first call)."""
    if not isinstance(client, ProviderClient) or client.event_hooks["response"]:
        return None
    return client.direct if isinstance(request.stream, httpx.ByteStream) else None
