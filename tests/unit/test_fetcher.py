"""The SSRF guard (`imagegw.infra.fetcher`): which addresses are public, how a URL's host is read in
every spelling, and the fetcher over real loopback HTTP against a fake image host: refusals
before any connection, redirects checked hop by hop (at most 3), the connection going to the
address that was checked (no DNS rebinding), the size cap while streaming, the timeout, no
cookies or environment proxies, and the opt-in for loopback fakes.

Loopback is private, so tests that need an allowed server use a policy that lets 127.0.0.1 stand
in for a public address, and a table of made-up names instead of DNS (`Names`)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import httpcore
import pytest

from fakes.image_host import FakeImageHost
from fakes.png import make_png
from imagegw.infra import fetcher as fetcher_module
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import (
    MAX_REDIRECTS,
    Fetcher,
    FetchError,
    IPAddress,
    ip_literal,
    is_public,
    system_resolver,
)

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = IPv4Address("127.0.0.1")
PUBLIC = "93.184.216.34"


def stand_in(address: IPAddress) -> bool:
    """The guard's policy, with 127.0.0.1 standing in for a public address."""
    return address == LOOPBACK or is_public(address)


class Names:
    """A resolver over a table: each name's answers in turn (the last one repeats); IP literals
    as the gateway reads them; any other name does not resolve (no real DNS in tests)."""

    def __init__(self, table: dict[str, list[list[str]]] | None = None) -> None:
        self.table = table or {}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ip_address(a) for a in answer]


class _Counted(httpcore.AsyncNetworkStream):
    """A connection that counts the bytes read from it."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, owner: Recording) -> None:
        self._stream = stream
        self._owner = owner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        data = await self._stream.read(max_bytes, timeout)
        self._owner.received += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class Recording(httpcore.AsyncNetworkBackend):
    """The real network, recording where each connection went and how much was read."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.received = 0
        self._network = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        stream = await self._network.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Counted(stream, self)

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


class _TLSStream(httpcore.AsyncMockStream):
    def __init__(self, buffer: list[bytes], names: list[str | None]) -> None:
        super().__init__(buffer)
        self._names = names

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        self._names.append(server_hostname)
        return self


class Canned(httpcore.AsyncNetworkBackend):
    """No network: every connection answers `answer`; records the addresses connected to and
    the TLS server names asked for."""

    def __init__(self, *answer: bytes) -> None:
        self.answer = list(answer)
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return _TLSStream(list(self.answer), self.server_names)

    async def sleep(self, seconds: float) -> None:
        pass


class _Written(_TLSStream):
    def __init__(self, buffer: list[bytes], names: list[str | None], sent: list[bytes]) -> None:
        super().__init__(buffer, names)
        self._sent = sent

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self._sent.append(buffer)


class CannedWritten(Canned):
    """`Canned`, recording the bytes the gateway sent."""

    def __init__(self, *answer: bytes) -> None:
        super().__init__(*answer)
        self.sent: list[bytes] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return _Written(list(self.answer), self.server_names, self.sent)


def png_answer(*headers: str) -> tuple[bytes, ...]:
    png = make_png(4, 4)
    head = ["HTTP/1.1 200 OK", "Content-Type: image/png", *headers]
    if not any(h.lower().startswith("content-length") for h in headers):
        head.append(f"Content-Length: {len(png)}")
    return ("\r\n".join(head).encode() + b"\r\n\r\n", png)


class Made(list[Fetcher]):
    """The fetchers a test made, and over which connections they read HTTP/1.1."""

    def __init__(self, lean: bool) -> None:
        super().__init__()
        self.lean = lean


@pytest.fixture(params=[False, True], ids=["httpcore", "lean"])
async def guarded(request: pytest.FixtureRequest) -> AsyncIterator[Made]:
    """Fetchers made by a test, closed after it: every guard holds over httpcore's connection
    (client URLs) and the lean one (result images, `Fetcher.for_results`)."""
    made = Made(lean=request.param)
    yield made
    for fetcher in made:
        await fetcher.aclose()


