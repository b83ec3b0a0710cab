"""The fault matrix, interactive half: chat completions and the Images API over real HTTP
against fake providers that misbehave (`fakes.faulty`), each case checking what the client gets
(status, error, x-should-retry, Retry-After) and what the provider saw (submits and polls).

Faults: a 429 on submit; a 5xx, or garbage, on every poll; a poll hanging past PROVIDER_TIMEOUT;
the provider down; the provider dying mid-poll; the bucket down at upload; the client leaving,
streamed and not, while tasks are polled and while a synchronous provider works; a provider
answering 200 MB (each provider call, and the gateway's memory while it does) or trickling its
answer a byte a second; a result link no URL parser takes (an invalid IDNA host); an unreadable
generated image (the provider's fault, not the client's); an upload declaring a huge size, or cut
short (refused before anything is stored or sent); a client waiting a few seconds; the job service
down; a job with a private image URL; a failed paid request repeated (answered from the first);
a task refused for its content (a 400); a run-time estimates table slow to write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from starlette.types import ASGIApp

from fakes.faulty import GARBAGE, HANG, MB, Faulty, Fresh, closed_port, huge, trickle
from fakes.faulty import answer as fault
from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png
from fakes.server import ServerThread, SwappableApp
from fakes.siliconflow import FakeSiliconFlow
from imagegw.core.estimates import MemoryEstimates
from imagegw.core.schedule import Key
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from imagegw.infra.storage import ImageStore

pytestmark = pytest.mark.functional
TOKEN = "ms-test-token"
SUBMIT = r"/v1/images/generations$"
POLL = r"/v1/tasks/"
LEFT = "client left; generation stopped"
#: seconds of failed polls before the gateway gives up, in these tests
WINDOW = 0.5
#: the failure window of the tests that count the polls retried within it: a first poll that a
#: busy machine stalls past WINDOW would be the only one
RETRY_WINDOW = 2.0

Served = tuple[ServerThread, SwappableApp]


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def chat(model: str = "Qwen/Qwen-Image", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "a red apple"}],
        "stream": stream,
        **extra,
    }


def error_of(answer: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = answer.json()["error"]
    return error


@pytest.fixture
def ms(_fake_ms_server: Served, fake_ms: FakeModelScope) -> Faulty:
    """The fake ModelScope behind a fault wrapper; its tasks run far longer than any test."""
    fake_ms.task_duration = 600.0
    faulty = Faulty(fake_ms)
    _fake_ms_server[1].app = faulty
    return faulty


@pytest.fixture
def sf(_fake_sf_server: Served, fake_sf: FakeSiliconFlow) -> Faulty:
    faulty = Faulty(fake_sf)
    _fake_sf_server[1].app = faulty
    return faulty


@pytest.fixture
def oa(_fake_openai_server: Served, fake_openai: FakeOpenAIImages) -> Faulty:
    faulty = Faulty(fake_openai)
    _fake_openai_server[1].app = faulty
    return faulty


@pytest.fixture
def serve(_gateway_server: Served) -> Callable[[ASGIApp], str]:
    """Serve a gateway app built by the test; its base URL."""
    server, swappable = _gateway_server

    def swap(app: ASGIApp) -> str:
        swappable.app = app
        return server.url

    return swap


@pytest.fixture
def left_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """The gateway's "client left" log records so far."""
    caplog.set_level(logging.INFO)
    return lambda: [r for r in caplog.records if r.getMessage() == LEFT]


# ----------------------------------------------------------------------------- the requests

#: (path, body) of a generation through each front end, answered as JSON
FRONT_ENDS = {
    "chat": ("/v1/chat/completions", chat()),
    "images": ("/v1/images/generations", {"model": "Qwen/Qwen-Image", "prompt": "a red apple"}),
}


def post(base: str, front_end: str, prefix: str = "") -> httpx.Response:
    path, body = FRONT_ENDS[front_end]
    return httpx.post(f"{base}{prefix}{path}", json=body, headers=auth(), timeout=30)


def png_data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(make_png(16, 16, (1, 2, 3))).decode()


