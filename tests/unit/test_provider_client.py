"""The provider client (`imagegw.infra.clients.provider_client`) and the polls sent through it:
nothing one answer sets rides along with another request, and each poll carries its own key."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import sys
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread
from imagegw.errors import GatewayError, TransientProviderError
from imagegw.infra import clients
from imagegw.infra.clients import AnswerTimeout, provider_client
from imagegw.infra.config import Settings
from imagegw.infra.media import InlineImages
from imagegw.providers.base import Finished, GenerationRequest, ModelKind, Running
from imagegw.providers.modelscope import ModelScope
from imagegw.providers.upstream import repeated_get, send

pytestmark = pytest.mark.anyio


def _cookie_server() -> Starlette:
    """A server whose answers set a cookie (as load balancers and WAFs in front of APIs do),
    and that echoes the Cookie header it was sent."""

    async def answer(request: Request) -> Response:
        response = JSONResponse({"cookie": request.headers.get("cookie")})
        response.set_cookie("session", "tenant-a-session", path="/")
        return response

    return Starlette(routes=[Route("/{path:path}", answer)])


@pytest.fixture
def cookie_server() -> Iterator[str]:
    with ServerThread(_cookie_server()) as server:
        yield server.url


async def test_a_cookie_a_provider_answer_sets_is_never_sent_with_a_later_request(
    cookie_server: str,
) -> None:
    async with provider_client(Settings()) as client:
        first = await client.get(f"{cookie_server}/v1/images/generations")
        assert "session" in first.headers["set-cookie"]  # the server did set one
        later = await client.get(f"{cookie_server}/v1/tasks/1")

    assert later.json() == {"cookie": None}
    assert not client.cookies


def _job(token: str) -> GenerationRequest:
    return GenerationRequest(
        provider="modelscope",
        model="Qwen/Qwen-Image",
        kind=ModelKind.GENERATE,
        prompt="A golden cat",
        api_key=SecretStr(token),
    )


async def test_polls_of_tasks_started_with_different_keys_each_carry_their_own(
    make_settings: Callable[..., Settings], fake_ms: FakeModelScope
) -> None:
    # Given two tasks, each started with its own key, polled in turn on one shared client
    fake_ms.task_duration = 0.3
    fake_ms.tokens |= {"ms-alice-token", "ms-bob-token"}
    async with provider_client(make_settings()) as client:
        provider = ModelScope(make_settings(), client)
        alice, bob = _job("ms-alice-token"), _job("ms-bob-token")
        a, b = await provider.start(alice), await provider.start(bob)
        assert a.task_id is not None and b.task_id is not None

        # When each is polled several times, interleaved, until both ended
        seen: dict[str, list[object]] = {a.task_id: [], b.task_id: []}
        for _ in range(200):
            for job, task in ((alice, a.task_id), (bob, b.task_id)):
                if not seen[task] or isinstance(seen[task][-1], Running):
                    seen[task].append(await provider.check(job, task))
            if all(isinstance(s[-1], Finished) for s in seen.values()):
                break
            await asyncio.sleep(0.02)  # a poll takes well under 0.3 s / 200: wait for the tasks

    # Then every poll carried the key of its own task, and both tasks gave their images
    assert all(isinstance(s[-1], Finished) for s in seen.values())
    owner = {a.task_id: "ms-alice-token", b.task_id: "ms-bob-token"}
    polled = [task for task, _, _ in fake_ms.polls]
    polls = list(zip(polled, fake_ms.poll_tokens, strict=True))
    assert len(polls) == sum(len(s) for s in seen.values()) > 2
    assert all(token == owner[task] for task, token in polls), polls


def _slow_server(release: threading.Event) -> Starlette:
    """A provider whose every answer waits until `release` is set (at most 10 s)."""

    async def answer(request: Request) -> Response:
        await asyncio.to_thread(release.wait, 10)
        return JSONResponse({"task_id": "t"})

    return Starlette(routes=[Route("/{path:path}", answer, methods=["POST"])])


async def test_a_burst_of_submissions_waits_its_turn_before_entering_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a provider client with 3 turns, and a provider that answers only when released
    monkeypatch.setattr(clients, "MAX_PROVIDER_CONNECTIONS", 3)
    release, entered, three = threading.Event(), [], asyncio.Event()

    async def hook(request: httpx.Request) -> None:  # runs inside the client's send
        entered.append(request.url.path)
        if len(entered) >= 3:
            three.set()

    with ServerThread(_slow_server(release)) as server:
        async with provider_client(Settings(), event_hooks={"request": [hook]}) as client:

            async def submit(i: int) -> int:
                url = f"{server.url}/v1/images/generations/{i}"
                answer = await send(client, "POST", url, title="P", deadline=30, json={})
                return answer.status_code

            # When 10 submissions start at once
            burst = asyncio.gather(*(submit(i) for i in range(10)))
            async with asyncio.timeout(30):
                await three.wait()
            await asyncio.sleep(0.2)
            # Then only 3 entered the client meanwhile; the others wait, and all are answered
            assert len(entered) == 3
            release.set()
            assert await burst == [200] * 10
    assert len(entered) == 10


async def test_a_submission_that_gets_no_turn_in_time_is_a_read_timeout_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clients, "MAX_PROVIDER_CONNECTIONS", 1)
    release = threading.Event()
    with ServerThread(_slow_server(release)) as server:
        async with provider_client(Settings()) as client:
            url = f"{server.url}/v1/images/generations"
            first = asyncio.create_task(send(client, "POST", url, title="P", deadline=30, json={}))
            await asyncio.sleep(0.1)
            with pytest.raises(AnswerTimeout, match=r"no whole answer within 0\.2 s"):
                await send(client, "POST", url, title="P", deadline=0.2, json={})
            release.set()
            assert (await first).status_code == 200


def _status_server(seen: list[tuple[str, str | None, str | None]]) -> Starlette:
    """A ModelScope-shaped status endpoint: `gz` answers its status gzip-encoded, `bad` a 401
    in ModelScope's error shape, `busy` a 503, any other task RUNNING; it notes each poll's
    task, key and task type."""

    async def answer(request: Request) -> Response:
        task = request.path_params["task"]
        headers = request.headers
        seen.append((task, headers.get("authorization"), headers.get("x-modelscope-task-type")))
        if task == "gz":
            body = gzip.compress(b'{"task_status":"SUCCEED","output_images":["https://a/1.png"]}')
            return Response(
                body, media_type="application/json", headers={"Content-Encoding": "gzip"}
            )
        if task == "bad":
            return JSONResponse({"errors": {"message": "Invalid token for this task"}}, 401)
        if task == "busy":
            return JSONResponse({"message": "overloaded"}, 503)
        return JSONResponse({"task_status": "RUNNING"})

    return Starlette(routes=[Route("/v1/tasks/{task}", answer)])


async def test_a_tasks_poll_is_sent_whole_each_time_and_its_answers_read_as_any(
    make_settings: Callable[..., Settings],
) -> None:
    # Given a provider polled through the provider client: each task's status request is made
    # once and sent again by every poll
    seen: list[tuple[str, str | None, str | None]] = []
    with ServerThread(_status_server(seen)) as server:
        settings = make_settings(modelscope_base_url=f"{server.url}/v1")
        async with provider_client(settings) as client:
            provider = ModelScope(settings, client)
            job = _job("ms-carol-token")
            # When a running task is polled three times, then the others once or twice
            running = [await provider.check(job, "run") for _ in range(3)]
            finished = await provider.check(job, "gz")
            with pytest.raises(TransientProviderError) as busy:
                await provider.check(job, "busy")
            errors = []
            for _ in range(2):
                with pytest.raises(GatewayError) as refused:
                    await provider.check(job, "bad")
                errors.append(refused.value)

    # Then every poll carried the whole request: its key and its task type
    assert [task for task, _, _ in seen] == ["run"] * 3 + ["gz", "busy", "bad", "bad"]
    assert {(key, kind) for _, key, kind in seen} == {("Bearer ms-carol-token", "image_generation")}
    # And each answer reads as the provider meant it: running, an encoded result, a 503 to try
    # again, and a refusal with the provider's own message, both times
    assert all(isinstance(status, Running) for status in running)
    assert finished == Finished(("https://a/1.png",))
    assert "503" in busy.value.message
    for error in errors:
        assert error.status == 401
        assert "Invalid token for this task" in error.message


async def test_a_json_request_is_what_the_client_builds_whoever_sends_it() -> None:
    # Given the provider client, and submissions of two keys, again and again, each with its
    # timeout made afresh (as calls that wait for the work make theirs), one with another
    async with provider_client(Settings()) as client:
        url = "https://api.example.com/v1/images/generations"

        def submission(key: str, prompt: str, wait: float = 9.0) -> dict[str, object]:
            headers = {"Authorization": f"Bearer {key}", "X-Async": "true"}
            body = {"prompt": prompt, "n": 1}
            return {"json": body, "headers": headers, "timeout": httpx.Timeout(wait)}

        calls = [("ms-alice", "a cat"), ("ms-bob", "一只猫"), ("ms-alice", "a dog")] * 2
        calls.append(("ms-alice", "a slow cat", 30.0))  # type: ignore[arg-type]
        # When each is built through the client's templates, and by httpx itself
        made = [clients.json_request(client, "POST", url, **submission(*c)) for c in calls]
        built = [request for request, _ in made]
        plain = [client.build_request("POST", url, **submission(*c)) for c in calls]  # type: ignore[arg-type]

    # Then each is the very request httpx builds: its key, its body, its framing, its timeout
    for ours, theirs in zip(built, plain, strict=True):
        assert (ours.method, ours.url, ours.content) == (theirs.method, theirs.url, theirs.content)
        assert sorted(ours.headers.multi_items()) == sorted(theirs.headers.multi_items())
        assert ours.extensions == theirs.extensions
    assert [r.headers["authorization"] for r in built] == [f"Bearer {c[0]}" for c in calls]
    assert built[-1].extensions["timeout"]["read"] == 30.0
    # And each goes on the wire as it would made afresh: its head, its Content-Length, its body
    assert client.direct is not None
    for (ours, template), theirs in zip(made, plain, strict=True):
        assert template is not None
        framed = template.framed(client.direct, ours)
        kept = client.direct.keep(ours)  # the pool's form of it, made afresh
        assert framed is not None
        assert framed.wire == kept.wire
        assert (framed.origin, framed.url, framed.extensions) == (
            kept.origin,
            kept.url,
            ours.extensions,
        )
        assert b"".join(framed.stream) == theirs.content  # type: ignore[arg-type]
    # And one template serves each key and timeout, however often it is sent
    assert client.templates is not None and len(client.templates) == 3


async def test_a_status_request_is_what_the_client_builds_and_goes_out_as_its_own() -> None:
    # Given the provider client, and the status requests of many tasks on two hosts, polled
    # with two keys; the task ids as providers may give them (spaces, a query, non-ASCII)
    async with provider_client(Settings()) as client:
        hosts = ("https://api.example.com/v1", "http://127.0.0.1:8123/v1")
        tasks = ("t-1", "t 2", "t3?x=1", "té", "%41", "t5#frag")
        calls = [
            (f"{host}/tasks/{task}", {"Authorization": f"Bearer {key}", "X-Type": "image"})
            for host in hosts
            for task in tasks
            for key in ("ms-alice", "ms-bob")
        ]
        timeout = httpx.Timeout(9.0, connect=10.0)
        # When each is made from the client's templates (`repeated_get`), and by httpx itself
        made = [repeated_get(client, url, headers=h, timeout=timeout) for url, h in calls]
        plain = [client.build_request("GET", url, headers=h, timeout=timeout) for url, h in calls]
        assert client.direct is not None
        kept = [client.direct.keep(request) for request in plain]

    # Then each is the very request httpx builds: its URL, its key, its Host, its timeout
    for ours, theirs in zip(made, plain, strict=True):
        request = ours.request
        assert (request.method, request.url, request.content) == ("GET", theirs.url, b"")
        assert request.headers.multi_items() == theirs.headers.multi_items()
        assert request.extensions == theirs.extensions
    # And each goes on the wire as its own request would: its target, its headers, its origin
    for ours, theirs in zip(made, kept, strict=True):
        assert ours.kept is not None
        assert ours.kept.wire == theirs.wire
        assert (ours.kept.origin, ours.kept.url) == (theirs.origin, theirs.url)
        assert ours.kept.extensions == theirs.extensions
    # And one template serves each host and key, however many tasks it polls
    assert client.bare is not None and len(client.bare) == 4


def _bodies() -> list[dict[str, object]]:
    """Submissions with and without long data URIs, with text JSON escapes beside them: those
    that hold images' data URIs say so (`InlineImages`), as the providers' do."""
    png = "data:image/png;base64," + "iVBORw0KGgo" * 60_000 + "AA=="
    jpeg = "data:image/jpeg;base64," + "/9j/4AAQ+" * 9_000
    tricky = 'a "quoted" \\ back\nslash\t\x01 猫 \u2028 ✓'
    return [
        {"prompt": tricky, "n": 1, "size": "1024x1024"},
        InlineImages({"model": "Qwen/Qwen-Image-Edit", "prompt": tricky, "image": png}),
        InlineImages({"prompt": tricky, "image_urls": [png, "https://x/y.png", jpeg], "seed": 7}),
        InlineImages({"input": {"image": jpeg, "mask": png, "strength": 0.5, "flag": None}}),
        # long strs that are not such URIs: one JSON escapes within, a long prompt
        InlineImages({"image": png[:-4] + '"\\x', "prompt": "x" * 200_000}),
        InlineImages({"image": png, "prompt": tricky + png}),  # the URI inside another str too
        {"image": png, "prompt": tricky},  # a body that does not say it holds images
    ]


async def test_a_body_with_a_data_uri_goes_out_as_json_would_encode_it_whole() -> None:
    # Given the provider client and submissions carrying long data URIs among text to escape
    async with provider_client(Settings()) as client:
        url = "https://api.example.com/v1/images/generations"
        assert client.direct is not None
        bodies = _bodies()  # the 2nd to 4th say they hold images, and only those as long strs
        for index, body in enumerate(bodies):
            expected = json.dumps(
                body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            # When each is built through the client's template and framed for the wire
            ours, template = clients.json_request(client, "POST", url, json=body)
            assert template is not None
            framed = template.framed(client.direct, ours)
            assert framed is not None
            # Then its bytes, twice over (a retried connection sends them again), and its
            # Content-Length are exactly those of the body's JSON made whole
            assert framed.wire[2] == len(expected)
            assert ours.headers["Content-Length"] == str(len(expected))
            assert b"".join(framed.stream) == expected  # type: ignore[arg-type]
            assert b"".join(framed.stream) == expected  # type: ignore[arg-type]
            # And a body whose long strs are all data URIs is never held as one bytes
            if index in (1, 2, 3):
                longest = max(len(part) for part in framed.stream)  # type: ignore[union-attr]
                assert longest <= clients.URI_PART < len(expected)


async def test_a_data_uri_sent_is_freed_without_the_collector() -> None:
    # Given the provider client, and a body holding a client's data URI (no one else's copy)
    async with provider_client(Settings()) as client:
        assert client.direct is not None
        uri = "data:image/png;base64," + "QUJD" * 100_000
        held = sys.getrefcount(uri)
        gc.disable()  # the API process collects rarely, and freezes what is alive then
        try:
            # When a request is built of it, framed and its bytes read, then dropped
            body = InlineImages({"image": uri})
            request, template = clients.json_request(client, "POST", "https://x/v1", json=body)
            assert template is not None
            framed = template.framed(client.direct, request)
            assert framed is not None and b"".join(framed.stream) == (  # type: ignore[arg-type]
                b'{"image":"%b"}' % uri.encode()
            )
            del body, request, framed
            # Then nothing holds the URI any more: it is freed at once, not at a collection
            assert sys.getrefcount(uri) == held
        finally:
            gc.enable()


def _echo_server(seen: list[bytes]) -> Starlette:
    async def echo(request: Request) -> Response:
        seen.append(await request.body())
        return JSONResponse({"images": [{"url": "https://x/1.png"}]})

    return Starlette(routes=[Route("/v1/images/generations", echo, methods=["POST"])])


@pytest.mark.parametrize("traced", [False, True], ids=["pool", "through-a-transport-layer"])
async def test_a_provider_receives_a_data_uri_body_exactly(traced: bool) -> None:
    # Given a provider on loopback, and the provider client sending to it straight to its pool,
    # or through a transport layer (as the traced task functions' client does)
    seen: list[bytes] = []
    layer: clients.TransportLayer = lambda inner: _Through(inner)  # noqa: E731
    if traced:
        clients.add_transport_layer(layer)
    try:
        with ServerThread(_echo_server(seen)) as server:
            async with provider_client(Settings()) as client:
                assert (client.direct is None) is traced
                # When each submission is sent, twice (a template made, then reused)
                for body in _bodies() * 2:
                    answer = await send(
                        client,
                        "POST",
                        f"{server.url}/v1/images/generations",
                        title="Fake",
                        deadline=10.0,
                        json=body,
                        headers={"Authorization": "Bearer sf-test"},
                    )
                    assert answer.status_code == 200
    finally:
        clients.remove_transport_layer(layer)
    # Then the provider received each body exactly as its JSON made whole
    assert seen == [
        json.dumps(b, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        for b in _bodies() * 2
    ]


class _Through(httpx.AsyncBaseTransport):
    """A transport layer that passes each request on (as an observing one does)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
