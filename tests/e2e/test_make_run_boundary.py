"""`make run`'s own server (`python -m imagegw.frontends.local`, uvicorn with its defaults,
durable jobs on the embedded stand-ins) against slow, vanishing and hostile clients: stalled
bodies are a 408 and free their connection, a client hanging up is no error, and async jobs
refuse what they could not carry before anything starts."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from e2e.test_hostile_requests import PATIENCE, exchange, head
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from local_run import serve_locally

TOKEN = "ms-test-token"
ASYNC = {
    "prefer": "respond-async",
    "authorization": f"Bearer {TOKEN}",
    "content-type": "application/json",
}
REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def make_run(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[tuple[str, Path]]:
    """`make run`'s server with a one-second body deadline, and its log file."""
    with serve_locally(
        tmp_path_factory.mktemp("make-run"),
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        BODY_TIMEOUT="1",
        IMAGEGW_LOG_FORMAT="json",  # every line, as deployed (the console shows requests only)
    ) as started:
        yield started


def test_stalled_bodies_are_408_and_free_their_connections(
    make_run: tuple[str, Path],
) -> None:
    # Given 20 clients that each declare 1,000 bytes, send 10 and stall
    url, _ = make_run
    address = urlsplit(url)
    stalled = []
    for _ in range(20):
        sock = socket.create_connection((address.hostname, address.port), timeout=PATIENCE)
        request = head("POST", "/v1/images/generations", 1000, f"authorization: Bearer {TOKEN}")
        sock.sendall(request.encode() + b"\r\n\r\n" + b'{"prompt":')
        stalled.append(sock)
    # Then each gets a 408 and the server closes every connection
    for sock in stalled:
        with sock:
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 408 ")
        assert b"\r\nconnection: close\r\n" in received.lower()


def test_a_stalled_body_on_an_unknown_route_does_not_hold_the_connection(
    make_run: tuple[str, Path],
) -> None:
    status, headers, _ = exchange(make_run[0], head("PUT", "/v1/nothing", 5000), b"x")
    assert (status, headers["connection"]) == (404, "close")


def test_a_client_hanging_up_mid_body_is_logged_without_error(
    make_run: tuple[str, Path],
) -> None:
    # Given a client that sends half its declared body and hangs up
    url, log = make_run
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=PATIENCE) as sock:
        request = head("POST", "/v1/chat/completions", 4000, f"authorization: Bearer {TOKEN}")
        sock.sendall(request.encode() + b"\r\n\r\n" + b'{"messages": "' + b"x" * 1980)
    # Then the server logs it as an ordinary event: no error, no traceback
    give_up = time.monotonic() + PATIENCE
    while "client left while sending its body" not in log.read_text(errors="replace"):
        assert time.monotonic() < give_up, log.read_text(errors="replace")[-2000:]
        time.sleep(0.05)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    assert '"level":"ERROR"' not in text


def test_a_non_ascii_idempotency_key_is_a_400_before_any_job(
    make_run: tuple[str, Path], fake_ms: FakeModelScope
) -> None:
    answer = httpx.post(
        f"{make_run[0]}/v1/images/generations",
        content=b'{"model": "Qwen/Qwen-Image", "prompt": "a fox"}',
        headers={**ASYNC, "idempotency-key": b"cl\xe9-\xff-1"},
        timeout=PATIENCE,
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_header", "Idempotency-Key")
    assert fake_ms.submissions == []


def test_a_lone_surrogate_in_an_async_job_is_a_400(
    make_run: tuple[str, Path], fake_ms: FakeModelScope
) -> None:
    answer = httpx.post(
        f"{make_run[0]}/v1/images/generations",
        content=b'{"model": "Qwen/Qwen-Image", "prompt": "a fox \\ud800"}',
        headers=ASYNC,
        timeout=PATIENCE,
    )
    assert answer.status_code == 400, answer.text
    assert json.loads(answer.content)["error"]["param"] == "prompt"
    assert fake_ms.submissions == []