# ----------------------------------------------------------------------------- 429 on submit


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_429_on_submit_is_passed_on_with_its_retry_after(
    gateway: Callable[..., str], ms: Faulty, fake_ms: FakeModelScope, front_end: str
) -> None:
    # Given ModelScope refusing the submission for rate, asking to come back in 7 s
    fake_ms.submit_override = (
        429,
        {"errors": {"message": "Rate limit exceeded"}},
        {"Retry-After": "7"},
    )

    answer = post(gateway(), front_end)

    # Then the client is told to retry after 7 s (nothing started) ...
    assert answer.status_code == 429
    assert error_of(answer)["type"] == "rate_limit_error"
    assert "Rate limit exceeded" in error_of(answer)["message"]
    assert answer.headers["x-should-retry"] == "true"
    assert answer.headers["retry-after"] == "7"
    # ... and the provider saw one submission and no poll
    assert ms.count("POST", SUBMIT) == 1
    assert ms.count("GET", POLL) == 0


def test_a_429_from_a_synchronous_provider_is_passed_on(
    gateway: Callable[..., str], sf: Faulty, fake_sf: FakeSiliconFlow
) -> None:
    fake_sf.tokens.add(TOKEN)
    fake_sf.fail_next(429, **{"retry-after": "5"})

    answer = post(gateway(), "chat", "/siliconflow")

    assert answer.status_code == 429
    assert answer.headers["x-should-retry"] == "true"
    assert answer.headers["retry-after"] == "5"
    assert sf.count("POST", SUBMIT) == 1


# ----------------------------------------------------------------------------- polls that fail


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_5xx_on_every_poll_gives_up_after_the_failure_window(
    gateway: Callable[..., str], ms: Faulty, fake_ms: FakeModelScope, front_end: str
) -> None:
    # Given a task whose every poll answers 503
    fake_ms.poll_errors = 10**6

    answer = post(gateway(poll_failure_window=RETRY_WINDOW), front_end)
    answered = time.monotonic()

    # Then a 502 names the provider, the task and the last error, long before the deadline;
    # no retry: the paid task may still finish
    assert answer.status_code == 502
    (task_id,) = fake_ms.tasks
    assert error_of(answer) == {
        "message": f"ModelScope could not be polled for {RETRY_WINDOW:g} s (task {task_id}): "
        "last error: answered 503.",
        "type": "provider_error",
        "param": None,
        "code": "provider_unavailable",
    }
    assert answer.headers["x-should-retry"] == "false"
    # and the provider saw one submission, polls retried within the window, none afterwards
    assert ms.count("POST", SUBMIT) == 1
    assert ms.count("GET", POLL) >= 2
    time.sleep(0.3)
    assert ms.count("GET", POLL, after=answered) == 0


def test_garbage_on_every_poll_gives_up_after_the_failure_window(
    gateway: Callable[..., str], ms: Faulty, fake_ms: FakeModelScope
) -> None:
    ms.on("GET", POLL, GARBAGE)

    answer = post(gateway(poll_failure_window=RETRY_WINDOW), "chat")

    assert answer.status_code == 502
    message = error_of(answer)["message"]
    assert message.startswith(f"ModelScope could not be polled for {RETRY_WINDOW:g} s (task ")
    assert message.endswith("last error: answered an unreadable status.")
    assert answer.headers["x-should-retry"] == "false"
    assert ms.count("POST", SUBMIT) == 1
    assert ms.count("GET", POLL) >= 2


def test_a_poll_hanging_past_the_provider_timeout_is_retried_then_given_up(
    gateway: Callable[..., str], ms: Faulty
) -> None:
    # Given a provider that never answers a poll, and a failure window three provider timeouts
    # long (the retry is tested here, not the window: with WINDOW, 0.5 s, a first poll slowed
    # by 0.25 s on a busy machine would be the only one). PROVIDER_TIMEOUT bounds the
    # submission too: at 0.2 s a busy machine's submission could miss it (a 504, no poll)
    ms.on("GET", POLL, HANG)

    answer = post(gateway(provider_timeout=1.0, poll_failure_window=3.0), "images")

    # Then each poll is abandoned at PROVIDER_TIMEOUT, and after the window the client hears why
    assert answer.status_code == 502
    assert error_of(answer)["message"].endswith("last error: no answer within 1 s.")
    assert answer.headers["x-should-retry"] == "false"
    polls = ms.matching("GET", POLL)
    assert len(polls) >= 2
    ms.wait_for(lambda: all(poll.left for poll in ms.matching("GET", POLL)))