def fetcher(made: Made, settings: Settings | None = None, **kwargs: object) -> Fetcher:
    one = Fetcher(settings or Settings(), lean=made.lean, **kwargs)  # type: ignore[arg-type]
    made.append(one)
    return one


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "127.255.255.254",
        "10.1.2.3",  # RFC 1918
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",  # link-local: cloud metadata
        "169.254.170.2",  # ECS task metadata
        "100.64.0.1",  # CGNAT
        "100.127.255.254",
        "0.0.0.0",  # unspecified (connects to this host on Linux)
        "0.1.2.3",
        "224.0.0.1",  # multicast
        "239.255.255.250",
        "240.0.0.1",  # reserved
        "255.255.255.255",  # broadcast
        "192.0.0.8",  # IETF protocol assignments (counted global by Python 3.11.7)
        "192.0.0.9",
        "192.0.0.171",
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "::1",  # IPv6 loopback
        "::",
        "fc00::1",  # ULA
        "fd12:3456::1",
        "fe80::1",  # link-local
        "fe80::1%eth0",
        "fec0::1",  # site-local
        "ff02::1",  # multicast
        "2001:db8::1",  # documentation
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::127.0.0.1",  # NAT64 well-known prefix
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::808:808",  # local-use NAT64
        "2001::1",  # Teredo
        "2001:1::1",  # IETF protocol assignments (their answers differ by Python version)
        "2001:20::1",
        "2002:808:808::1",  # 6to4, even of a public address
        "64:ff9b:1::a00:1",  # local-use NAT64
    ],
)
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert not is_public(ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", PUBLIC, "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public(ip_address(address))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f000001", "127.0.0.1"),  # hex
        ("0x7F.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0177.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),  # trailing dot
        ("%31%32%37.0.0.1", "127.0.0.1"),  # percent-escaped
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("fe80::1%25eth0", "fe80::1%eth0"),  # zone id, as it stands in a URL
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
    ],
)
def test_every_spelling_of_an_address_is_read_as_that_address(host: str, address: str) -> None:
    assert ip_literal(host) == ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "localhost", "999.1", "1.2.3.4.5", "0x", "a.1"])
def test_host_names_are_not_literals(host: str) -> None:
    assert ip_literal(host) is None


@pytest.mark.anyio
async def test_the_system_resolver_reads_literals_without_asking_dns() -> None:
    assert await system_resolver("0x7f000001", 80) == [LOOPBACK]
    assert await system_resolver("::1", 80) == [IPv6Address("::1")]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/files/x.png",
        "http://localhost:{port}/files/x.png",
        "http://2130706433:{port}/files/x.png",
        "http://0x7f000001:{port}/files/x.png",
        "http://0177.0.0.1:{port}/files/x.png",
        "http://0177.1:{port}/files/x.png",
        "http://127.1:{port}/files/x.png",
        "http://127.0.0.1.:{port}/files/x.png",
        "http://%31%32%37.0.0.1:{port}/files/x.png",
        "http://0.0.0.0:{port}/files/x.png",
        "http://[::1]:{port}/files/x.png",
        "http://[::ffff:127.0.0.1]:{port}/files/x.png",
        "http://[64:ff9b::7f00:1]:{port}/files/x.png",
        "http://[fe80::1%25lo]:{port}/files/x.png",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://user:pw@127.0.0.1:{port}/files/x.png",
        "ftp://127.0.0.1:{port}/files/x.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/_x",
    ],
)
async def test_private_urls_are_refused_before_any_connection(
    url: str, image_host: FakeImageHost, guarded: Made
) -> None:
    network = Recording()
    port = image_host.url.rsplit(":", 1)[1]
    with pytest.raises(FetchError):
        await fetcher(guarded, network=network).fetch(url.format(port=port), limit=10**6)
    assert network.hosts == []
    assert image_host.requests == []


