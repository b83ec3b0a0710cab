"""The one guarded way the gateway downloads a URL it did not choose (the SSRF guard).

Image URLs a client sends (edits through an OpenAI-compatible server) and result images a
provider links to are fetched by a `Fetcher`, never by the provider client:

- http(s) only; a URL that cannot be read whole (an IDNA label that does not decode, such as
  `xn--a.com`, a port out of range, a broken bracket) is refused like any other; redirects are
  followed here, at most `MAX_REDIRECTS`, each hop checked again;
- every address a host resolves to must be public (`is_public`: no loopback, private, link-local
  or metadata, CGNAT, multicast, reserved, ULA, nor such an address spelled another way). The
  check sits in the network backend under httpx: a host is resolved when a connection is made
  and the connection goes to the address that was checked, so a second DNS answer (rebinding)
  is never used. A warm instance keeps a host's allowed addresses `VERDICT_SECONDS` for its
  new connections (a burst of downloads resolves once); a refusal is not kept, and a lapsed
  verdict is checked afresh. The Host header, TLS SNI and certificate checks still use the
  URL's host name;
- the body is read as a stream and abandoned once past its size limit; one total timeout; no
  proxies from the environment, no cookies, no compressed bodies; at most `MAX_CONNECTIONS`
  downloads in flight, the others waiting in a FIFO queue (`imagegw.infra.transport`);
- every refusal and failure is one `FetchError`. Its reason is logged here (host and path, never
  the query: it may hold a signature) and is not for clients: callers answer one text for all,
  so a client learns nothing about what the gateway can reach or whether a port is open.

Provider base URLs are the owner's: a `Fetcher` given `trusted` origins (the result fetcher gets
the MODELSCOPE/SILICONFLOW/OPENAI_BASE_URL hosts) connects to those host:port pairs without the
address check, so a self-hosted server on a private network can link to its results. Client URLs
get no trusted origins. ALLOW_PRIVATE_URLS lifts the address check (tests against fakes on
loopback only).

The result fetcher, which downloads an image for every stored link, reads HTTP/1.1 through the
gateway's lean connection (`imagegw.infra.http11`: h11's client rules without its event machinery,
a third less CPU a download); the fetcher of client URLs keeps httpcore's own connection. Both go
through the same guarded network backend, limits and timeout. A plain URL (`_plain`: what httpx
would read exactly as it is written, as providers' result links are) is read here, not by httpx's
URL parser (a fifth of a download's CPU); any other URL, and every redirect, is httpx's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final

import anyio
import httpcore
import httpx

from imagegw.infra.clients import layered
from imagegw.infra.config import Settings, declared
from imagegw.infra.http11 import FramedRequest, request_head
from imagegw.infra.log import logger
from imagegw.infra.netstream import AsyncioBackend
from imagegw.infra.transport import PooledTransport, core_url, gathered

IPAddress = IPv4Address | IPv6Address
#: host name, port -> the addresses it resolves to
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
#: whether the gateway may connect to an address
AddressPolicy = Callable[[IPAddress], bool]

MAX_REDIRECTS: Final = 3
#: seconds a host's checked addresses are used for new connections without resolving it again
#: (`GuardedBackend.vet`), and how many hosts' are kept
VERDICT_SECONDS: Final = 10.0
MAX_VERDICTS: Final = 256
#: downloads of one fetcher in flight at once; more wait their turn in a FIFO queue
#: (`imagegw.infra.transport`: the pool's work per request does not grow with the queue)
MAX_CONNECTIONS: Final = 100
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
SCHEMES: Final = frozenset({"http", "https"})
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_CGNAT: Final = IPv4Network("100.64.0.0/10")
_NAT64: Final = IPv6Network("64:ff9b::/96")
_ULA: Final = IPv6Network("fc00::/7")
#: blocks whose `is_global`/`is_private` answers differ between Python versions (the stdlib's
#: tables follow the IANA registries since 3.11.10/3.12.4): refused on every version. IETF
#: protocol assignments (192.0.0.8 was global on 3.11.7), 6to4 (deprecated) and local-use NAT64
_SPECIAL_V4: Final = IPv4Network("192.0.0.0/24")
_SPECIAL_V6: Final = (
    IPv6Network("2001::/23"),
    IPv6Network("2002::/16"),
    IPv6Network("64:ff9b:1::/48"),
)
_LOW32: Final = 0xFFFF_FFFF
_LAST_PORT: Final = 65535
_LAST_OCTET: Final = 255
#: the longest URL `_plain` reads (httpx refuses longer ones)
_PLAIN_LENGTH: Final = 65536
#: an IPv4 address as inet_aton reads it: 1 to 4 parts, each decimal, octal (0...) or hex (0x...)
_INET_ATON: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.I)


class FetchError(Exception):
    """A URL that was not fetched, for any reason. `reason` is for the log, not for clients."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- addresses