# ----------------------------------------------------------------------------- provider down


@pytest.mark.parametrize("prefix", ["/modelscope", "/siliconflow", "/openai"])
@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_provider_that_is_down_is_a_retryable_502(
    gateway: Callable[..., str], prefix: str, front_end: str
) -> None:
    # Given every provider's base URL on a port nothing listens on
    down = f"http://127.0.0.1:{closed_port()}/v1"
    base = gateway(modelscope_base_url=down, siliconflow_base_url=down, openai_base_url=down)

    answer = post(base, front_end, prefix)

    # Then nothing was sent, so the client may retry
    assert answer.status_code == 502
    assert error_of(answer)["code"] == "provider_unreachable"
    assert "could not be reached (ConnectError)" in error_of(answer)["message"]
    assert answer.headers["x-should-retry"] == "true"


def test_a_provider_dying_mid_poll_gives_up_after_the_failure_window(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    # Given ModelScope on its own server, which dies once it has answered two polls
    fake_ms.task_duration = 600.0
    faulty = Faulty(fake_ms)
    server = ServerThread(faulty).start()
    base = gateway(modelscope_base_url=f"{server.url}/v1", poll_failure_window=WINDOW)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, base, "chat")
            faulty.wait_for(lambda: faulty.count("GET", POLL) >= 2)
            server.stop()
            answer = pending.result(timeout=30)
    finally:
        server.stop()

    # Then the client hears of it after the window, told not to retry (the task may finish)
    assert answer.status_code == 502
    assert error_of(answer)["message"].endswith("last error: no connection (ConnectError).")
    assert answer.headers["x-should-retry"] == "false"
    assert faulty.count("POST", SUBMIT) == 1


# ----------------------------------------------------------------------------- bucket down


def test_the_bucket_down_at_upload_is_a_retryable_503_and_nothing_is_submitted(
    serve: Callable[[ASGIApp], str], make_settings: Callable[..., Settings], ms: Faulty
) -> None:
    # Given a bucket on a port nothing listens on (boto3 without its retries, for speed)
    settings = make_settings(s3_endpoint_url=f"http://127.0.0.1:{closed_port()}")
    s3 = boto3.client(
        "s3",
        region_name=settings.aws_region,
        endpoint_url=settings.s3_endpoint_url,
        config=Config(retries={"max_attempts": 1}),
    )
    base = serve(create_app(settings, store=ImageStore(settings, client=s3)))
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "make it blue"},
            {"type": "image_url", "image_url": {"url": png_data_uri()}},
        ],
    }
    body = {"model": "Qwen/Qwen-Image-Edit", "messages": [message]}

    answers = [
        httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth(), timeout=30),
        httpx.post(
            f"{base}/v1/images/edits",
            data={"model": "Qwen/Qwen-Image-Edit", "prompt": "make it blue"},
            files={"image": ("in.png", make_png(16, 16, (1, 2, 3)), "image/png")},
            headers=auth(),
            timeout=30,
        ),
    ]

    for answer in answers:
        assert answer.status_code == 503
        assert error_of(answer)["code"] == "storage_unavailable"
        assert answer.headers["x-should-retry"] == "true"
    assert ms.calls == []


# ----------------------------------------------------------------------------- client leaves


