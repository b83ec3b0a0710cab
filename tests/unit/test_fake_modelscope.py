"""The fake ModelScope API-Inference service follows the wire facts in provider-wire.md.

Everything goes over real HTTP on loopback: a ServerThread runs the fake, httpx talks to it.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fakes.modelscope import AUTH_FAILED, FakeModelScope
from fakes.png import GIF_1x1, JPEG_1x1, WEBP_1x1, make_png, png_size, sniff_image
from fakes.server import ServerThread, SwappableApp

TOKEN = "ms-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUBMIT_HEADERS = {**AUTH, "X-ModelScope-Async-Mode": "true"}
POLL_HEADERS = {**AUTH, "X-ModelScope-Task-Type": "image_generation"}
TASK_NOT_FOUND = {"task_status": "FAILED", "errors": {"code": 500, "message": "task not found"}}
TERMINAL = {"SUCCEED", "FAILED"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def slot() -> Iterator[tuple[SwappableApp, ServerThread]]:
    """One server for the module; each test gets a fresh fake behind it."""
    app = SwappableApp()
    with ServerThread(app) as srv:
        yield app, srv


@pytest.fixture
def fake(slot: tuple[SwappableApp, ServerThread]) -> Iterator[FakeModelScope]:
    fake = FakeModelScope()
    fake.task_duration = 0.05
    fake.pending_seconds = 0.01
    slot[0].app = fake
    yield fake
    slot[0].app = None


@pytest.fixture
def server(slot: tuple[SwappableApp, ServerThread], fake: FakeModelScope) -> ServerThread:
    return slot[1]


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/v1", timeout=5, trust_env=False) as c:
        yield c


def submit(client: httpx.Client, **body: Any) -> str:
    body.setdefault("model", "Qwen/Qwen-Image")
    body.setdefault("prompt", "A golden cat")
    response = client.post("/images/generations", headers=SUBMIT_HEADERS, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"task_id", "request_id"}
    return str(data["task_id"])


def poll(client: httpx.Client, task_id: str) -> Any:
    """One poll's answer."""
    response = client.get(f"/tasks/{task_id}", headers=POLL_HEADERS)
    assert response.status_code == 200, response.text
    return response.json()


