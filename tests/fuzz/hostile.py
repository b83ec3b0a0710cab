"""Hostile values for the fuzz suite: what an attacker (or a broken client) puts in a request.

Strategies here know nothing of endpoints: strings with lone surrogates and control characters,
numbers at and past every bound, JSON with NaN/Infinity tokens, deep nesting and broken syntax,
data URIs good, bad, huge and tiny, image URLs pointing at loopback, private and metadata
addresses in odd encodings or at hosts no parser takes, and header values outside ASCII.
`fuzz.cases` builds whole requests from them.

JSON is written by `to_json`, so a value tree may hold `Raw` tokens (text put into the JSON as
it is: `NaN`, `1e999`, 100,000 nested brackets) that no JSON library would write.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from fakes.png import GIF_1x1, JPEG_1x1, WEBP_1x1, make_png

PNG_1x1 = make_png(1, 1)
PNG_SMALL = make_png(8, 6)


@dataclass(frozen=True)
class Raw:
    """Text written into a JSON document as it is (not a JSON value in Python)."""

    text: str


def to_json(value: Any) -> str:
    """`value` as JSON text; `Raw` leaves go in verbatim, strings are escaped as `json.dumps`
    does (lone surrogates become `\\ud800` escapes)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(item) for item in value) + "]"
    return json.dumps(value)


def nested(depth: int, inner: str = "1") -> Raw:
    """`depth` nested arrays around `inner`."""
    return Raw("[" * depth + inner + "]" * depth)


# ---------------------------------------------------------------------------- scalars

#: strings that have broken parsers, loggers and encoders somewhere
NASTY_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\t\n",
    "\x00",
    "\x7f\x1b[31m",
    "\ud800",
    "\udfff",
    "a\ud83dz",
    "\ud800\udc00",  # a surrogate pair written as two code points
    "\u202eexe.png",
    "\ufeffbom",
    "\u0000null\u0000",
    "null",
    "NaN",
    "Infinity",
    "-1",
    "1e309",
    "0x10",
    "%00",
    "%ff%fe",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "{{7*7}}",
    "${jndi:ldap://127.0.0.1/a}",
    "\r\nX-Injected: yes",
    "🎨🖼️" * 3,
    "é" * 40,
    "A" * 3000,
)

#: numbers at and past the bounds the gateway and providers use
NASTY_INTS: tuple[int, ...] = (
    0,
    -1,
    1,
    2,
    4,
    5,
    10,
    11,
    63,
    64,
    100,
    101,
    1664,
    2048,
    4097,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    9_999_999_999,
    10**30,
)

#: number tokens JSON does not allow, or that overflow a float or an int conversion
NASTY_NUMBER_TOKENS: tuple[str, ...] = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1e-999",
    "-0",
    "-0.0",
    "0.1e1",
    "1" * 5000,
    "1.5",
    "1E2",
)


def surrogate_text(max_size: int = 20) -> st.SearchStrategy[str]:
    """Text that may hold lone surrogates and control characters."""
    return st.text(
        alphabet=st.characters(codec=None, categories=None, exclude_characters=""),
        max_size=max_size,
    )


def weird_text(max_size: int = 30) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY_STRINGS),
        st.text(max_size=max_size),
        surrogate_text(max_size),
    )


def weird_number() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(NASTY_INTS),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(NASTY_NUMBER_TOKENS).map(Raw),
    )


def weird_scalar() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), weird_number(), weird_text())