def raw_request(base: str, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a request on a socket of its own and leave it open (closing it is leaving)."""
    payload = json.dumps(body).encode()
    host, port = base.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    connection.sendall(head.encode() + payload)
    return connection


@pytest.fixture
def leave() -> Iterator[Callable[[socket.socket], float]]:
    """Close a client's connection (abruptly, as a client that gave up); when it left."""
    opened: list[socket.socket] = []

    def close(connection: socket.socket) -> float:
        opened.append(connection)
        connection.close()
        return time.monotonic()

    yield close
    for connection in opened:
        connection.close()


def assert_stopped(
    provider: Faulty, left_at: float, left_log: Callable[[], list[logging.LogRecord]]
) -> logging.LogRecord:
    """The gateway logged that the client left, and polled at most once more after it left
    (a poll already on its way), even after many poll intervals."""
    provider.wait_for(lambda: len(left_log()) == 1)
    time.sleep(0.5)  # ten poll intervals: a gateway still polling would show it
    assert provider.count("GET", POLL, after=left_at) <= 1
    (record,) = left_log()
    return record


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_client_leaving_a_json_answer_stops_the_polling(
    gateway: Callable[..., str],
    ms: Faulty,
    fake_ms: FakeModelScope,
    leave: Callable[[socket.socket], float],
    left_log: Callable[[], list[logging.LogRecord]],
    front_end: str,
) -> None:
    # Given a non-streamed request whose task is being polled
    path, body = FRONT_ENDS[front_end]
    connection = raw_request(gateway(), path, body)
    ms.wait_for(lambda: ms.count("GET", POLL) >= 2)

    # When the client gives up
    left_at = leave(connection)

    # Then the gateway stops polling and says so once, naming the task
    record = assert_stopped(ms, left_at, left_log)
    assert record.task_ids == list(fake_ms.tasks)  # type: ignore[attr-defined]
    assert record.provider == "modelscope"  # type: ignore[attr-defined]
    assert record.model == "Qwen/Qwen-Image"  # type: ignore[attr-defined]
    assert ms.count("POST", SUBMIT) == 1


def test_a_client_leaving_a_stream_stops_the_polling(
    gateway: Callable[..., str],
    ms: Faulty,
    fake_ms: FakeModelScope,
    left_log: Callable[[], list[logging.LogRecord]],
) -> None:
    base = gateway()
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=chat(stream=True), headers=auth(), timeout=30
    ) as answer:
        assert answer.status_code == 200
        lines = answer.iter_lines()  # (kept: dropping it would close the connection now)
        assert next(lines).startswith("data: ")  # the stream has begun
        ms.wait_for(lambda: ms.count("GET", POLL) >= 2)
    left_at = time.monotonic()  # the connection is closed with the unread stream

    record = assert_stopped(ms, left_at, left_log)
    assert record.task_ids == list(fake_ms.tasks)  # type: ignore[attr-defined]


def test_a_client_leaving_while_a_synchronous_provider_works_cancels_its_call(
    gateway: Callable[..., str],
    sf: Faulty,
    fake_sf: FakeSiliconFlow,
    leave: Callable[[socket.socket], float],
    left_log: Callable[[], list[logging.LogRecord]],
) -> None:
    # Given SiliconFlow taking minutes to answer a non-streamed request
    fake_sf.latency = 600.0
    fake_sf.tokens.add(TOKEN)
    connection = raw_request(gateway(), "/siliconflow/v1/chat/completions", chat())
    sf.wait_for(lambda: sf.count("POST", SUBMIT) == 1)

    leave(connection)

    # Then the gateway hangs up on SiliconFlow too (the wrapper saw its caller leave)
    sf.wait_for(lambda: all(call.left for call in sf.matching("POST", SUBMIT)))
    sf.wait_for(lambda: len(left_log()) == 1)
    assert left_log()[0].provider == "siliconflow"  # type: ignore[attr-defined]
    assert sf.count("POST", SUBMIT) == 1


def test_a_client_leaving_while_the_result_is_copied_stops_the_copy(
    gateway: Callable[..., str],
    ms: Faulty,
    fake_ms: FakeModelScope,
    leave: Callable[[socket.socket], float],
    left_log: Callable[[], list[logging.LogRecord]],
) -> None:
    # Given a finished task whose image the provider is slow to hand over
    fake_ms.task_duration = 0.1
    ms.on("GET", r"^/files/", HANG)
    connection = raw_request(gateway(), "/v1/chat/completions", chat())
    ms.wait_for(lambda: ms.count("GET", r"^/files/") == 1)

    leave(connection)

    # Then the gateway stops copying it (nothing is stored for nobody) and says so
    ms.wait_for(lambda: all(call.left for call in ms.matching("GET", r"^/files/")))
    ms.wait_for(lambda: len(left_log()) == 1)
    assert left_log()[0].stage == "delivering"  # type: ignore[attr-defined]
    assert left_log()[0].task_ids == list(fake_ms.tasks)  # type: ignore[attr-defined]


def test_a_client_that_stays_gets_its_images(
    gateway: Callable[..., str], ms: Faulty, fake_ms: FakeModelScope
) -> None:
    # Given the watch on the connection, a client that waits still gets its answer
    fake_ms.task_duration = 0.2

    answer = post(gateway(), "images")

    assert answer.status_code == 200
    assert len(answer.json()["data"]) == 1
    assert ms.count("POST", SUBMIT) == 1


