"""The request reader refuses, with a 400 in the OpenAI shape, every body or header it could
not forward faithfully (never a 500), and the key's shape before any body is read."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.requests import Request

from imagegw.errors import AuthenticationError, InvalidRequestError, PayloadTooLargeError, render
from imagegw.frontends.cors import came_through_rest_api
from imagegw.frontends.inbound import MAX_JSON_DEPTH, MAX_KEY_CHARS, parse_json
from imagegw.frontends.web import (
    api_key,
    client_budget,
    header,
    public_base_url,
    read_form,
    read_json,
)
from imagegw.infra.config import Settings

pytestmark = pytest.mark.anyio
LIMIT = 6 * 1024 * 1024


def request(body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    """A POST request whose body arrives in one message; headers as raw bytes, as a server
    passes them (Starlette decodes them as latin-1)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": headers or [],
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "query_string": b"",
    }
    return Request(scope, receive)


async def refusal(read: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """The error a read raises, as the client sees it: asserts a 400 in the OpenAI shape
    whose body encodes as UTF-8 JSON (what the response writer does)."""
    with pytest.raises(InvalidRequestError) as caught:
        await read()
    status, body, headers = render(caught.value)
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert headers["x-should-retry"] == "false"
    json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    error: dict[str, Any] = body["error"]
    return error


async def read_raw_json(raw: bytes) -> dict[str, Any]:
    return await read_json(request(raw), LIMIT)


def chat_body(content: str) -> bytes:
    """A chat body with `content` spliced in as raw JSON text (escapes kept as written)."""
    return ('{"model": "m", "messages": [{"role": "user", "content": ' + content + "}]}").encode()


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (chat_body('"a cat \\ud800"'), "messages.0.content"),
        (chat_body('"\\udfff tail"'), "messages.0.content"),
        (chat_body('"half a pair \\ud83d"'), "messages.0.content"),
        (b'{"model": "m", "extra": {"deep": ["ok", "\\udc00"]}}', "extra.deep.1"),
    ],
)
async def test_lone_surrogates_are_a_400_naming_the_field(raw: bytes, param: str) -> None:
    error = await refusal(lambda: read_raw_json(raw))
    assert error["code"] == "invalid_text"
    assert error["param"] == param


async def test_a_surrogate_in_a_key_is_refused_without_echoing_it() -> None:
    error = await refusal(lambda: read_raw_json(b'{"ok": {"bad\\ud800key": 1}}'))
    assert error["code"] == "invalid_text"
    assert "\ud800" not in error["param"]
    assert error["param"].startswith("ok.bad")


async def test_surrogates_sent_as_raw_bytes_are_not_utf8() -> None:
    # CESU-8 / WTF-8 bytes for U+D800; json.loads(bytes) would have let them through
    raw = b'{"model": "m", "prompt": "\xed\xa0\x80"}'
    error = await refusal(lambda: read_raw_json(raw))
    assert error["code"] == "invalid_encoding"


async def test_bodies_that_are_not_utf8_are_refused() -> None:
    error = await refusal(lambda: read_raw_json(b'{"prompt": "caf\xe9"}'))
    assert error["code"] == "invalid_encoding"


async def test_paired_surrogate_escapes_and_a_bom_are_fine() -> None:
    body = await read_raw_json(b'\xef\xbb\xbf{"prompt": "smile \\ud83d\\ude00", "n": 1}')
    assert body == {"prompt": "smile \U0001f600", "n": 1}


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("NaN", "temperature"),
        ("Infinity", "temperature"),
        ("-Infinity", "temperature"),
        ("1e400", "temperature"),
        ("18446744073709551616", "temperature"),  # 2**64
        ("-9223372036854775809", "temperature"),  # -2**63 - 1
        ("1" * 400, "temperature"),
    ],
)
async def test_numbers_that_cannot_be_sent_on_are_a_400(value: str, param: str) -> None:
    raw = ('{"model": "m", "temperature": ' + value + "}").encode()
    error = await refusal(lambda: read_raw_json(raw))
    assert error["code"] == "invalid_number"
    assert error["param"] == param


