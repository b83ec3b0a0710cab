"""Hostile and broken requests over real HTTP: each is a clear 4xx in the OpenAI error shape,
never a 500, and nothing reaches the provider.

Requests are written by hand (httpx with raw bytes, or a socket) because SDKs cannot send them:
a latin-1 bearer token, lone surrogates and NaN in JSON, 100,000 nested brackets, a body
shorter than its Content-Length, a client that hangs up half way.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from fakes.modelscope import FakeModelScope
from fakes.png import make_png
from imagegw.infra.log import logger

TOKEN = "ms-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
CHAT_MODEL = "Qwen/Qwen3-VL-30B-A3B-Instruct"  # a chat model: passed through to the fake
#: how long a socket waits for the gateway before the test gives up (a hang fails the test)
PATIENCE = 15.0

pytestmark = pytest.mark.e2e


def post(url: str, path: str, raw: bytes, headers: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=raw, headers=headers or AUTH, timeout=PATIENCE)


def error_of(answer: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error of `answer`, after checking its status and retry hint."""
    assert answer.status_code == status, answer.text
    assert answer.headers["x-should-retry"] in ("true", "false")
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def exchange(url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send `head` (request line and headers, no blank line) and `body` on a fresh socket, then
    read until the server closes the connection: status, headers, body. A server that keeps
    the connection open fails the test (socket timeout)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=PATIENCE) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    top, _, content = received.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, content


def head(method: str, path: str, length: int, *extra: str) -> str:
    return "\r\n".join(
        [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {length}", *extra]
    )


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Every record the gateway's logger and uvicorn's error logger write during the test."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    watched = [logging.getLogger(logger.name), logging.getLogger("uvicorn.error")]
    for each in watched:
        each.addHandler(keep)
    yield records
    for each in watched:
        each.removeHandler(keep)


def wait_for_request_line(records: list[logging.LogRecord], path: str) -> logging.LogRecord:
    """The gateway's one log line for the request to `path`, once written."""
    give_up = time.monotonic() + PATIENCE
    while time.monotonic() < give_up:
        for record in list(records):
            if record.getMessage() == "request" and getattr(record, "path", None) == path:
                return record
        time.sleep(0.02)
    raise AssertionError(f"no request line for {path}")


# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/images/generations", "/v1/images/edits"]
)
def test_a_latin1_bearer_token_is_a_401_and_reaches_no_provider(
    gateway_url: str, fake_ms: FakeModelScope, path: str
) -> None:
    # Given a key with non-ASCII bytes (Starlette reads headers as latin-1)
    token = b"ms-t\xe9st-t\xf6ken"
    body = json.dumps({"model": "Qwen/Qwen-Image", "prompt": "a cat", "messages": []})
    # When it is sent
    answer = post(gateway_url, path, body.encode(), {"authorization": b"Bearer " + token})
    # Then it is refused as a key, without repeating it, and the provider heard nothing
    error = error_of(answer, 401)
    assert error["code"] == "invalid_api_key"
    assert token.decode("latin-1") not in answer.text
    assert "t\\u00e9st" not in answer.text
    assert fake_ms.submissions == []


def test_a_latin1_bearer_token_on_a_job_lookup_is_a_401(gateway_url: str) -> None:
    answer = httpx.get(
        f"{gateway_url}/v1/jobs/job-0123", headers={"authorization": b"Bearer \xff" * 3}, timeout=30
    )
    assert error_of(answer, 401)["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/images/generations", "/v1/images/edits"]
)
def test_a_malformed_key_is_refused_before_the_body_is_read(gateway_url: str, path: str) -> None:
    # Given a request with a non-ASCII key that declares a body it never sends
    status, _, content = exchange(
        gateway_url,
        head(
            "POST", path, 1000, "authorization: Bearer m\xe9-key", "content-type: application/json"
        ),
    )
    # Then the key is refused at once (not a 408 once the body deadline passes)
    assert status == 401
    assert json.loads(content)["error"]["code"] == "invalid_api_key"


# --------------------------------------------------------------------------- bodies


def chat_raw(model: str, content: str, extra: str = "") -> bytes:
    """A chat body with `content` spliced in as raw JSON (escapes kept as written)."""
    return (
        f'{{"model": "{model}", {extra}"messages": [{{"role": "user", "content": {content}}}]}}'
    ).encode()


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        (
            "/v1/chat/completions",
            chat_raw("Qwen/Qwen-Image", '"a cat \\ud800"'),
            "messages.0.content",
        ),
        ("/v1/images/generations", b'{"model": "Qwen/Qwen-Image", "prompt": "\\ud800"}', "prompt"),
        ("/v1/chat/completions", chat_raw(CHAT_MODEL, '"hello \\udfff"'), "messages.0.content"),
        (
            "/v1/chat/completions",
            chat_raw(CHAT_MODEL, '"hi"', '"metadata": {"tag": "\\ud83d"}, '),
            "metadata.tag",
        ),
    ],
)
def test_lone_surrogates_are_a_400_and_reach_no_provider(
    gateway_url: str, fake_ms: FakeModelScope, path: str, raw: bytes, param: str
) -> None:
    error = error_of(post(gateway_url, path, raw), 400)
    assert (error["code"], error["param"]) == ("invalid_text", param)
    assert fake_ms.submissions == []
    assert fake_ms.chat_requests == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "9" * 30])