class SlowTable(MemoryEstimates):
    """Run-time estimates in a table that takes a while to write (the access table's
    `estimate#` items, `access/shared_estimates.py`)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[float] = []

    async def record(self, key: Key, seconds: float) -> None:
        await asyncio.sleep(0.3)
        await super().record(key, seconds)
        self.written.append(seconds)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_slow_estimates_table_is_written_before_the_answer_ends(
    serve: Callable[[ASGIApp], str],
    make_settings: Callable[..., Settings],
    ms: Faulty,
    fake_ms: FakeModelScope,
    front_end: str,
) -> None:
    # Given a run-time table slow to write, and a task done at once
    fake_ms.task_duration = 0.0
    app = create_app(make_settings())
    table = app.state.gateway.estimates = SlowTable()

    # When a client gets its image
    answer = post(serve(app), front_end)

    # Then the task's run time was written before the answer ended (on Lambda nothing runs
    # after it)
    assert answer.status_code == 200
    assert len(table.written) == 1


def test_a_client_leaving_a_chat_pass_through_hangs_up_on_the_provider(
    gateway: Callable[..., str],
    ms: Faulty,
    leave: Callable[[socket.socket], float],
) -> None:
    # Given a chat model whose provider takes its time to answer a non-streamed request
    ms.on("POST", r"^/v1/chat/completions$", HANG)
    body = {"model": "Qwen/Qwen3-32B", "messages": [{"role": "user", "content": "hi"}]}
    connection = raw_request(gateway(), "/v1/chat/completions", body)
    ms.wait_for(lambda: ms.count("POST", r"^/v1/chat/completions$") == 1)

    # When the client gives up
    leave(connection)

    # Then the gateway stops waiting and hangs up on the provider too
    ms.wait_for(lambda: all(call.left for call in ms.matching("POST", r"^/v1/chat/completions$")))


def test_a_client_leaving_a_streamed_images_answer_stops_the_polling(
    gateway: Callable[..., str],
    ms: Faulty,
    fake_ms: FakeModelScope,
    left_log: Callable[[], list[logging.LogRecord]],
) -> None:
    base = gateway()
    body = {"model": "Qwen/Qwen-Image", "prompt": "a red apple", "stream": True}
    with httpx.stream(
        "POST", f"{base}/v1/images/generations", json=body, headers=auth(), timeout=30
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.iter_lines()  # (kept: dropping it would close the connection now)
        assert next(lines).startswith(": ")  # the stream has begun (a progress comment)
        ms.wait_for(lambda: ms.count("GET", POLL) >= 2)
    left_at = time.monotonic()  # the connection is closed with the unread stream

    record = assert_stopped(ms, left_at, left_log)
    assert record.task_ids == list(fake_ms.tasks)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- blame and images


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_an_unreadable_generated_image_is_the_providers_fault(
    gateway: Callable[..., str], oa: Faulty, front_end: str
) -> None:
    # Given an OpenAI-compatible server answering a generated image cut short (b64_json)
    cut = base64.b64encode(make_png(64, 64)[:-20]).decode()
    faulty = oa
    faulty.on(
        "POST",
        r"/images/generations$",
        fault(200, json.dumps({"created": 1, "data": [{"b64_json": cut}]})),
    )

    reply = post(gateway(), front_end, "/openai")

    # Then the client hears a provider error (a 5xx), not that its own request was bad
    assert reply.status_code == 502, reply.text
    assert error_of(reply)["type"] != "invalid_request_error"
    assert error_of(reply)["code"] == "invalid_result"
    assert "cut short" in error_of(reply)["message"]
    assert faulty.count("POST", r"/images/generations$") == 1


def stored_count(s3_env: dict[str, str]) -> int:
    """Objects in the stand-in bucket, asked of moto's server over HTTP (not through boto3,
    which a test before may have left patched by moto's in-process mock)."""
    listing = httpx.get(
        f"{s3_env['S3_ENDPOINT_URL']}/{s3_env['BUCKET']}", params={"list-type": "2"}, timeout=10
    )
    if listing.status_code == 404:  # reset by a test before (moto's backends are shared):
        return 0  # nothing can be stored there, and an upload would fail the request
    listing.raise_for_status()
    return len(re.findall(r"<Key>", listing.text))