#: URLs no resolver or socket can take as they are: invalid IDNA labels (only decoding the host
#: finds them), broken brackets, ports out of range, control characters, empty hosts
MALFORMED = [
    "http://xn--a.com/x.png",
    "http://xn--/x.png",
    "https://xn--a.xn--b/x.png",
    "http://xn--ls8h.la/x.png",
    "http://[::1/x.png",
    "http://[zz::1]/x.png",
    "http://[fe80::1%25/x.png",
    "http://[::ffff:999.1.1.1]/x.png",
    "http://example.com:99999/x.png",
    "http://example.com:65536/x.png",
    "http://example.com:0/x.png",
    "http://example.com:8o/x.png",
    "http://a\x00b.com/x.png",
    "http://a\nb.com/x.png",
    "http://\uff0e\uff0e/x.png",
    "http://\u2488.com/x.png",
    "http://\ud800.com/x.png",
    "http://example.com/\ud800.png",
    "http:///x.png",
    "http://user@/x.png",
    "//example.com/x.png",
    "",
]


@pytest.mark.anyio
@pytest.mark.parametrize("url", MALFORMED)
async def test_a_malformed_url_is_the_one_refusal_with_nothing_fetched(
    url: str, guarded: Made, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a fetcher that would connect anywhere (every name resolves to loopback)
    network = Recording()
    guard = fetcher(guarded, resolver=_Everywhere(), policy=lambda address: True, network=network)

    # When it is asked for a malformed URL / Then it refuses as it refuses any URL, logged
    with caplog.at_level(logging.WARNING), pytest.raises(FetchError):
        await guard.fetch(url, limit=10**6)
    assert network.hosts == []
    assert [r.getMessage() for r in caplog.records] == ["url not fetched"]


@pytest.mark.anyio
async def test_a_redirect_to_a_malformed_url_is_refused(
    image_host: FakeImageHost, guarded: Made
) -> None:
    url = f"{image_host.url}/away?to=http://xn--a.com/x.png"
    with pytest.raises(FetchError):
        await fetcher(guarded, policy=stand_in).fetch(url, limit=10**6)
    assert image_host.requests == ["/away?to=http://xn--a.com/x.png"]


class _Everywhere:
    """A resolver under which every name is loopback (so only the URL's form can refuse it)."""

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        return [LOOPBACK]


@pytest.mark.anyio
async def test_every_address_of_a_name_must_be_public(
    image_host: FakeImageHost, guarded: Made
) -> None:
    # a name answering a public address and a private one is refused: either may be used
    names = Names({"mixed.test": [["127.0.0.1", "10.0.0.1"]], "none.test": [[]]})
    network = Recording()
    guard = fetcher(guarded, resolver=names, policy=stand_in, network=network)
    port = image_host.url.rsplit(":", 1)[1]
    for host in ("mixed.test", "none.test", "unknown.test"):
        with pytest.raises(FetchError):
            await guard.fetch(f"http://{host}:{port}/files/x.png", limit=10**6)
    assert network.hosts == []
    assert image_host.requests == []


@pytest.mark.anyio
async def test_the_reason_is_logged_without_the_query(
    image_host: FakeImageHost, guarded: Made, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{image_host.url}/files/x.png?X-Amz-Signature=s3cr3t-signature"
    with caplog.at_level(logging.WARNING), pytest.raises(FetchError) as caught:
        await fetcher(guarded).fetch(url, limit=10**6)
    (record,) = [r for r in caplog.records if r.getMessage() == "url not fetched"]
    assert record.url == f"{image_host.url}/files/x.png"  # type: ignore[attr-defined]
    assert "127.0.0.1" in record.reason and "not a public address" in record.reason  # type: ignore[attr-defined]
    assert "s3cr3t" not in caplog.text
    assert caught.value.reason == record.reason  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- fetching


@pytest.mark.anyio
async def test_the_opt_in_allows_loopback(image_host: FakeImageHost, guarded: Made) -> None:
    url = f"{image_host.url}/files/x.png"
    with pytest.raises(FetchError):
        await fetcher(guarded, Settings()).fetch(url, limit=10**6)
    allowed = fetcher(guarded, Settings(allow_private_urls=True))
    assert await allowed.fetch(url, limit=10**6) == image_host.files["x.png"]
    assert image_host.requests == ["/files/x.png"]


@pytest.mark.anyio
async def test_the_connection_goes_to_the_checked_address(
    image_host: FakeImageHost, guarded: Made
) -> None:
    # Given a name whose first answer passes the check and whose later answers are private
    # (DNS rebinding)
    names = Names({"rebind.test": [["127.0.0.1"], ["10.0.0.1"], ["169.254.169.254"]]})
    network = Recording()
    guard = fetcher(guarded, resolver=names, policy=stand_in, network=network)
    port = image_host.url.rsplit(":", 1)[1]

    # When the gateway fetches a URL on it
    data = await guard.fetch(f"http://rebind.test:{port}/files/x.png", limit=10**6)

    # Then the name was resolved once and the connection went to that checked address
    assert data == image_host.files["x.png"]
    assert names.asked == ["rebind.test"]
    assert network.hosts == ["127.0.0.1"]
    # with the URL's own host in the Host header
    assert image_host.hosts == [f"rebind.test:{port}"]


@pytest.mark.anyio
async def test_a_host_s_checked_addresses_serve_new_connections_until_their_verdict_lapses(
    guarded: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a name whose first answer is public and whose later answers are private
    # (rebinding), and a server that closes every connection after one answer
    names = Names({"images.example": [[PUBLIC], [PUBLIC], ["10.0.0.1"]]})
    network = Canned(*png_answer("Connection: close"))
    guard = fetcher(guarded, resolver=names, network=network)
    url = "http://images.example/a.png"

    # When a burst of downloads opens connections to it, then one more comes
    for data in await asyncio.gather(*(guard.fetch(url, limit=10**6) for _ in range(5))):
        assert data == make_png(4, 4)
    assert await guard.fetch(url, limit=10**6) == make_png(4, 4)

    # Then the name was resolved once and every connection went to the checked address
    assert names.asked == ["images.example"]
    assert network.hosts == [PUBLIC] * 6

    # And once the verdict has lapsed the name is resolved again: the private answer is refused
    monkeypatch.setattr(fetcher_module, "VERDICT_SECONDS", 0.0)
    guard = fetcher(guarded, resolver=names, network=network)
    assert await guard.fetch(url, limit=10**6) == make_png(4, 4)  # resolved: the public answer
    with pytest.raises(FetchError):
        await guard.fetch(url, limit=10**6)
    assert names.asked == ["images.example"] * 3
    assert network.hosts == [PUBLIC] * 7


@pytest.mark.anyio
async def test_a_refusal_is_not_kept(guarded: Made) -> None:
    # Given a name that first does not resolve, then resolves to a public address
    names = Names({"images.example": [[], [PUBLIC]]})
    guard = fetcher(guarded, resolver=names, network=Canned(*png_answer()))
    with pytest.raises(FetchError):
        await guard.fetch("http://images.example/a.png", limit=10**6)
    # When it is fetched again / Then it is resolved again, and fetched
    assert await guard.fetch("http://images.example/a.png", limit=10**6) == make_png(4, 4)
    assert names.asked == ["images.example"] * 2


@pytest.mark.anyio
async def test_tls_verifies_the_host_name_while_connecting_to_the_checked_address(
    guarded: Made,
) -> None:
    # no network: a canned answer; the default policy, a name with a public address
    names = Names({"images.example": [[PUBLIC], ["127.0.0.1"]]})
    network = Canned(*png_answer())
    guard = fetcher(guarded, resolver=names, network=network)

    data = await guard.fetch("https://images.example/a.png", limit=10**6)

    assert data == make_png(4, 4)
    assert network.hosts == [PUBLIC]
    assert network.server_names == ["images.example"]  # SNI and certificate check


@pytest.mark.anyio
async def test_redirects_are_followed_up_to_three(image_host: FakeImageHost, guarded: Made) -> None:
    guard = fetcher(guarded, policy=stand_in)
    data = await guard.fetch(f"{image_host.url}/hop/{MAX_REDIRECTS}/x.png", limit=10**6)
    assert data == image_host.files["x.png"]
    assert image_host.requests == ["/hop/3/x.png", "/hop/2/x.png", "/hop/1/x.png", "/files/x.png"]

    image_host.requests.clear()
    with pytest.raises(FetchError, match="redirects"):
        await guard.fetch(f"{image_host.url}/hop/{MAX_REDIRECTS + 1}/x.png", limit=10**6)
    assert image_host.requests == ["/hop/4/x.png", "/hop/3/x.png", "/hop/2/x.png", "/hop/1/x.png"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.test/computeMetadata/v1/",
        "http://127.0.0.2:{port}/files/x.png",
        "http://[::1]:{port}/files/x.png",
        "http://2130706434:{port}/files/x.png",
        "http://private.test:{port}/files/x.png",
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/x.png",
    ],
)
async def test_a_redirect_to_a_private_address_is_refused(
    target: str, image_host: FakeImageHost, guarded: Made
) -> None:
    names = Names({"metadata.test": [["169.254.169.254"]], "private.test": [["10.0.0.1"]]})
    network = Recording()
    guard = fetcher(guarded, resolver=names, policy=stand_in, network=network)
    port = image_host.url.rsplit(":", 1)[1]

    with pytest.raises(FetchError):
        await guard.fetch(f"{image_host.url}/away?to={target.format(port=port)}", limit=10**6)

    assert network.hosts == ["127.0.0.1"]  # the allowed first hop only
    assert len(image_host.requests) == 1


@pytest.mark.anyio
async def test_the_size_cap_stops_reading(image_host: FakeImageHost, guarded: Made) -> None:
    # Given a server streaming 64 MiB without a Content-Length
    size = 64 * 1024 * 1024
    network = Recording()
    guard = fetcher(guarded, policy=stand_in, network=network)

    # When the gateway fetches it with a 100 kB cap / Then it gives up
    with pytest.raises(FetchError, match="limit"):
        await guard.fetch(f"{image_host.url}/stream/{size}", limit=100_000)
    # having read no more than the cap and one more read (64 KiB) of the connection
    assert 100_000 < network.received <= 100_000 + 2 * 64 * 1024


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (("Content-Length: 104857600",), "limit"),
        (("Content-Encoding: gzip",), "compressed"),
        (("Content-Encoding: br",), "compressed"),
    ],
)
async def test_too_large_or_compressed_answers_are_refused_unread(
    headers: tuple[str, ...], reason: str, guarded: Made
) -> None:
    # Given an answer that declares 100 MB (and sends 4x4 pixels: a body read would end
    # early, a protocol error) or a compressed one
    names = Names({"images.example": [[PUBLIC]]})
    guard = fetcher(guarded, resolver=names, network=Canned(*png_answer(*headers)))
    # When it is fetched / Then it is refused for what its head says, before its body is read
    with pytest.raises(FetchError, match=reason):
        await guard.fetch("http://images.example/a.png", limit=10**6)


