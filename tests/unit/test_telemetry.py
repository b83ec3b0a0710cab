"""`imagegw.infra.telemetry.TracedTransport`: provider requests traced safely under concurrency.

A private X-Ray recorder with the SDK's Lambda context (the one the task functions get in
Lambda) and an emitter that keeps what would go to the daemon; the transport wraps an httpx
MockTransport. The end-to-end version, with the real handlers in Lambda's environment, is
tests/e2e/test_traced_job_functions.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aws_xray_sdk import global_sdk_config
from aws_xray_sdk.core.lambda_launcher import LambdaContext
from aws_xray_sdk.core.recorder import AWSXRayRecorder

from fakes.server import ServerThread
from imagegw.infra.clients import add_transport_layer, provider_client, remove_transport_layer
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.telemetry import TracedTransport

TRACE_ROOT = "1-67a1b2c3-0123456789abcdef01234567"


class Emitter:
    """Keeps the entities the recorder sends (as the daemon would get them)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_entity(self, entity: Any) -> None:
        self.sent.append(entity.to_dict())

    def set_daemon_address(self, address: str | None) -> None:
        pass


@pytest.fixture(autouse=True)
def sdk_enabled() -> Iterator[None]:
    """The X-Ray SDK on, as in Lambda (Powertools turns it off process-wide when its tracer is
    disabled, as it is outside Lambda)."""
    was = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    yield
    global_sdk_config.set_sdk_enabled(was)


def recorder(monkeypatch: pytest.MonkeyPatch, sampled: int) -> tuple[Any, Emitter]:
    monkeypatch.setenv(
        "_X_AMZN_TRACE_ID", f"Root={TRACE_ROOT};Parent=53995c3f42cd8ad8;Sampled={sampled}"
    )
    emitter = Emitter()
    xray = AWSXRayRecorder()
    xray.configure(context=LambdaContext(), emitter=emitter, streaming_threshold=0)
    return xray, emitter


async def slow_answer(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(0.05)  # both requests are in flight at once
    return httpx.Response(200, json={"task_id": request.url.path})


async def two_concurrent_requests(transport: httpx.AsyncBaseTransport) -> list[int]:
    async with httpx.AsyncClient(transport=transport) as client:
        answers = await asyncio.gather(
            client.post("http://provider.test/v1/images/generations?sig=secret", json={}),
            client.post("http://provider.test/v1/images/generations?sig=secret", json={}),
        )
    return [answer.status_code for answer in answers]


def test_concurrent_requests_are_sibling_subsegments(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a handler subsegment open, as Powertools' capture_lambda_handler makes it
    xray, emitter = recorder(monkeypatch, sampled=1)
    handler = xray.begin_subsegment("## lambda_handler")
    transport = TracedTransport(httpx.MockTransport(slow_answer), xray)

    # When two requests run at once through the traced transport
    statuses = asyncio.run(two_concurrent_requests(transport))
    xray.end_subsegment()

    # Then both succeed, each in its own subsegment under the handler's
    assert statuses == [200, 200]
    requests = [e for e in emitter.sent if e.get("namespace") == "remote"]
    assert len(requests) == 2
    assert len({r["id"] for r in requests}) == 2
    for request in requests:
        assert request["parent_id"] == handler.id
        assert request["trace_id"] == TRACE_ROOT
        assert request["name"] == "provider.test"
        assert request["http"]["request"] == {
            "method": "POST",
            # no query: presigned URLs carry their signature there
            "url": "http://provider.test/v1/images/generations",
        }
        assert request["http"]["response"]["status"] == 200
        assert not request["in_progress"]


def test_a_failed_request_is_recorded_and_raised_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a provider that cannot be reached
    xray, emitter = recorder(monkeypatch, sampled=1)
    xray.begin_subsegment("## lambda_handler")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = TracedTransport(httpx.MockTransport(refuse), xray)

    # When a request is made, the transport's own error reaches the caller
    async def call() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get("http://provider.test/v1/tasks/1")

    with pytest.raises(httpx.ConnectError, match="connection refused"):
        asyncio.run(call())
    xray.end_subsegment()

    # And its subsegment says so
    (request,) = [e for e in emitter.sent if e.get("namespace") == "remote"]
    assert request["fault"] is True
    assert request["cause"]["exceptions"][0]["type"] == "ConnectError"


def test_unsampled_trace_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an invocation that X-Ray did not sample
    xray, emitter = recorder(monkeypatch, sampled=0)
    transport = TracedTransport(httpx.MockTransport(slow_answer), xray)

    # When requests run, they work and no subsegment is made
    assert asyncio.run(two_concurrent_requests(transport)) == [200, 200]
    assert emitter.sent == []


def test_clients_built_after_the_layer_is_added_are_traced_without_patching_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the tracing layer added as the task functions add it (`telemetry` on import)
    xray, emitter = recorder(monkeypatch, sampled=1)
    xray.begin_subsegment("## lambda_handler")
    original_init = httpx.AsyncClient.__init__

    def layer(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return TracedTransport(inner, xray)

    add_transport_layer(layer)
    try:
        # When the provider client and the result fetcher are built and used
        async def calls() -> None:
            settings = Settings(allow_private_urls=True)
            client = provider_client(settings)
            fetcher = Fetcher(settings)
            try:
                assert (await client.get(f"{server.url}/v1/tasks/1")).status_code == 200
                assert await fetcher.fetch(f"{server.url}/files/x.png", limit=1000) == b"ok"
            finally:
                await client.aclose()
                await fetcher.aclose()

        with ServerThread(_ok) as server:
            asyncio.run(calls())
    finally:
        remove_transport_layer(layer)
    xray.end_subsegment()

    # Then each call is in a subsegment of its own, and httpx's client class is its own
    requests = [e for e in emitter.sent if e.get("namespace") == "remote"]
    assert sorted(r["http"]["request"]["url"].rsplit("/", 2)[-2] for r in requests) == [
        "files",
        "tasks",
    ]
    assert httpx.AsyncClient.__init__ is original_init


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
