"""The fetcher's own reading of plain URLs (`imagegw.infra.fetcher._plain`): a provider's result
link is read without httpx's URL parser, so what it reads must be exactly what httpx reads (the
request line, the Host header, the port the guard checks), and every URL it cannot vouch for
is left to httpx (which may refuse it)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.png import make_png
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher, Plain, _plain

#: result links as providers give them, and as the fakes of the tests and benchmarks do
LINKS = [
    "https://muse-ai.oss-cn-hangzhou.aliyuncs.com/img/3b0c1f0a2f6c4a2f9d6c.png"
    "?OSSAccessKeyId=LTAI5tExample&Expires=1765100000&Signature=AbCdEf%2BGh%3D",
    "https://sc-maas.oss-cn-shanghai.aliyuncs.com/outputs/a_b-c.png?Expires=1&Signature=x",
    "http://127.0.0.1:45678/files/r.png",
    "https://files.example:8443/a/b/c.webp?x=1&y=/z?w",
    "https://cdn.example/x.png?",
]

#: URLs httpx would read otherwise than as written, or refuse: `_plain` leaves them to it
NOT_PLAIN = [
    "HTTP://cdn.example/x.png",  # scheme case
    "http://CDN.example/x.png",  # host case
    "http://cdn.example:80/x.png",  # the default port is left out
    "https://cdn.example:443/x.png",
    "http://cdn.example:080/x.png",
    "http://cdn.example:99999/x.png",
    "http://cdn.example",  # no path: httpx makes it /
    "http://cdn.example?x=1",
    "http://xn--a.example/x.png",  # IDNA: decoded (and refused) by httpx
    "http://999.1.1.1/x.png",  # not an IPv4 address
    "http://01.2.3.4/x.png",
    "http://1.2.3.256/x.png",
    "http://1.2.3.0004/x.png",
    "http://1.2.3." + "9" * 5000 + "/x.png",
    "http://user@cdn.example/x.png",
    "http://cdn.example/a/../x.png",  # dot segments dropped
    "http://cdn.example/./x.png",
    "http://cdn.example/x.png#frag",
    "http://cdn.example/x y.png",  # quoted by httpx
    "http://cdn.example/x.png?a=<b>",
    "http://cdn.example/x\r\n.png",
    "http://[::1]/x.png",
    "ftp://cdn.example/x.png",
    "file:///etc/passwd",
    "http://cdn.example/é.png",
]


def _as_httpx(url: str) -> tuple[bytes, bytes, int | None, bytes, bytes]:
    parsed = httpx.URL(url)
    return parsed.raw_scheme, parsed.raw_host, parsed.port, parsed.raw_path, parsed.netloc


def _as_plain(plain: Plain) -> tuple[bytes, bytes, int | None, bytes, bytes]:
    return plain.scheme, plain.host, plain.port, plain.target, plain.netloc


@pytest.mark.parametrize("url", LINKS)
def test_a_result_link_is_read_as_httpx_reads_it(url: str) -> None:
    plain = _plain(url)
    assert plain is not None  # the download of a result takes the short way
    assert _as_plain(plain) == _as_httpx(url)


@pytest.mark.parametrize("url", NOT_PLAIN)
def test_other_urls_are_left_to_httpx(url: str) -> None:
    assert _plain(url) is None


#: pieces of URLs: mostly what a plain URL is made of, and each thing httpx reads otherwise
PATH_PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        "-",
        "_",
        ".",
        "~",
        "/",
        "?",
        "=",
        "&",
        "%",
        "%2F",
        "%zz",
        ":",
        "@",
        "+",
        "!",
        "$",
        "'",
        "(",
        "*",
        ",",
        ";",
        "#",
        " ",
        "\t",
        "<",
        "`",
        "{",
        "[",
        "\\",
        "é",
        "..",
        "/.",
        "/..",
        "a/b.png",
        "?x=1&y=2",
    ]
)
HOST_PIECES = st.sampled_from(
    [
        "a",
        "b9",
        "0",
        "-",
        "_",
        ".",
        "cdn.example",
        "xn--",
        "127.0.0.1",
        "1.2.3",
        "01",
        "256",
        "1.0.0",
        ".300",
        "A",
        "é",
        "@",
        "[::1]",
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "https", "HTTP", "ftp"]),
    host=st.lists(HOST_PIECES, min_size=1, max_size=4).map("".join),
    port=st.sampled_from(["", "", ":", ":80", ":443", ":8080", ":0", ":65535", ":65536", ":08"]),
    rest=st.lists(PATH_PIECES, min_size=0, max_size=10).map("".join),
    slash=st.sampled_from(["/", "/", "/", ""]),
)
def test_whatever_is_read_plain_httpx_reads_alike(
    scheme: str, host: str, port: str, rest: str, slash: str
) -> None:
    url = f"{scheme}://{host}{port}{slash}{rest}"
    plain = _plain(url)
    if plain is not None:
        assert _as_plain(plain) == _as_httpx(url)
        assert plain.url == url


async def _heads_of(urls: list[str], lean: bool) -> tuple[list[bytes], list[bytes]]:
    """The request heads a raw HTTP server on loopback received for `urls`, fetched one after
    the other by a fetcher (lean connections or httpcore's), and the bodies fetched."""
    heads: list[bytes] = []
    png = make_png(4, 4)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # each request on the connection, until the client closes it
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(png), png))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fetcher = Fetcher(Settings(allow_private_urls=True), lean=lean)
    try:
        bodies = [await fetcher.fetch(url.format(port=port), limit=1 << 20) for url in urls]
    finally:
        await fetcher.aclose()
        server.close()
    return heads, bodies


@pytest.mark.parametrize("lean", [True, False])
def test_a_plain_link_is_sent_as_httpx_reading_it_would_send_it(lean: bool) -> None:
    # Given a result link read plain, and the same link spelt so that httpx reads it
    plain = "http://127.0.0.1:{port}/files/r.png?X-Sig=a%2Fb&e=1"
    spelt = "HTTP://127.0.0.1:{port}/files/r.png?X-Sig=a%2Fb&e=1"
    assert _plain(plain.format(port=1)) is not None and _plain(spelt.format(port=1)) is None

    # When both are fetched
    heads, bodies = asyncio.run(_heads_of([plain, spelt], lean))

    # Then the server got the same request head, byte for byte, and both got the image
    assert len(heads) == 2 and heads[0] == heads[1]
    assert heads[0].startswith(b"GET /files/r.png?X-Sig=a%2Fb&e=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert bodies == [make_png(4, 4)] * 2