@pytest.mark.anyio
async def test_an_answer_that_never_comes_times_out(
    image_host: FakeImageHost, guarded: Made
) -> None:
    # Given a host answering after 5 s (its default), and a timeout of 1.5 s: long enough for
    # the request to reach the host on a busy machine, far short of the answer
    guard = fetcher(guarded, policy=stand_in, timeout=1.5)
    with pytest.raises(FetchError, match="within"):
        await guard.fetch(f"{image_host.url}/slow", limit=10**6)
    assert image_host.requests == ["/slow"]


@pytest.mark.anyio
async def test_error_statuses_fail(image_host: FakeImageHost, guarded: Made) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        await fetcher(guarded, policy=stand_in).fetch(f"{image_host.url}/files/no.png", limit=9)


@pytest.mark.anyio
async def test_no_cookies_are_kept(image_host: FakeImageHost, guarded: Made) -> None:
    guard = fetcher(guarded, policy=stand_in)
    await guard.fetch(f"{image_host.url}/cookie/x.png", limit=10**6)
    await guard.fetch(f"{image_host.url}/files/x.png", limit=10**6)
    assert len(image_host.requests) == 3
    assert image_host.cookies == []


@pytest.mark.anyio
async def test_proxies_from_the_environment_are_not_used(
    image_host: FakeImageHost, guarded: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    data = await fetcher(guarded, policy=stand_in).fetch(f"{image_host.url}/files/x.png", limit=99)
    assert data == image_host.files["x.png"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://images.example/a.png",
        "https://Images.Example:8443/dir/a%20b.png?Expires=1&Signature=x%2By",
        "http://images.example:80/a.png?",
    ],
)
async def test_a_download_sends_what_httpx_s_client_sends(url: str, guarded: Made) -> None:
    # Given a fetcher whose pool no transport layer observes (its downloads skip the client)
    names = Names({"images.example": [[PUBLIC]]})
    network = CannedWritten(*png_answer())
    guard = fetcher(guarded, resolver=names, network=network)

    # When it downloads a URL
    assert await guard.fetch(url, limit=10**6) == make_png(4, 4)

    # Then the request is the one the client builds: its target, the Host header first, then
    # the client's own headers (identity encoding asked), in the same order
    head = b"".join(network.sent).split(b"\r\n\r\n")[0].split(b"\r\n")
    built = guard.client.build_request("GET", url)
    assert head[0] == b"GET " + built.url.raw_path + b" HTTP/1.1"
    sent = [tuple(line.split(b": ", 1)) for line in head[1:]]
    assert [(k.lower(), v) for k, v in sent] == [(k.lower(), v) for k, v in built.headers.raw]
    assert sent[0][1] == built.url.netloc
    assert (b"accept-encoding", b"identity") in [(k.lower(), v) for k, v in sent]