def poll_until_done(client: httpx.Client, task_id: str, timeout: float = 3.0) -> list[Any]:
    """Every poll answer until a terminal status; the last one is terminal."""
    answers: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers.append(poll(client, task_id))
        if answers[-1]["task_status"] in TERMINAL:
            return answers
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not finish: {answers[-1:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ----------------------------------------------------------------------------- png helpers


def test_make_png_is_a_valid_png_of_the_requested_size() -> None:
    # Given a generated PNG
    data = make_png(1664, 1664, (1, 2, 3))
    # Then every chunk's CRC is right and the pixels inflate to the announced size
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, kinds, idat = 8, [], b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc
        kinds.append(kind)
        idat += payload if kind == b"IDAT" else b""
        at += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(idat)
    assert len(raw) == 1664 * (1 + 1664 * 3)
    assert raw[:7] == b"\x00\x01\x02\x03\x01\x02\x03"
    assert png_size(data) == (1664, 1664)


def test_png_size_rejects_other_formats_and_samples_carry_their_magic() -> None:
    for other in (JPEG_1x1, GIF_1x1, WEBP_1x1, b"", b"hello"):
        with pytest.raises(ValueError, match="not a PNG"):
            png_size(other)
    assert JPEG_1x1.startswith(b"\xff\xd8\xff")
    assert JPEG_1x1.endswith(b"\xff\xd9")
    assert GIF_1x1.startswith(b"GIF89a")
    assert WEBP_1x1[:4] == b"RIFF"
    assert WEBP_1x1[8:16] == b"WEBPVP8 "
    assert struct.unpack("<I", WEBP_1x1[4:8])[0] == len(WEBP_1x1) - 8
    assert [sniff_image(d) for d in (make_png(1, 1), JPEG_1x1, GIF_1x1, WEBP_1x1, b"x")] == [
        "png",
        "jpeg",
        "gif",
        "webp",
        None,
    ]


# ----------------------------------------------------------------------------- submit


def test_submit_without_async_header_is_refused_with_400(client: httpx.Client) -> None:
    # When a client submits synchronously
    response = client.post(
        "/images/generations", headers=AUTH, json={"model": "Qwen/Qwen-Image", "prompt": "cat"}
    )
    # Then the service refuses, as the real one now does
    assert response.status_code == 400
    body = response.json()
    assert body["errors"]["message"].startswith(
        "image-gen task currently does not support synchronous calls."
    )
    assert body["request_id"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer ms-wrong"}, {"Authorization": TOKEN}]
)
def test_bad_or_missing_token_is_401_everywhere(
    client: httpx.Client, headers: dict[str, str]
) -> None:
    submit_headers = {**headers, "X-ModelScope-Async-Mode": "true"}
    response = client.post(
        "/images/generations",
        headers=submit_headers,
        json={"model": "Qwen/Qwen-Image", "prompt": "x"},
    )
    assert response.status_code == 401
    assert response.json()["errors"] == {"message": AUTH_FAILED}
    assert AUTH_FAILED == (
        "Authentication failed, please make sure that a valid ModelScope token is supplied."
    )
    assert response.json()["request_id"]

    poll = client.get(
        "/tasks/abc", headers={**headers, "X-ModelScope-Task-Type": "image_generation"}
    )
    assert poll.status_code == 401
    assert poll.json()["errors"]["message"] == AUTH_FAILED

    chat = client.post(
        "/chat/completions",
        headers=headers,
        json={
            "model": "Qwen/Qwen3-VL-30B-A3B-Instruct",
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert chat.status_code == 401
    assert chat.json()["error"]["message"] == AUTH_FAILED


def test_unknown_model_is_404_and_prompt_is_required(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    response = client.post(
        "/images/generations", headers=SUBMIT_HEADERS, json={"model": "x/y", "prompt": "cat"}
    )
    assert response.status_code == 404
    assert response.json()["errors"]["message"] == "The model 'x/y' does not exist."

    for body in ({"model": "Qwen/Qwen-Image"}, {"model": "Qwen/Qwen-Image", "prompt": ""}):
        response = client.post("/images/generations", headers=SUBMIT_HEADERS, json=body)
        assert response.status_code == 400
        assert response.json()["errors"]["message"]

    # Unknown extra fields are ignored, documented ones are accepted
    task_id = submit(client, n=4, response_format="b64_json", seed=1, steps=30, loras="a/b")
    assert task_id in fake.tasks
    # Every submission is recorded with its headers, never the token
    assert len(fake.submissions) == 4
    assert [s["status"] for s in fake.submissions] == [404, 400, 400, 200]
    last = fake.submissions[-1]
    assert last["body"]["n"] == 4
    assert last["headers"]["x-modelscope-async-mode"] == "true"
    assert "authorization" not in last["headers"]


# ----------------------------------------------------------------------------- task life


def test_task_goes_pending_running_succeed_with_a_png_of_the_requested_size(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    # Given tasks that stay pending a while, then run, on a clock the test moves
    now = [100.0]
    fake.clock = lambda: now[0]
    fake.pending_seconds = 0.15
    fake.task_duration = 0.4
    # When a task is submitted and polled as its clock passes each boundary
    task_id = submit(client, size="640x480")
    answers = []
    for seconds in (0.0, 0.149, 0.15, 0.399, 0.4):
        now[0] = 100.0 + seconds
        answers.append(poll(client, task_id))
    # Then it walks through the documented statuses on that clock
    assert [a["task_status"] for a in answers] == [
        "PENDING",
        "PENDING",
        "RUNNING",
        "RUNNING",
        "SUCCEED",
    ]
    assert answers[0] == {"task_status": "PENDING"}
    done = answers[-1]
    assert set(done) == {"task_status", "output_images", "request_id"}
    assert len(done["output_images"]) == 1
    task = fake.tasks[task_id]
    assert task.finishes_at - task.created == pytest.approx(0.4)
    assert fake.polls[-1] == (task_id, task.finishes_at, "SUCCEED")
    # And the output link is a real PNG of the requested size
    image = httpx.get(done["output_images"][0], trust_env=False, timeout=30)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert png_size(image.content) == (640, 480)


def test_default_size_and_duration_callable(client: httpx.Client, fake: FakeModelScope) -> None:
    fake.task_duration = lambda body: 0.02 if body["model"] == "Tongyi-MAI/Z-Image-Turbo" else 5.0
    fast = submit(client, model="Tongyi-MAI/Z-Image-Turbo")
    slow = submit(client)
    done = poll_until_done(client, fast)[-1]
    assert done["task_status"] == "SUCCEED"
    assert png_size(httpx.get(done["output_images"][0], trust_env=False, timeout=30).content) == (
        1024,
        1024,
    )
    assert fake.task_status(slow) == "RUNNING"


def test_queue_time_callable_keeps_some_tasks_pending_longer(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    # Given an uneven queue on a simulated clock: "queued" prompts wait 20 s, others 0.5 s,
    # and every task ends 26 s after its submission
    now = [100.0]
    fake.clock = lambda: now[0]
    fake.task_duration = 26.0
    fake.pending_seconds = lambda body: 20.0 if body["prompt"].startswith("queued") else 0.5

    def status(task_id: str) -> str:
        response = client.get(f"/tasks/{task_id}", headers=POLL_HEADERS)
        assert response.status_code == 200, response.text
        return str(response.json()["task_status"])

    waits, runs = submit(client, prompt="queued cat"), submit(client, prompt="quick cat")
    # When they are polled as the clock moves
    seen = []
    for at in (100.2, 101.0, 119.9, 120.1, 126.1):
        now[0] = at
        seen.append((status(waits), status(runs)))
    # Then the queued one stays PENDING for its own queue time, then runs to the same end
    assert seen == [
        ("PENDING", "PENDING"),
        ("PENDING", "RUNNING"),
        ("PENDING", "RUNNING"),
        ("RUNNING", "RUNNING"),
        ("SUCCEED", "SUCCEED"),
    ]


def test_queue_time_is_at_most_the_duration(client: httpx.Client, fake: FakeModelScope) -> None:
    # Given a queue time longer than the task (either form)
    now = [10.0]
    fake.clock = lambda: now[0]
    fake.task_duration = 2.0
    for queued in (5.0, lambda body: 5.0):
        fake.pending_seconds = queued
        task_id = submit(client)
        # Then the task ends at its duration, not after the queue
        now[0] += 2.0
        response = client.get(f"/tasks/{task_id}", headers=POLL_HEADERS)
        assert response.json()["task_status"] == "SUCCEED"


def test_failed_task_carries_the_reason_captured_at_submit(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    fake.fail_reason = "Content moderation failed."
    failing = submit(client)
    fake.fail_reason = None
    succeeding = submit(client)

    done = poll_until_done(client, failing)[-1]
    assert done["task_status"] == "FAILED"
    assert done["errors"] == {"message": "Content moderation failed."}
    assert done["request_id"]
    assert poll_until_done(client, succeeding)[-1]["task_status"] == "SUCCEED"


def test_missing_task_type_header_or_unknown_task_is_task_not_found(client: httpx.Client) -> None:
    task_id = submit(client)
    time.sleep(0.06)
    response = client.get(f"/tasks/{task_id}", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == TASK_NOT_FOUND
    response = client.get("/tasks/0123456789abcdef", headers=POLL_HEADERS)
    assert response.status_code == 200
    assert response.json() == TASK_NOT_FOUND


def test_unknown_in_progress_name_can_be_configured(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    now = [100.0]
    fake.clock = lambda: now[0]
    fake.running_status_name = "PROCESSING"
    fake.pending_seconds = 0.0
    fake.task_duration = 0.2
    task_id = submit(client)
    assert poll(client, task_id) == {"task_status": "PROCESSING"}
    now[0] += 0.2
    assert poll(client, task_id)["task_status"] == "SUCCEED"


def test_poll_errors_answer_503_then_recover(client: httpx.Client, fake: FakeModelScope) -> None:
    task_id = submit(client)
    fake.poll_errors = 2
    first = client.get(f"/tasks/{task_id}", headers=POLL_HEADERS)
    second = client.get(f"/tasks/{task_id}", headers=POLL_HEADERS)
    assert (first.status_code, second.status_code) == (503, 503)
    assert first.json()["errors"]["message"]
    assert poll_until_done(client, task_id)[-1]["task_status"] == "SUCCEED"
    assert fake.poll_errors == 0
    assert [p[2] for p in fake.polls[:2]] == ["HTTP 503", "HTTP 503"]


def test_submit_override_is_consumed_once_and_rate_limit_headers(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    limits = {
        "modelscope-ratelimit-requests-limit": "100",
        "modelscope-ratelimit-requests-remaining": "0",
    }
    fake.submit_override = (429, {"errors": {"message": "Rate limit exceeded"}}, limits)
    body = {"model": "Qwen/Qwen-Image", "prompt": "cat"}
    limited = client.post("/images/generations", headers=SUBMIT_HEADERS, json=body)
    assert limited.status_code == 429
    assert limited.json() == {"errors": {"message": "Rate limit exceeded"}}
    assert limited.headers["modelscope-ratelimit-requests-remaining"] == "0"

    fake.rate_limit_headers = True
    accepted = client.post("/images/generations", headers=SUBMIT_HEADERS, json=body)
    assert accepted.status_code == 200
    assert accepted.headers["modelscope-ratelimit-requests-limit"] == "2000"
    assert accepted.headers["modelscope-ratelimit-requests-remaining"] == "1999"
    assert accepted.headers["modelscope-ratelimit-model-requests-remaining"] == "499"
    assert [s["status"] for s in fake.submissions] == [429, 200]


def test_expired_output_links_answer_403_access_denied(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    url = poll_until_done(client, submit(client))[-1]["output_images"][0]
    assert httpx.get(url, trust_env=False, timeout=30).status_code == 200
    fake.expire_files = True
    expired = httpx.get(url, trust_env=False, timeout=30)
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code>" in expired.text
    assert expired.headers["content-type"].startswith("application/xml")


def test_output_of_unfinished_or_unknown_task_is_not_served(
    client: httpx.Client, fake: FakeModelScope, server: ServerThread
) -> None:
    fake.task_duration = 5.0
    task_id = submit(client)
    assert (
        httpx.get(f"{server.url}/files/{task_id}-0.png", trust_env=False, timeout=30).status_code
        == 404
    )
    assert (
        httpx.get(f"{server.url}/files/nope-0.png", trust_env=False, timeout=30).status_code == 404
    )


# ----------------------------------------------------------------------------- image_url


def _image_host() -> Starlette:
    async def serve(request: Request) -> Response:
        name = request.path_params["name"]
        files = {"in.jpg": (JPEG_1x1, "image/jpeg"), "page.html": (b"<html></html>", "text/html")}
        if name not in files:
            return Response("missing", status_code=404)
        data, media_type = files[name]
        return Response(data, media_type=media_type)

    return Starlette(routes=[Route("/{name}", serve)])


def test_image_urls_are_fetched_at_submit(
    client: httpx.Client, fake: FakeModelScope, server: ServerThread
) -> None:
    # Given an input image on another host and one on the fake's own file host
    own = make_png(8, 8)
    fake.add_file("own.png", own)
    with ServerThread(_image_host()) as host:
        # When edits are submitted with a list and with a plain string
        listed = submit(
            client,
            model="Qwen/Qwen-Image-Edit-2509",
            image_url=[f"{host.url}/in.jpg", f"{server.url}/files/own.png"],
        )
        single = submit(client, model="Qwen/Qwen-Image-Edit", image_url=f"{host.url}/in.jpg")
    # Then the bytes were downloaded at submit time and the tasks succeed
    assert fake.tasks[listed].inputs == [JPEG_1x1, own]
    assert fake.tasks[single].inputs == [JPEG_1x1]
    assert poll_until_done(client, listed)[-1]["task_status"] == "SUCCEED"
    assert poll_until_done(client, single)[-1]["task_status"] == "SUCCEED"


def test_failed_image_download_fails_the_task_later(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    with ServerThread(_image_host()) as host:
        urls = [
            f"{host.url}/missing.png",  # 404
            f"{host.url}/page.html",  # not an image
            f"http://127.0.0.1:{free_port()}/x.png",  # connection refused
        ]
        task_ids = [submit(client, model="Qwen/Qwen-Image-Edit", image_url=[u]) for u in urls]
    for task_id in task_ids:
        done = poll_until_done(client, task_id)[-1]
        assert done["task_status"] == "FAILED"
        assert done["errors"]["message"].startswith("Failed to download image from image_url")
    assert fake.fetched_urls == urls


# ----------------------------------------------------------------------------- chat & misc


def _vision_messages(images: int) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": f"https://example.com/{i}.jpg"}}
        for i in range(images)
    ]
    return [
        {"role": "user", "content": "earlier turn"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": [*parts, {"type": "text", "text": "Describe them."}]},
    ]


def test_chat_non_stream_counts_images_and_unknown_model_uses_error(
    client: httpx.Client, fake: FakeModelScope
) -> None:
    body = {"model": "Qwen/Qwen3-VL-30B-A3B-Instruct", "messages": _vision_messages(2)}
    response = client.post("/chat/completions", headers=AUTH, json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert "I see 2 image(s)." in data["choices"][0]["message"]["content"]
    assert fake.chat_requests[-1]["body"] == body

    missing = client.post("/chat/completions", headers=AUTH, json={**body, "model": "x/y"})
    assert missing.status_code == 404
    assert "errors" not in missing.json()
    assert missing.json()["error"]["message"] == "The model 'x/y' does not exist."


@pytest.mark.anyio
async def test_chat_stream_arrives_in_several_chunks_and_ends_with_done(
    server: ServerThread, fake: FakeModelScope
) -> None:
    fake.chat_lockstep = True
    body = {
        "model": "Qwen/Qwen3-VL-30B-A3B-Instruct",
        "messages": _vision_messages(1),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    lines: list[str] = []
    sent_when_received: list[int] = []
    async with (
        httpx.AsyncClient(base_url=f"{server.url}/v1", trust_env=False, timeout=30) as client,
        client.stream("POST", "/chat/completions", headers=AUTH, json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
            if '"content": "' in line and '""' not in line:
                sent_when_received.append(fake.chat_sent)
                fake.chat_go.release()
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) >= 3
    text = "".join(c["choices"][0]["delta"]["content"] for c in content_chunks)
    assert text.startswith("I see 1 image(s).")
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0
    # Chunks were not buffered: each arrived before the next was sent
    assert sent_when_received == list(range(1, len(content_chunks) + 1))
    assert not fake.chat_stalled


def test_anything_else_is_a_json_404(client: httpx.Client, server: ServerThread) -> None:
    for response in (
        client.post("/images/edits", headers=SUBMIT_HEADERS, json={}),
        httpx.get(f"{server.url}/nothing", trust_env=False, timeout=30),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["errors"]["message"]