def weird_value(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any JSON value (and some no JSON library writes): scalars, small containers, deep
    nesting."""
    return st.one_of(
        weird_scalar(),
        st.sampled_from((40, 999, 1200, 5000)).map(nested),
        st.recursive(
            weird_scalar(),
            lambda inner: st.one_of(
                st.lists(inner, max_size=3),
                st.dictionaries(st.text(max_size=8), inner, max_size=3),
            ),
            max_leaves=max_leaves,
        ),
    )


# ---------------------------------------------------------------------------- images


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


GOOD_IMAGES: tuple[bytes, ...] = (PNG_1x1, PNG_SMALL, JPEG_1x1, GIF_1x1, WEBP_1x1)


def _declaring(width: int, height: int) -> bytes:
    """A small whole PNG whose header declares `width` x `height` (issue 24, class 5)."""
    png = bytearray(make_png(2, 2))
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


#: images that are not what they say (issue 24, class 5): a header declaring 30000x30000, a
#: PNG cut short, a JPEG without its end marker
LYING_IMAGES: tuple[bytes, ...] = (
    _declaring(30000, 30000),
    _declaring(70000, 1),
    make_png(40, 30)[:-20],
    JPEG_1x1[:-2],
)


def image_bytes(max_image_bytes: int) -> st.SearchStrategy[bytes]:
    """An upload's bytes: a real small image, or not an image, or empty, or over the limit."""
    return st.one_of(
        st.sampled_from(GOOD_IMAGES),
        st.sampled_from(GOOD_IMAGES),
        st.sampled_from(GOOD_IMAGES),
        st.binary(max_size=64),
        st.just(b""),
        st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16),  # a PNG signature and nothing sane after
        st.just(PNG_1x1 + b"\x00" * (max_image_bytes + 1)),
        st.just(b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        st.sampled_from(LYING_IMAGES),
    )


def data_uri(max_image_bytes: int) -> st.SearchStrategy[str]:
    """Data URIs as clients send them, and as they should not."""
    good = st.sampled_from(GOOD_IMAGES).map(lambda d: f"data:image/png;base64,{b64(d)}")
    huge_payload = "A" * (max_image_bytes * 4 // 3 + 64)
    return st.one_of(
        good,
        good,
        st.sampled_from(GOOD_IMAGES).map(lambda d: f"DATA:IMAGE/JPEG;BASE64,{b64(d)}"),
        st.sampled_from(GOOD_IMAGES).map(lambda d: f"data:image/png;base64,{b64(d)[:-3]}"),
        st.sampled_from(GOOD_IMAGES).map(lambda d: f"data:image/png;base64,  {b64(d)}\n"),
        st.sampled_from(GOOD_IMAGES).map(
            lambda d: "data:image/png;base64," + base64.urlsafe_b64encode(d).decode()
        ),
        st.sampled_from(LYING_IMAGES).map(lambda d: f"data:image/png;base64,{b64(d)}"),
        st.just(f"data:text/html;base64,{b64(b'<script>alert(1)</script>')}"),
        st.just(f"data:image/png,{PNG_1x1.decode('latin-1')}"),
        st.just("data:,"),
        st.just("data:image/png;base64,"),
        st.just("data:image/png;base64,!!!!"),
        st.just(f"data:image/png;base64,{huge_payload}"),
        st.binary(min_size=1, max_size=48).map(lambda d: f"data:image/png;base64,{b64(d)}"),
        weird_text().map(lambda t: f"data:image/png;base64,{t}"),
    )


# ---------------------------------------------------------------------------- URLs

#: hosts that are loopback, in the encodings an SSRF filter must see through
LOOPBACK_HOSTS: tuple[str, ...] = (
    "127.0.0.1",
    "localhost",
    "LOCALHOST",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "017700000001",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "127.0.0.1.",
)
#: addresses a gateway must never fetch: private, link-local, metadata, CGNAT, multicast,
#: unspecified, ULA, and the same in other encodings. Never reachable from the fuzz: the
#: tripwire (conftest) refuses every connection that is not to loopback.
PRIVATE_HOSTS: tuple[str, ...] = (
    "169.254.169.254",
    "2852039166",  # 169.254.169.254 in decimal
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "[::ffff:169.254.169.254]",
    "[fd00:ec2::254]",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "0.0.0.0",
    "0",
    "[::]",
    "[::1]",
    "224.0.0.1",
    "[fd00::1]",
    "[fe80::1]",
    "metadata.google.internal",
    "instance-data",
)

#: hosts (and ports) no URL parser, resolver or socket takes as they are: IDNA labels that do not
#: decode (httpx raises only when the host is read), broken brackets and addresses, ports out of
#: range, full-width dots, control characters. Each must be the fetcher's one refusal.
MALFORMED_HOSTS: tuple[str, ...] = (
    "xn--a.com",
    "xn--",
    "xn--a.xn--b",
    "xn--ls8h.la",
    "xn--zz-0000.com",
    "[zz::1]",
    "[::ffff:999.1.1.1]",
    "[fe80::1%25",
    "example.com:99999",
    "example.com:65536",
    "example.com:0",
    "127.0.0.1:8o",
    "\uff0e\uff0e",
    "\u2488.com",
    "a\tb.com",
    "%zz",
)


@dataclass(frozen=True)
class UrlFactory:
    """Builds the image URLs of the fuzz: `canary_port` answers on loopback (an image, a JSON
    "secret", a redirect); `closed_port` has nothing listening."""

    canary_port: int
    closed_port: int

    def canary(self, host: str = "127.0.0.1", path: str = "/image.png") -> str:
        return f"http://{host}:{self.canary_port}{path}"

    def strategy(self) -> st.SearchStrategy[str]:
        paths = st.sampled_from(
            ("/image.png", "/latest/meta-data/iam/security-credentials/", "/redirect", "/slow")
        )
        return st.one_of(
            st.builds(self.canary, st.sampled_from(LOOPBACK_HOSTS), paths),
            st.builds(
                lambda h, p: f"http://{h}:{self.closed_port}{p}",
                st.sampled_from(LOOPBACK_HOSTS),
                paths,
            ),
            st.builds(lambda h, p: f"http://{h}{p}", st.sampled_from(PRIVATE_HOSTS), paths),
            st.builds(lambda h: f"https://{h}/latest/meta-data/", st.sampled_from(PRIVATE_HOSTS)),
            st.builds(lambda h, p: f"http://{h}{p}", st.sampled_from(MALFORMED_HOSTS), paths),
            st.sampled_from(
                (
                    f"http://user:pass@127.0.0.1:{self.canary_port}/image.png",
                    f"http://127.0.0.1:{self.canary_port}#@example.com/image.png",
                    f"http://example.com@127.0.0.1:{self.canary_port}/image.png",
                    f"HTTP://127.0.0.1:{self.canary_port}/image.png",
                    f"http://127.0.0.1:{self.canary_port}/%2e%2e/image.png",
                    "file:///etc/passwd",
                    "gopher://127.0.0.1:6379/_INFO",
                    "ftp://127.0.0.1/x.png",
                    "javascript:alert(1)",
                    "http://",
                    "http://[::1",
                    "http://:80/x.png",
                    "http://example.com/x.png",
                    "https://images.example.org/a%00b.png",
                    "//127.0.0.1/x.png",
                    "http://127.0.0.1:99999/x.png",
                    "http://127.0.0.1:-1/x.png",
                    "http://\u0130\u0131.example/x.png",
                    "http://ex\ud800ample.com/x.png",
                )
            ),
        )


# ---------------------------------------------------------------------------- headers


def header_value() -> st.SearchStrategy[bytes]:
    """A header value as bytes an HTTP/1.1 parser passes on: ASCII, latin-1 bytes above 0x7f,
    control characters (no CR, LF or NUL)."""
    allowed = [b for b in range(1, 256) if b not in (0x0A, 0x0D)]
    return st.one_of(
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
            str.encode
        ),
        st.lists(st.sampled_from(allowed), max_size=40).map(bytes).map(lambda b: b.strip()),
        st.sampled_from(
            (b"", b"\xff\xfe", b"\xc3\xa9t\xc3\xa9", b"\xe9t\xe9", b"A" * 6000, b"\x01\x02")
        ),
    )


def bad_authorization(key: str) -> st.SearchStrategy[bytes | None]:
    """Authorization headers other than `Bearer <key>`: none, malformed, other schemes, the key
    with bytes outside ASCII, a key too long or holding control characters."""
    return st.one_of(
        st.sampled_from(
            (
                None,
                b"",
                b"Bearer",
                b"Bearer ",
                f"bearer {key}".encode(),
                f"BEARER   {key}   ".encode(),
                f"Basic {b64(f'user:{key}'.encode())}".encode(),
                f"Bearer {key} extra".encode(),
                f"Bearer {key}\xe9".encode("latin-1"),
                f"Bearer {key[:-4]}\xff\xfe\xfd\xfc".encode("latin-1"),
                b"Bearer sk-\xc3\xa9\xc3\xa8-utf8-bytes",
                b"Bearer \x01\x02\x03",
                b"Bearer " + b"k" * 6000,
                b"Bearer sk-other-key-0000000000000000",
                f"Token {key}".encode(),
            )
        ),
        header_value().map(lambda v: b"Bearer " + v),
    )


def stainless_timeout() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(
            (
                b"600",
                b"0",
                b"-1",
                b"nan",
                b"NaN",
                b"inf",
                b"-inf",
                b"1e309",
                b"1e-300",
                b"0.001",
                b"86399.9",
                b"86400",
                b"abc",
                b"",
                b"1" * 400,
                b"\xff",
            )
        ),
        header_value(),
    )