# ----------------------------------------------------------------------------- results


@pytest.mark.anyio
async def test_result_links_on_a_configured_providers_host_are_trusted(
    image_host: FakeImageHost, guarded: Made
) -> None:
    # Given a self-hosted provider on a private address (loopback here), no opt-in
    settings = Settings(openai_base_url=f"{image_host.url}/v1")
    results = Fetcher.for_results(settings)
    guarded.append(results)
    url = f"{image_host.url}/files/x.png"

    # Then its result links are fetched
    assert await results.fetch(url, limit=10**6) == image_host.files["x.png"]
    # but a redirect away from its host is checked like any URL
    port = image_host.url.rsplit(":", 1)[1]
    with pytest.raises(FetchError):
        await results.fetch(
            f"{image_host.url}/away?to=http://localhost:{port}/files/x.png", limit=10**6
        )
    # and a client's URL on the provider's host is not trusted
    with pytest.raises(FetchError):
        await fetcher(guarded, settings).fetch(url, limit=10**6)
    assert [path.split("?")[0] for path in image_host.requests] == ["/files/x.png", "/away"]


# ----------------------------------------------------------------------------- deployment


def test_the_deployed_gateway_never_allows_private_urls() -> None:
    assert Settings().allow_private_urls is False
    for name in ("template.yaml", "samconfig.toml", "Makefile"):
        path = ROOT / name
        if path.exists():
            assert "ALLOW_PRIVATE_URLS" not in path.read_text(), name