def test_numbers_json_cannot_carry_are_a_400_in_a_pass_through(
    gateway_url: str, fake_ms: FakeModelScope, number: str
) -> None:
    raw = chat_raw(CHAT_MODEL, '"hi"', f'"temperature": {number}, ')
    error = error_of(post(gateway_url, "/v1/chat/completions", raw), 400)
    assert (error["code"], error["param"]) == ("invalid_number", "temperature")
    assert fake_ms.chat_requests == []


def test_a_pass_through_body_reaches_the_provider_intact(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # Given a chat-model request with escaped emoji, a NUL and large but finite numbers
    raw = chat_raw(
        CHAT_MODEL,
        '"smile \\ud83d\\ude00 \\u0000"',
        '"seed": 18446744073709551615, "top_p": 1e-300, ',
    )
    answer = post(gateway_url, "/v1/chat/completions", raw)
    # Then it is passed on as sent
    assert answer.status_code == 200, answer.text
    (sent,) = fake_ms.chat_requests
    assert sent["body"] == json.loads(raw)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/generations"])
def test_json_nested_100000_deep_is_a_400(gateway_url: str, path: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    raw = f'{{"model": "Qwen/Qwen-Image", "prompt": "x", "messages": {deep}}}'.encode()
    assert error_of(post(gateway_url, path, raw), 400)["code"] == "too_deep"


def test_a_multipart_text_field_that_is_not_utf8_is_a_400(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    answer = httpx.post(
        f"{gateway_url}/v1/images/edits",
        data={"model": "Qwen/Qwen-Image-Edit"},
        files=[
            ("image", ("in.png", make_png(64, 64), "image/png")),
            ("prompt", (None, b"caf\xe9 au lait")),
        ],
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=PATIENCE,
    )
    assert error_of(answer, 400)["code"] == "invalid_multipart"
    assert fake_ms.submissions == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("prefer", b"respond-async, caf\xe9"),
        ("x-stainless-read-timeout", b"\xb2\xb3"),
        ("host", b"caf\xe9.example"),
        ("x-forwarded-proto", b"gopher"),
    ],
)
def test_headers_the_routes_read_are_checked(gateway_url: str, name: str, value: bytes) -> None:
    # Given an Images API request with one header the gateway reads made unusable
    headers: dict[str, Any] = {**AUTH, name: value}
    raw = b'{"model": "Qwen/Qwen-Image", "prompt": "a cat"}'
    answer = post(gateway_url, "/v1/images/generations", raw, headers)
    # Then it is a 400 naming that header
    error = error_of(answer, 400)
    assert (error["code"], error["param"].lower()) == ("invalid_header", name)


# --------------------------------------------------------------------------- slow clients


def test_a_client_leaving_half_way_through_its_body_is_no_500(
    gateway_url: str, server_log: list[logging.LogRecord]
) -> None:
    # Given a client that declares 4,000 bytes, sends half and hangs up
    path = "/v1/chat/completions"
    address = urlsplit(gateway_url)
    with socket.create_connection((address.hostname, address.port), timeout=PATIENCE) as sock:
        sock.sendall(
            (head("POST", path, 4000, f"authorization: Bearer {TOKEN}") + "\r\n\r\n").encode()
            + b'{"model": "Qwen/Qwen-Image", "messages": ["'
            + b"x" * 1950
        )
    # Then the gateway logs an ordinary 4xx, with no error and no traceback
    line = wait_for_request_line(server_log, path)
    assert 400 <= line.status < 500  # type: ignore[attr-defined]
    assert [r.getMessage() for r in server_log if r.levelno >= logging.ERROR] == []
    assert not [r for r in server_log if r.exc_info]
    assert "client left while sending its body" in [r.getMessage() for r in server_log]


def test_a_body_that_never_arrives_is_a_408_and_the_connection_closes(
    gateway: Callable[..., str],
) -> None:
    # Given a gateway that gives bodies half a second, and a client that stalls mid-body
    url = gateway(body_timeout=0.5)
    status, headers, content = exchange(
        url,
        head("POST", "/v1/chat/completions", 1000, f"authorization: Bearer {TOKEN}"),
        b'{"model": "Qwen/Qwen-Image",',
    )
    # Then it gets a 408 in the OpenAI shape and the server closes the connection
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(content)["error"]["code"] == "body_timeout"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/v1/no/such/route", 404), ("POST", "/v1/models", 405)],
)
def test_a_slow_body_to_a_route_that_reads_none_does_not_hold_the_connection(
    gateway_url: str, method: str, path: str, status: int
) -> None:
    got, headers, content = exchange(gateway_url, head(method, path, 10_000), b"{")
    assert got == status
    assert headers["connection"] == "close"
    assert json.loads(content)["error"]["type"]