async def test_a_number_past_pythons_digit_limit_is_a_400() -> None:
    raw = ('{"seed": ' + "9" * 5000 + "}").encode()
    error = await refusal(lambda: read_raw_json(raw))
    assert error["code"] == "invalid_number"


async def test_64_bit_integers_and_finite_floats_pass() -> None:
    raw = b'{"a": 18446744073709551615, "b": -9223372036854775808, "c": 1.5e308, "d": true}'
    assert await read_raw_json(raw) == {
        "a": 2**64 - 1,
        "b": -(2**63),
        "c": 1.5e308,
        "d": True,
    }


def nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    """A body object whose field `x` holds `depth - 1` more levels (the body is level 1)."""
    inner = opener * (depth - 1) + closer * (depth - 1)
    return ('{"x": ' + inner + "}").encode()


async def test_nesting_up_to_the_limit_passes() -> None:
    body = await read_raw_json(nested(MAX_JSON_DEPTH))
    assert "x" in body


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
async def test_deeper_nesting_is_a_400_not_a_recursion_error(depth: int) -> None:
    error = await refusal(lambda: read_raw_json(nested(depth)))
    assert error["code"] == "too_deep"


async def test_deep_objects_are_refused_too() -> None:
    raw = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000
    error = await refusal(lambda: read_raw_json(raw))
    assert error["code"] == "too_deep"


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'"text"', b"null"])
async def test_not_a_json_object_is_a_400(raw: bytes) -> None:
    error = await refusal(lambda: read_raw_json(raw))
    assert error["code"] == "invalid_json"


def test_what_the_reader_accepts_reencodes_as_json() -> None:
    # Given a body with every kind of value the reader accepts
    raw = b'{"s": "\\u00e9\\ud83d\\ude00\\u0000", "n": [1, -2.5, 1e308], "o": {"t": null}}'
    # When it is read and encoded as httpx encodes a provider's JSON body
    value = parse_json(raw)
    encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    # Then the provider gets the same value
    assert json.loads(encoded) == value


# --------------------------------------------------------------------------- multipart


def multipart(fields: list[tuple[str, bytes]], charset: str | None = None) -> Request:
    boundary = "b0und4ry"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in fields
    )
    body = parts + f"--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    if charset:
        content_type += f"; charset={charset}"
    return request(body, [(b"content-type", content_type.encode())])


async def test_a_text_field_that_is_not_utf8_is_a_400() -> None:
    form = multipart([("prompt", b"caf\xe9 au lait")])
    error = await refusal(lambda: read_form(form, LIMIT))
    assert error["code"] == "invalid_multipart"
    assert "prompt" in error["message"]


async def test_a_charset_that_decodes_to_surrogates_is_a_400() -> None:
    # "+2AA-" is a lone U+D800 in UTF-7
    form = multipart([("prompt", b"a cat +2AA-")], charset="utf-7")
    error = await refusal(lambda: read_form(form, LIMIT))
    assert error["code"] == "invalid_text"
    assert error["param"] == "prompt"


async def test_utf8_text_fields_are_read() -> None:
    form = multipart([("prompt", "café ☕".encode()), ("n", b"2")])
    assert await read_form(form, LIMIT) == [("prompt", "café ☕"), ("n", "2")]


# --------------------------------------------------------------------------- the key


def bearer(token: bytes) -> Request:
    return request(b"", [(b"authorization", b"Bearer " + token)])