def _public_v4(address: IPv4Address) -> bool:
    return (
        address.is_global
        and not address.is_private
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and address not in _CGNAT
        and address not in _SPECIAL_V4
    )


def _public_v6(address: IPv6Address) -> bool:
    return (
        address.is_global
        and not address.is_private
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_site_local
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and address not in _ULA
        and not any(address in block for block in _SPECIAL_V6)
    )


def is_public(address: IPAddress) -> bool:
    """Whether the gateway may connect to `address` for a URL it did not choose: a unicast
    address reachable from the internet. IPv6 addresses that carry an IPv4 one (mapped, NAT64
    64:ff9b::/96, compatible, 6to4, Teredo) are judged by the IPv4 address too; explicit checks
    back `is_global`, whose answers differ between Python versions."""
    if isinstance(address, IPv4Address):
        return _public_v4(address)
    address = IPv6Address(int(address))  # without a zone id
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
        return _public_v4(address.ipv4_mapped)
    if address in _NAT64:  # the NAT64 gateway connects to the embedded address
        return _public_v4(IPv4Address(int(address) & _LOW32))
    embedded: list[IPv4Address] = []
    if int(address) >> 32 == 0:  # IPv4-compatible ::a.b.c.d (and ::, ::1)
        embedded.append(IPv4Address(int(address)))
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    return all(_public_v4(v4) for v4 in embedded) and _public_v6(address)


def any_address(address: IPAddress) -> bool:
    """The policy of ALLOW_PRIVATE_URLS (tests against fakes on loopback only)."""
    return True