def huge_png() -> bytes:
    """A whole 2x2 PNG whose header declares 30000x30000 (a decompression bomb's header)."""
    import struct
    import zlib

    png = bytearray(make_png(2, 2))
    png[16:24] = struct.pack(">II", 30000, 30000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (huge_png(), "image_dimensions_too_large"),
        (make_png(64, 64)[:-30], "invalid_image"),  # truncated
    ],
    ids=["huge-dimensions", "truncated"],
)
def test_an_image_refused_for_what_it_is_stores_and_sends_nothing(
    gateway_url: str, ms: Faulty, s3_env: dict[str, str], image: bytes, code: str
) -> None:
    # Given an edit whose image declares 30000x30000 pixels, or is cut short
    stored = stored_count(s3_env)
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "make it blue"},
            {"type": "image_url", "image_url": {"url": uri}},
        ],
    }
    answers = [
        httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={"model": "Qwen/Qwen-Image-Edit", "messages": [message]},
            headers=auth(),
            timeout=30,
        ),
        httpx.post(
            f"{gateway_url}/v1/images/edits",
            data={"model": "Qwen/Qwen-Image-Edit", "prompt": "make it blue"},
            files={"image": ("in.png", image, "image/png")},
            headers=auth(),
            timeout=30,
        ),
    ]

    # Then each is a 400 naming what is wrong, and nothing was stored or sent
    for reply in answers:
        assert reply.status_code == 400, reply.text
        assert error_of(reply)["code"] == code
    assert ms.calls == []
    assert stored_count(s3_env) == stored


@pytest.mark.parametrize("seconds", ["1", "3"])
def test_a_client_waiting_a_few_seconds_is_refused_before_anything_is_stored_or_started(
    gateway_url: str, ms: Faulty, s3_env: dict[str, str], seconds: str
) -> None:
    # Given a client whose SDK gives up after a few seconds, sending an edit with its image
    stored = stored_count(s3_env)
    short = {**auth(), "x-stainless-read-timeout": seconds}
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "make it blue"},
            {"type": "image_url", "image_url": {"url": png_data_uri()}},
        ],
    }
    answers = [
        httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={"model": "Qwen/Qwen-Image-Edit", "messages": [message]},
            headers=short,
            timeout=30,
        ),
        httpx.post(
            f"{gateway_url}/v1/images/edits",
            data={"model": "Qwen/Qwen-Image-Edit", "prompt": "make it blue"},
            files={"image": ("in.png", make_png(16, 16, (1, 2, 3)), "image/png")},
            headers=short,
            timeout=30,
        ),
    ]

    # Then each is a 400 (no SDK retries it) saying why, and nothing was stored or started
    for reply in answers:
        assert reply.status_code == 400, reply.text
        assert error_of(reply)["code"] == "client_timeout_too_short"
    assert ms.calls == []
    assert stored_count(s3_env) == stored


