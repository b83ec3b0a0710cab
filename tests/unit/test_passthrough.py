"""Chat pass-through through the app, against a scripted upstream (httpx.MockTransport): what the
client gets when the provider's stream breaks, errors before the stream, and headers; and the
reading of every error-body shape providers use (`imagegw.providers.upstream`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from imagegw.errors import AuthenticationError, NotFoundError, ProviderError, RateLimitError
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from imagegw.providers.upstream import error_for, message_of

pytestmark = pytest.mark.anyio
VISION = "Qwen/Qwen3-VL-30B-A3B-Instruct"
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'


class Breaking(httpx.AsyncByteStream):
    """Two chunks, then the connection drops."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield CHUNK
        yield b'data: {"choices":[{"index":0,"delta":{"con'
        raise httpx.RemoteProtocolError("peer closed connection")


async def post(
    handler: Callable[[httpx.Request], httpx.Response], body: dict[str, Any]
) -> httpx.Response:
    upstream = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    app = create_app(Settings(bucket="unused"), http_client=upstream)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        answer = await client.post(
            "/modelscope/v1/chat/completions",
            json=body,
            headers={"authorization": "Bearer ms-secret-key"},
        )
    await upstream.aclose()
    return answer


def chat(stream: bool) -> dict[str, Any]:
    return {"model": VISION, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def test_a_stream_that_breaks_ends_with_an_in_stream_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Breaking())

    answer = await post(handler, chat(stream=True))

    assert answer.status_code == 200
    frames = [f for f in answer.text.split("\n\n") if f]
    assert frames[0] == CHUNK.decode().strip()
    error = json.loads(frames[-2].removeprefix("data: "))["error"]
    assert "chat stream broke off" in error["message"]
    assert frames[-1] == "data: [DONE]"


async def test_the_request_goes_as_sent_with_the_clients_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": []})

    body = {**chat(stream=False), "temperature": 0.2, "tools": [{"type": "function"}]}
    answer = await post(handler, body)

    assert answer.json() == {"id": "x", "object": "chat.completion", "choices": []}
    (request,) = seen
    assert str(request.url) == "https://api-inference.modelscope.cn/v1/chat/completions"
    assert json.loads(request.content) == body
    assert request.headers["authorization"] == "Bearer ms-secret-key"


@pytest.mark.parametrize(
    ("status", "body", "expected", "fragment"),
    [
        (401, {"error": {"message": "Invalid token"}}, 401, "Invalid token"),
        (429, {"errors": {"message": "Rate limit exceeded"}}, 429, "Rate limit exceeded"),
        (500, "upstream connect error", 502, "upstream connect error"),
        (404, {"error": {"message": "The model does not exist."}}, 404, "does not exist"),
    ],
)
async def test_errors_before_the_stream_are_the_gateways_shape(
    status: int, body: Any, expected: int, fragment: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"retry-after": "4", "x-ratelimit-remaining-requests": "0"}
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    answer = await post(handler, chat(stream=True))

    assert answer.status_code == expected
    error = answer.json()["error"]
    assert error["message"].startswith("ModelScope: ") and fragment in error["message"]
    assert "ms-secret-key" not in answer.text
    if expected == 429:
        assert answer.headers["retry-after"] == "4"
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"


async def test_an_unreachable_provider_is_a_502() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    answer = await post(handler, chat(stream=True))

    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "provider_unreachable"


# ----------------------------------------------------------------------------- error bodies


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'"Invalid token"', "Invalid token"),
        (b'{"code":20012,"message":"Model does not exist.","data":null}', "Model does not exist."),
        (b'{"error":{"message":"Bad key","type":"x"}}', "Bad key"),
        (b'{"errors":{"message":"task failed"},"request_id":"r"}', "task failed"),
        (b'{"detail":"Not Found"}', "Not Found"),
        (b'{"detail":[{"loc":["body","prompt"],"msg":"Field required"}]}', "Field required"),
        (b"404 page not found", "404 page not found"),
        (b'{"error":"plain"}', "plain"),
        (b"", "Bad Gateway"),
    ],
)
def test_every_error_body_shape_gives_the_providers_message(content: bytes, message: str) -> None:
    response = httpx.Response(502, content=content)
    assert message_of(response).startswith(message)


def test_error_classes_and_the_key_redacted() -> None:
    key = SecretStr("sk-abcdef123456")
    echo = httpx.Response(401, json={"error": {"message": "Bad key sk-abcdef123456"}})
    failure = error_for("Acme", echo, key=key)
    assert isinstance(failure, AuthenticationError)
    assert failure.message == "Acme: Bad key [key]"
    assert isinstance(error_for("Acme", httpx.Response(404, text="x")), NotFoundError)
    assert isinstance(error_for("Acme", httpx.Response(429, text="x")), RateLimitError)
    assert isinstance(error_for("Acme", httpx.Response(503, text="x")), ProviderError)