def ip_literal(host: str) -> IPAddress | None:
    """The address a URL's host spells, in any spelling a resolver accepts (`127.0.0.1`,
    `2130706433`, `0x7f000001`, `0177.1`, `127.1`, a trailing dot, percent-escapes, an IPv6
    zone id); None for a host name."""
    name = urllib.parse.unquote(host).strip("[]")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    dotted = name.removesuffix(".")
    if _INET_ATON.fullmatch(dotted):
        try:
            return IPv4Address(socket.inet_aton(dotted))
        except OSError:
            return None
    return None


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host`, as the system resolver answers (an IP literal is itself)."""
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(sockaddr[0]) for *_, sockaddr in answers))


# ----------------------------------------------------------------------------- connections


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check: resolve once, check every address,
    connect to a checked one (by its address, so nothing resolves the name again)."""

    def __init__(
        self,
        resolver: Resolver,
        policy: AddressPolicy,
        trusted: frozenset[tuple[str, int]] = frozenset(),
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolve = resolver
        self._policy = policy
        self._trusted = trusted
        self._network = network or AsyncioBackend()
        #: (host, port) -> until when, and its addresses, each allowed by the policy
        self._verdicts: dict[tuple[str, int], tuple[float, Sequence[IPAddress]]] = {}
        #: (host, port) -> its resolution in flight (a burst of connections resolves once)
        self._resolving: dict[tuple[str, int], asyncio.Future[Sequence[IPAddress]]] = {}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if (host.lower(), port) in self._trusted:  # the owner's provider: as configured
            return await self._network.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        addresses = await self.vet(host, port)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._network.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def vet(self, host: str, port: int) -> Sequence[IPAddress]:
        """The addresses of `host`, each allowed by the policy; else `FetchError`.

        An allowed answer is kept VERDICT_SECONDS: new connections to the host within that
        time go to those checked addresses without resolving it again (a refusal or a failure
        is not kept). Connections still go only to addresses that passed the check, so a host
        that later resolves elsewhere (rebinding) is never connected to there, and is refused
        once its verdict has lapsed. Concurrent connections to a host share one resolution."""
        key = (host.lower(), port)
        kept = self._verdicts.get(key)
        if kept is not None and time.monotonic() < kept[0]:
            return kept[1]
        resolving = self._resolving.get(key)
        if resolving is None or resolving.get_loop() is not asyncio.get_running_loop():
            resolving = asyncio.ensure_future(self._vet_now(host, port))
            resolving.add_done_callback(lambda done: self._vetted(key, done))
            self._resolving[key] = resolving
        return await asyncio.shield(resolving)

    def _vetted(self, key: tuple[str, int], done: asyncio.Future[Sequence[IPAddress]]) -> None:
        """A resolution ended: an allowed answer kept (the oldest verdict dropped past
        MAX_VERDICTS), any failure retrieved (its waiters each raise it)."""
        if self._resolving.get(key) is done:
            del self._resolving[key]
        if done.cancelled() or done.exception() is not None:
            return
        if len(self._verdicts) >= MAX_VERDICTS:
            self._verdicts.pop(next(iter(self._verdicts)))
        self._verdicts[key] = (time.monotonic() + VERDICT_SECONDS, done.result())

    async def _vet_now(self, host: str, port: int) -> Sequence[IPAddress]:
        try:
            addresses = await self._resolve(host, port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise FetchError(f"{host} did not resolve ({type(exc).__name__})") from None
        refused = [address for address in addresses if not self._policy(address)]
        if refused or not addresses:
            shown = refused[0] if refused else "no address"
            raise FetchError(f"{host} resolves to {shown}: not a public address")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise FetchError("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


#: what httpx raises on URLs it cannot read (an invalid IDNA label such as `xn--a` is a
#: UnicodeError, and only when the host is decoded)
_UNREADABLE: Final = (httpx.InvalidURL, TypeError, ValueError)


def origins(urls: Iterable[str]) -> frozenset[tuple[str, int]]:
    """The (host, port) pairs of `urls` (unparsable ones are left out)."""
    found = set()
    for url in urls:
        try:
            parsed = httpx.URL(url)
            port = parsed.port
        except _UNREADABLE:
            continue
        if parsed.scheme in SCHEMES and parsed.raw_host:
            port = port or DEFAULT_PORTS[parsed.scheme]
            found.add((parsed.raw_host.decode("ascii", "replace").lower(), port))
    return frozenset(found)


def provider_origins(settings: Settings) -> frozenset[tuple[str, int]]:
    """Where the owner's configured providers live (trusted for their result images)."""
    return origins(
        settings.provider_setting(env) for env, setting in declared().items() if setting.base_url
    )


# ----------------------------------------------------------------------------- fetching


def where(url: str | httpx.URL) -> str:
    """A URL as it may be logged: scheme, host, port and path (no credentials, no query). The
    host as it was spelt (never decoded: a malformed one must not fail the log line)."""
    try:
        parsed = httpx.URL(url)
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{parsed.raw_host.decode('ascii', 'replace')}{port}{parsed.path}"
    except _UNREADABLE:
        return "(an unparsable URL)"


def _target(url: str | httpx.URL, base: httpx.URL | None = None) -> httpx.URL:
    """`url` (relative to `base`, for a redirect) as the fetcher reads it; a URL that cannot be
    read whole (its host decoded included) or is not http(s) is refused."""
    try:
        parsed = httpx.URL(url) if base is None else base.join(url)
        host = parsed.host  # decodes IDNA labels: `xn--a.com` fails here, not deep in a request
    except _UNREADABLE:
        raise FetchError(f"{where(url)}: not a URL that can be read") from None
    if parsed.scheme not in SCHEMES or not host:
        raise FetchError(f"{where(parsed)}: only http(s) URLs are fetched")
    if parsed.port is not None and not 0 < parsed.port < 65536:  # the socket layer would raise
        raise FetchError(f"{where(parsed)}: no such port")
    return parsed


#: a URL httpx reads exactly as it is written (`_plain`): lowercase http(s), a lowercase host name
#: or dotted IPv4 address, a port other than the default, a path and query of characters httpx
#: keeps as they are; no user info, no fragment. A subset: anything else is read by httpx
_PLAIN: Final = re.compile(
    r"(https?)://([a-z0-9_-]+(?:\.[a-z0-9_-]+)*)(?::([1-9][0-9]{0,4}))?"
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*(?:\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?)"
)
_IPV4_STYLE: Final = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


@dataclass(frozen=True, slots=True)
class Plain:
    """A URL read without httpx (`_plain`): its parts as httpx would give them."""

    url: str
    scheme: bytes
    host: bytes
    #: None for the scheme's default port (as httpx's `port`)
    port: int | None
    #: path and query (httpx's `raw_path`), and the Host header (httpx's `netloc`)
    target: bytes
    netloc: bytes


def _plain(url: str) -> Plain | None:
    """`url` read as httpx would read it (`_target`) when that is plain (`_PLAIN`): the
    download of a provider's result link, every time, then costs no httpx URL (a fifth of a
    fetch's CPU). None for any other URL, which `_target` reads (and may refuse)."""
    match = _PLAIN.fullmatch(url) if len(url) <= _PLAIN_LENGTH else None
    if match is None:
        return None
    scheme, host, port, target = match.groups()
    # httpx decodes IDNA labels (and refuses bad ones), drops `.` and `..` segments, checks a
    # dotted address and leaves out a default port: such URLs go its way
    if "xn--" in host or "/." in target.partition("?")[0]:
        return None
    if _IPV4_STYLE.fullmatch(host) and not all(  # as `IPv4Address` reads a dotted address
        len(part) <= 3 and int(part) <= _LAST_OCTET and (len(part) == 1 or part[0] != "0")
        for part in host.split(".")
    ):
        return None
    number = None
    netloc = host
    if port is not None:
        number = int(port)
        if number > _LAST_PORT or number == DEFAULT_PORTS[scheme]:
            return None
        netloc = f"{host}:{port}"
    return Plain(url, scheme.encode(), host.encode(), number, target.encode(), netloc.encode())


def _parsed(target: httpx.URL | Plain) -> httpx.URL:
    """`target` as httpx's URL (a plain one parsed now: to follow a redirect, to log)."""
    return httpx.URL(target.url) if isinstance(target, Plain) else target


async def _answered(answer: httpx.Response, limit: int) -> tuple[int, str | None, bytes]:
    """An open answer's status, its `Location` and, for a 200, its body (`_read`)."""
    status = answer.status_code
    if status == 200:
        return status, None, await _read(answer, limit)
    return status, answer.headers.get("location"), b""


async def _read(answer: httpx.Response, limit: int) -> bytes:
    """The body of `answer`, read no further than `limit` bytes, never held twice while it is
    read nor copied once more into `bytes` (`gathered`)."""
    declared = answer.headers.get("content-length", "")
    length = int(declared) if declared.isascii() and declared.isdigit() else None
    if length is not None and length > limit:
        raise FetchError(f"declares {declared} bytes, over the limit of {limit}")
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # a small body could expand without bound
        raise FetchError(f"a compressed answer ({encoding})")
    return await gathered(
        answer.aiter_raw(),
        limit=limit,
        too_large=lambda: FetchError(f"more than the limit of {limit} bytes"),
        declared=length,
    )


class Fetcher:
    """Downloads URLs the gateway did not choose, guarded as the module says. Builds its own
    httpx client on first use (never the provider client); `aclose()` closes it."""

    def __init__(
        self,
        settings: Settings,
        *,
        trusted: frozenset[tuple[str, int]] = frozenset(),
        resolver: Resolver | None = None,
        policy: AddressPolicy | None = None,
        network: httpcore.AsyncNetworkBackend | None = None,
        timeout: float | None = None,
        lean: bool = False,
    ) -> None:
        self._private_ok = settings.allow_private_urls
        if policy is None:
            policy = any_address if settings.allow_private_urls else is_public
        self.timeout = timeout or settings.provider_timeout
        self._backend = GuardedBackend(resolver or system_resolver, policy, trusted, network)
        #: HTTP/1.1 through the lean connection (`imagegw.infra.http11`), not httpcore's
        self._lean = lean
        self._client: httpx.AsyncClient | None = None
        #: the client's pool when no transport layer observes it (`_get`)
        self._direct: PooledTransport | None = None
        #: the client's headers (as pairs, and as a checked head's lines) and timeouts, as its
        #: requests carry them (`_request`)
        self._made: tuple[tuple[tuple[bytes, bytes], ...], bytes, dict[str, Any]] | None = None

    @classmethod
    def for_results(cls, settings: Settings) -> Fetcher:
        """The fetcher of result images: the configured providers' own hosts are trusted; lean
        connections (see the module docstring)."""
        return cls(settings, trusted=provider_origins(settings), lean=True)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # no proxy, no retry: every connection goes through the guard, once
            pooled = PooledTransport(
                max_connections=MAX_CONNECTIONS,
                retries=0,
                ssl_context=httpx.create_ssl_context(trust_env=False),
                network_backend=self._backend,
                lean=self._lean,
            )
            transport = layered(pooled)
            self._direct = pooled if transport is pooled else None
            self._client = httpx.AsyncClient(
                transport=transport,
                trust_env=False,
                follow_redirects=False,
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # keeps none
                timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                headers={"accept-encoding": "identity"},
            )
        return self._client

    async def fetch(self, url: str, *, limit: int) -> bytes:
        """The body of `url` (at most `limit` bytes), after at most `MAX_REDIRECTS` redirects.
        Raises `FetchError` for every refusal and failure, after logging its reason."""
        try:
            # asyncio's own timeout: anyio's cancel scope cost a tenth of a fetch's CPU
            async with asyncio.timeout(self.timeout):
                return await self._follow(url, limit)
        except FetchError as exc:
            reason = exc.reason
        except TimeoutError:
            reason = f"no whole answer within {self.timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # ValueError: a URL part
            # httpx could not use (a UnicodeError is one) is refused like any other
            reason = type(exc).__name__
        logger.warning("url not fetched", extra={"url": where(url), "reason": reason})
        raise FetchError(reason) from None

    async def _follow(self, url: str, limit: int) -> bytes:
        target: httpx.URL | Plain = _plain(url) or _target(url)
        for _ in range(MAX_REDIRECTS + 1):
            status, location, body = await self._get(target, limit)
            if status in REDIRECT_STATUSES and location:
                target = _target(location, _parsed(target))
                continue
            if status != 200:
                raise FetchError(f"{where(_parsed(target))} answered HTTP {status}")
            return body
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    async def _get(self, target: httpx.URL | Plain, limit: int) -> tuple[int, str | None, bytes]:
        """A GET of `target`: the answer's status, its `Location` and, for a 200, its body (no
        further than `limit` bytes; a compressed one is refused unread, `_read`).

        With no transport layer over the pool (none observes the fetcher), the request goes
        straight to the pool as httpcore's, made here as the client would build it (`_request`),
        and its answer is read whole as it came: no httpx request or response is made of a
        download. That skips the client's auth, redirect, cookie and hook layers, which a fetch
        does not use: redirects are followed here, each checked, and the jar keeps no cookie
        (parsing an answer's cookies for it was a tenth of a fetch's CPU). Else through the
        client."""
        client = self.client
        direct = self._direct
        if direct is None:
            async with client.stream("GET", _parsed(target)) as answer:
                return await _answered(answer, limit)
        read = await direct.read_core(
            self._request(target),
            limit=limit,
            too_large=lambda: FetchError(f"more than the limit of {limit} bytes"),
        )
        if isinstance(read, httpx.Response):  # an encoded body, open and unread
            try:
                return await _answered(read, limit)
            finally:
                await read.aclose()
        head, body = read
        if head.status in REDIRECT_STATUSES:  # the header read as httpx reads it
            return head.status, httpx.Headers(head.headers).get("location"), b""
        return head.status, None, body

    def _request(self, target: httpx.URL | Plain) -> httpcore.Request:
        """The GET of `target` as httpcore's request, as `self.client.build_request("GET",
        target)` makes it (its headers: `Host` first, then the client's; its timeouts). On a
        lean connection, a plain URL's request is framed here (`FramedRequest`): the head is
        the client's headers, checked once (`request_head`), after the request line and Host
        header of a URL `_PLAIN` admits (visible characters, none that could break a line)."""
        made = self._made
        if made is None:
            client = self.client
            headers = tuple(client.headers.raw)
            sample = httpcore.Request(b"GET", "http://host/", headers=list(headers))
            block = request_head(sample)[0].split(b"\r\n", 1)[1].removesuffix(b"\r\n")
            made = self._made = (headers, block, {"timeout": client.timeout.as_dict()})
        headers, block, extensions = made
        if not isinstance(target, Plain):
            return httpcore.Request(
                b"GET",
                core_url(target),
                headers=[(b"Host", target.netloc), *headers],
                extensions=extensions,
            )
        url = httpcore.URL(
            scheme=target.scheme, host=target.host, port=target.port, target=target.target
        )
        if not self._lean:
            return httpcore.Request(
                b"GET", url, headers=[(b"Host", target.netloc), *headers], extensions=extensions
            )
        head = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target.target, target.netloc, block)
        return FramedRequest(b"GET", url, head=head, length=0, content=(), extensions=extensions)

    async def check(self, url: str, *, https_only: bool) -> None:
        """Whether `url` may be fetched at all: http(s) (https only when asked, unless
        ALLOW_PRIVATE_URLS), no credentials in it, and a host whose every address passes
        the address check, as a connection would be checked now. Raises `FetchError`."""
        try:
            target = _target(url)
        except httpx.InvalidURL:
            raise FetchError("an unparsable URL") from None
        if https_only and target.scheme != "https" and not self._private_ok:
            raise FetchError(f"{where(target)}: only https URLs")
        if target.userinfo:
            raise FetchError(f"{where(target)}: credentials in the URL")
        port = target.port or DEFAULT_PORTS[target.scheme]
        await self._backend.vet(target.host, port)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `body` to `url` through the guard, following no redirect (a redirect is an
        answer like any other): the status code. Raises `FetchError` when there is none."""
        try:
            with anyio.fail_after(self.timeout):
                answer = await self.client.post(_target(url), content=body, headers=headers)
                return answer.status_code
        except FetchError as exc:
            reason = exc.reason
        except TimeoutError:
            reason = f"no answer within {self.timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = type(exc).__name__
        logger.warning("url not posted to", extra={"url": where(url), "reason": reason})
        raise FetchError(reason) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