def test_the_job_service_down_is_a_retryable_503_when_nothing_started(
    gateway: Callable[..., str], ms: Faulty, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the job service (Step Functions, and KMS that seals the key) on a closed port
    down = f"http://127.0.0.1:{closed_port()}"
    for service in ("SFN", "KMS"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", down)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    base = gateway(
        job_state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:jobs",
        job_key_id="arn:aws:kms:us-east-1:123456789012:key/0000",
    )

    # When a client asks for a job
    reply = httpx.post(
        f"{base}/v1/images/generations",
        json={"model": "Qwen/Qwen-Image", "prompt": "a red apple"},
        headers={**auth(), "prefer": "respond-async"},
        timeout=60,
    )

    # Then it may retry (nothing started), and the provider saw nothing
    assert reply.status_code == 503, reply.text
    assert error_of(reply)["code"] == "jobs_unavailable"
    assert reply.headers["x-should-retry"] == "true"
    assert ms.calls == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x.png", "http://169.254.169.254/latest/", "http://[::1]/x.png"]
)
def test_a_job_with_a_private_image_url_is_refused_at_submission(
    gateway: Callable[..., str], ms: Faulty, url: str
) -> None:
    # Given the gateway as deployed (no private URLs) running jobs (the runner is never asked)
    base = gateway(
        allow_private_urls=False,
        job_state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:jobs",
    )

    # When a job is asked to edit an image at a private address
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "make it blue"},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }
    reply = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "Qwen/Qwen-Image-Edit", "messages": [message]},
        headers={**auth(), "prefer": "respond-async"},
        timeout=30,
    )

    # Then it is the synchronous path's one refusal, at once, and nothing was started
    assert reply.status_code == 400, reply.text
    assert error_of(reply) == {
        "message": "Input image 1 could not be downloaded from its URL.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "invalid_image",
    }
    assert ms.calls == []


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_failed_paid_request_repeated_is_answered_from_the_first(
    gateway_url: str, ms: Faulty, fake_ms: FakeModelScope, front_end: str
) -> None:
    # Given a provider whose tasks fail (after the paid task started: a 502 not to retry)
    fake_ms.task_duration = 0.05
    fake_ms.fail_reason = "the worker ran out of memory"

    # When a client that retries every 5xx sends the same request three times
    answers = [post(gateway_url, front_end) for _ in range(3)]

    # Then each gets the provider's failure, the repeats from the first: one submission
    assert [a.status_code for a in answers] == [502, 502, 502]
    assert {error_of(a)["message"] for a in answers} == {error_of(answers[0])["message"]}
    assert [a.headers.get("x-gateway-replayed") for a in answers] == [None, "true", "true"]
    assert all(a.headers["x-should-retry"] == "false" for a in answers)
    assert ms.count("POST", SUBMIT) == 1


def test_a_task_refused_for_its_content_is_a_400_no_client_retries(
    gateway_url: str, ms: Faulty, fake_ms: FakeModelScope
) -> None:
    fake_ms.task_duration = 0.05
    fake_ms.fail_reason = "Request Moderated"

    answer = post(gateway_url, "images")

    assert answer.status_code == 400
    assert error_of(answer)["type"] == "invalid_request_error"
    assert error_of(answer)["code"] == "content_policy_violation"
    assert answer.headers["x-should-retry"] == "false"


# ----------------------------------------------------------------------------- answers without end

CHAT = r"^/v1/chat/completions$"
#: the gateway's limit for answers that carry no image, as its errors word it
ANSWER_LIMIT = "4 MiB"
#: MAX_RESULT_BYTES in these tests (answers that may hold images inline are read up to it)
RESULT_LIMIT = 16 * MB


def _memory(field: str) -> int:
    """A figure of this process's /proc status, in bytes (VmRSS: resident now; VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.fixture
def peak_growth() -> Callable[[], int]:
    """How far above its resident memory at the start the process (the gateway, its fakes and
    the test) peaked since: Linux's peak counter is reset first (`clear_refs`)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs Linux's resettable peak-memory counter")
    before = _memory("VmRSS")
    return lambda: _memory("VmHWM") - before


#: (provider prefix, front end, the provider call that answers 200 MB, its title, the limit)
HUGE_ANSWERS = {
    "modelscope-submit": ("", "chat", ("POST", SUBMIT), "ModelScope", ANSWER_LIMIT),
    "modelscope-poll": ("", "images", ("GET", POLL), "ModelScope", ANSWER_LIMIT),
    "siliconflow": ("/siliconflow", "chat", ("POST", SUBMIT), "SiliconFlow", ANSWER_LIMIT),
    "openai-compatible": ("/openai", "images", ("POST", SUBMIT), "compatible server", "16 MiB"),
}


@pytest.mark.parametrize("case", HUGE_ANSWERS)
def test_a_200_mb_answer_is_abandoned_at_its_limit_with_memory_bounded(
    gateway: Callable[..., str],
    ms: Faulty,
    sf: Faulty,
    oa: Faulty,
    fake_sf: FakeSiliconFlow,
    peak_growth: Callable[[], int],
    case: str,
) -> None:
    # Given a provider call answered by 200 MB of JSON-looking bytes, streamed as they are made
    prefix, front_end, (method, path), title, limit = HUGE_ANSWERS[case]
    provider = {"": ms, "/siliconflow": sf, "/openai": oa}[prefix]
    provider.on(method, path, Fresh(huge))
    fake_sf.tokens.add(TOKEN)

    answer = post(gateway(max_result_bytes=RESULT_LIMIT), front_end, prefix)

    # Then the client hears the provider failed, naming the limit; the answer was not held
    assert answer.status_code == 502
    error = error_of(answer)
    assert error["code"] == "provider_answer_too_large"
    assert title in error["message"]
    assert f"more than {limit}, the most the gateway reads of an answer" in error["message"]
    assert answer.headers["x-should-retry"] == "false"
    growth = peak_growth()
    print(f"peak memory growth: {growth / MB:.1f} MB")
    assert growth < 100 * MB