@pytest.mark.parametrize(
    "token",
    [
        "ms-t\xe9st-token-\xff".encode("latin-1"),  # non-ASCII, as a latin-1 header
        "ms-tést-token".encode(),  # UTF-8 bytes of a non-ASCII key
        b"ms-\x7ftoken-123",  # DEL
        b"k" * (MAX_KEY_CHARS + 1),
    ],
)
def test_a_key_of_the_wrong_shape_is_a_401_that_never_echoes_it(token: bytes) -> None:
    with pytest.raises(AuthenticationError) as caught:
        api_key(bearer(token))
    status, body, _ = render(caught.value)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    shown = json.dumps(body, ensure_ascii=False)
    assert token.decode("latin-1")[:8] not in shown
    assert token.decode("latin-1")[-8:] not in shown


@pytest.mark.parametrize("token", [b"ms-test-token", b"EMPTY", b"k" * MAX_KEY_CHARS])
def test_keys_of_the_right_shape_pass(token: bytes) -> None:
    assert api_key(bearer(token)).get_secret_value() == token.decode()


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "name", ["Idempotency-Key", "Prefer", "X-Stainless-Timeout", "X-Forwarded-Proto", "Host"]
)
def test_a_non_ascii_header_the_routes_read_is_a_400_naming_it(name: str) -> None:
    given = request(b"", [(name.lower().encode(), b"caf\xe9")])
    with pytest.raises(InvalidRequestError) as caught:
        header(given, name)
    status, body, _ = render(caught.value)
    assert (status, body["error"]["param"], body["error"]["code"]) == (
        400,
        name,
        "invalid_header",
    )


def test_sdk_timeout_headers_go_through_the_reader() -> None:
    with pytest.raises(InvalidRequestError):
        client_budget(request(b"", [(b"x-stainless-read-timeout", b"\xb2\xb3")]))
    assert client_budget(request(b"", [(b"x-stainless-timeout", b"600")])) == 570.0


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"evil.example/path?x=")],
        [(b"host", b'a"b')],
        [(b"host", b"caf\xe9.example")],
        [(b"host", b"ok.example"), (b"x-forwarded-proto", b"javascript")],
    ],
)
def test_links_are_never_built_from_a_forged_host_or_scheme(
    headers: list[tuple[bytes, bytes]],
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        public_base_url(request(b"", headers), Settings())
    assert caught.value.code == "invalid_header"


@pytest.mark.parametrize(
    "host", [b"localhost:8000", b"127.0.0.1", b"[::1]:8000", b"gw.example.org", b"my_gw:80"]
)
def test_ordinary_hosts_make_links(host: bytes) -> None:
    got = public_base_url(request(b"", [(b"host", host)]), Settings())
    assert got == f"http://{host.decode()}"


def test_an_unreadable_request_context_is_ignored() -> None:
    # Given a forged, hopelessly nested x-amzn-request-context (a header holds ~16 KB)
    deep = b"[" * 16_000 + b"]" * 16_000
    given = request(b"", [(b"host", b"gw.example"), (b"x-amzn-request-context", deep)])
    # Then links and CORS treat it as absent instead of failing
    assert public_base_url(given, Settings()) == "http://gw.example"
    assert came_through_rest_api(given.headers) is False


async def test_the_param_names_where_a_refused_value_sits() -> None:
    raw = (
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "ok"},'
        b' {"type": "text", "text": "\\ud800"}]}]}'
    )
    error = await refusal(lambda: read_raw_json(raw))
    assert error["param"] == "messages.0.content.1.text"


async def test_a_refused_value_deep_in_a_huge_body_is_still_a_400() -> None:
    # Given a bad number after a million small arrays (too many to trace a path through)
    raw = b'{"a": [' + b"[1]," * 1_000_000 + b"[NaN]]}"
    error = await refusal(lambda: read_raw_json(raw))
    assert error["code"] == "invalid_number"


async def test_odd_content_lengths_are_no_500() -> None:
    # a 5,000-digit length is simply too large; a latin-1 superscript digit is no number
    huge = request(b"{}", [(b"content-length", b"9" * 5000)])
    with pytest.raises(PayloadTooLargeError):
        await read_json(huge, LIMIT)
    odd = request(b"{}", [(b"content-length", b"\xb2")])
    assert await read_json(odd, LIMIT) == {}