def prefer() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(
            (
                b"respond-async",
                b"RESPOND-ASYNC",
                b"respond-async; wait=5",
                b"return=minimal, respond-async",
                b"respond-async=1",
                b"respond-asyncx",
                b"wait=10",
                b"respond-async,respond-async",
                b" respond-async ;;; ,,",
                b"respond-\xe9async",
            )
        ),
        header_value(),
    )


def idempotency_key() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
        ).map(str.encode),
        st.sampled_from(
            (
                b"",
                b"   ",
                b"a" * 255,
                b"a" * 256,
                b"k" * 5000,
                b"\xe9\xe8",
                b"\x85next-line",
                b"\x01\x02",
                b"key with spaces",
                b"\xa0",
            )
        ),
        header_value(),
    )


# ---------------------------------------------------------------------------- bodies

#: ways a JSON body can be broken after it was written
BodyMutation = Callable[[str], bytes]


def body_mutations() -> st.SearchStrategy[tuple[str, BodyMutation]]:
    """(name, function) pairs turning a JSON text into the bytes sent."""

    def named(name: str, fn: BodyMutation) -> tuple[str, BodyMutation]:
        return name, fn

    return st.sampled_from(
        (
            named("none", lambda t: t.encode("utf-8", "surrogatepass")),
            named("none", lambda t: t.encode("utf-8", "surrogatepass")),
            named("none", lambda t: t.encode("utf-8", "surrogatepass")),
            named("none", lambda t: t.encode("utf-8", "surrogatepass")),
            named("none", lambda t: t.encode("utf-8", "surrogatepass")),
            named("none", lambda t: t.encode("utf-8", "surrogatepass")),
            named("truncated", lambda t: t[: max(0, len(t) // 2)].encode("utf-8", "surrogatepass")),
            named("trailing-garbage", lambda t: (t + "}}garbage").encode("utf-8", "surrogatepass")),
            named("bom", lambda t: b"\xef\xbb\xbf" + t.encode("utf-8", "surrogatepass")),
            named("utf-16", lambda t: t.encode("utf-16", "surrogatepass")),
            named("latin-1", lambda t: t.encode("latin-1", "replace")),
            named(
                "invalid-utf8", lambda t: t.replace('"', '"\xff', 1).encode("latin-1", "replace")
            ),
            named(
                "raw-surrogate-bytes",
                lambda t: t.replace('"', '"\ud800', 1).encode("utf-8", "surrogatepass"),
            ),
            named("empty", lambda t: b""),
            named("array", lambda t: f"[{t}]".encode("utf-8", "surrogatepass")),
            named("form", lambda t: b"model=x&prompt=y"),
            named("xml", lambda t: b"<?xml version='1.0'?><a>1</a>"),
            named("nul", lambda t: t.encode("utf-8", "surrogatepass") + b"\x00"),
        )
    )


def json_content_type() -> st.SearchStrategy[bytes | None]:
    return st.sampled_from(
        (
            b"application/json",
            b"application/json",
            b"application/json",
            b"application/json; charset=utf-8",
            None,
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data",
            b"application/json; charset=latin-1",
            b"\xff/\xfe",
        )
    )