def test_a_200_mb_chat_pass_through_answer_is_abandoned_at_its_limit(
    gateway: Callable[..., str], ms: Faulty, peak_growth: Callable[[], int]
) -> None:
    ms.on("POST", CHAT, Fresh(huge))
    body = {"model": "Qwen/Qwen3-32B", "messages": [{"role": "user", "content": "hi"}]}

    answer = httpx.post(
        f"{gateway(max_result_bytes=RESULT_LIMIT)}/v1/chat/completions",
        json=body,
        headers=auth(),
        timeout=30,
    )

    assert answer.status_code == 502
    assert error_of(answer)["code"] == "provider_answer_too_large"
    assert "ModelScope answered more than 16 MiB" in error_of(answer)["message"]
    growth = peak_growth()
    print(f"peak memory growth: {growth / MB:.1f} MB")
    assert growth < 100 * MB


def test_a_poll_answer_trickled_a_byte_a_second_is_abandoned_at_the_provider_timeout(
    gateway: Callable[..., str], ms: Faulty
) -> None:
    # Given polls answered a byte a second: each read comes well within PROVIDER_TIMEOUT
    ms.on("GET", POLL, Fresh(trickle))

    answer = post(gateway(provider_timeout=2.0, poll_failure_window=WINDOW), "chat")

    # Then each poll as a whole is abandoned at PROVIDER_TIMEOUT, and after the failure window
    # the client hears why (not after the trickle's 600 s)
    assert answer.status_code == 502
    assert error_of(answer)["message"].endswith("last error: no answer within 2 s.")
    assert answer.headers["x-should-retry"] == "false"
    ms.wait_for(lambda: all(call.left for call in ms.matching("GET", POLL)))


def test_a_chat_pass_through_answer_trickled_a_byte_a_second_ends_at_the_deadline(
    gateway: Callable[..., str], ms: Faulty
) -> None:
    # Given a chat model whose JSON answer comes a byte a second
    ms.on("POST", CHAT, Fresh(trickle))
    body = {"model": "Qwen/Qwen3-32B", "messages": [{"role": "user", "content": "hi"}]}

    answer = httpx.post(
        f"{gateway(generation_timeout=2.0)}/v1/chat/completions",
        json=body,
        headers=auth(),
        timeout=30,
    )

    # Then the whole call ends at GENERATION_TIMEOUT with a 504 that says it may have started
    assert answer.status_code == 504
    assert error_of(answer) == {
        "message": "ModelScope did not answer within 2 s; the request may have started.",
        "type": "timeout_error",
        "param": None,
        "code": "deadline_exceeded",
    }
    assert answer.headers["x-should-retry"] == "false"
    ms.wait_for(lambda: all(call.left for call in ms.matching("POST", CHAT)))


# ----------------------------------------------------------------------------- malformed links

#: a host whose IDNA label does not decode (httpx raises only when the host is read)
MALFORMED_LINK = "http://xn--a.com/x.png"


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_malformed_result_link_is_kept_as_the_provider_gave_it(
    gateway: Callable[..., str], ms: Faulty, front_end: str
) -> None:
    # Given a task that succeeds with a link no URL parser takes
    succeeded = {"task_status": "SUCCEED", "output_images": [MALFORMED_LINK]}
    ms.on("GET", POLL, fault(200, json.dumps(succeeded)))

    # When the image is made with stored links (the default: the result is copied)
    answer = post(gateway(), front_end)

    # Then the copy failed as any unfetchable link does: the paid result is the provider's link
    assert answer.status_code == 200, answer.text
    if front_end == "images":
        assert [item["url"] for item in answer.json()["data"]] == [MALFORMED_LINK]
    else:
        assert f"]({MALFORMED_LINK})" in answer.json()["choices"][0]["message"]["content"]
    assert ms.count("POST", SUBMIT) == 1
