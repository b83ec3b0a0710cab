"""The events/ samples and the helper that turns them into the Web Adapter's HTTP requests."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from lambdahost.events import REQUEST_CONTEXT_HEADER, HttpRequest, to_http_request

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
# the HTTP events (job-*.json are the job state machine's task events, replayed through their
# handlers in tests/functional/test_job_events.py)
EVENT_FILES = sorted(p for p in EVENTS_DIR.glob("*.json") if not p.name.startswith("job-"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (method, path, kind of body) expected for every sample event.
EXPECTED: dict[str, tuple[str, str, str | None]] = {
    "function-url-chat.json": ("POST", "/v1/chat/completions", "chat"),
    "function-url-chat-stream.json": ("POST", "/v1/chat/completions", "chat-stream"),
    "function-url-edit.json": ("POST", "/v1/chat/completions", "edit"),
    "function-url-models.json": ("GET", "/v1/models", None),
    "function-url-images-generations.json": ("POST", "/v1/images/generations", "images"),
    "apigw-rest-chat.json": ("POST", "/modelscope/v1/chat/completions", "chat"),
    "apigw-rest-models.json": ("GET", "/modelscope/v1/models", None),
    "apigw-rest-page.json": ("GET", "/", "page"),
    "apigw-rest-images-async.json": ("POST", "/modelscope/v1/images/generations", "async"),
}


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return event


def test_every_event_file_is_known() -> None:
    # Given the events/ folder / Then each file has an expectation here, and vice versa
    assert {p.name for p in EVENT_FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.name)
def test_event_becomes_the_forwarded_request(path: Path) -> None:
    # Given a sample event
    method, expected_path, kind = EXPECTED[path.name]

    # When the Web Adapter would forward it
    request = to_http_request(json.loads(path.read_text()))

    # Then method, path and credentials are those of the client's request
    assert request.method == method
    assert request.path == expected_path
    assert request.target == expected_path
    assert all(name == name.lower() for name in request.headers)
    assert json.loads(request.headers[REQUEST_CONTEXT_HEADER])["requestId"]
    if kind == "page":  # a browser opening the page: no key, nothing sent
        assert "authorization" not in request.headers
        assert request.body == b""
        return
    assert request.headers["authorization"] == "Bearer ms-test-token"

    # And the body is the client's JSON (or nothing for GET)
    if kind is None:
        assert request.body == b""
        return
    assert request.headers["content-type"] == "application/json"
    assert int(request.headers["content-length"]) == len(request.body)
    body = request.json()
    assert isinstance(body, dict)
    if kind == "async":  # a durable job (docs/jobs.md "Async jobs")
        assert request.headers["prefer"] == "respond-async"
        assert request.headers["idempotency-key"] == "cat-batch-7"
        assert body["prompt"] == "A golden cat"
        return
    if kind == "images":
        assert body == {
            "model": "Qwen/Qwen-Image",
            "prompt": "A golden cat",
            "n": 1,
            "size": "64x64",
            "response_format": "b64_json",
        }
        return
    assert body["messages"][-1]["role"] == "user"
    if kind == "chat":
        assert body == {
            "model": "Qwen/Qwen-Image",
            "messages": [{"role": "user", "content": "A golden cat"}],
            "stream": False,
        }
    elif kind == "chat-stream":
        assert body["model"] == "Qwen/Qwen-Image"
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert body["model"] == "Qwen/Qwen-Image-Edit"
        parts = {part["type"]: part for part in body["messages"][-1]["content"]}
        assert parts["text"]["text"]
        header, _, data = parts["image_url"]["image_url"]["url"].partition(",")
        assert header == "data:image/png;base64"
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG_SIGNATURE)
        assert png[12:16] == b"IHDR"
        assert png[16:24] == (8).to_bytes(4, "big") * 2  # 8 x 8 pixels


@pytest.mark.parametrize(
    "name",
    ["function-url-chat.json", "function-url-edit.json", "function-url-images-generations.json"],
)
def test_function_url_events_are_complete_payload_2(name: str) -> None:
    # Given a Function URL event / Then it has the fields of payload format 2.0
    event = load(name)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["isBase64Encoded"] is True
    http = event["requestContext"]["http"]
    assert http["method"] == "POST"
    assert http["path"] == event["rawPath"]
    assert http["sourceIp"]
    assert event["requestContext"]["domainName"] == event["headers"]["host"]


def test_rest_event_path_carries_no_stage() -> None:
    # Given a REST event whose request context path includes the stage
    event = load("apigw-rest-chat.json")
    assert event["requestContext"]["stage"] == "Prod"
    assert event["requestContext"]["path"] == "/Prod/modelscope/v1/chat/completions"

    # When it is forwarded / Then the app sees the path without the stage
    assert to_http_request(event).path == "/modelscope/v1/chat/completions"


def test_function_url_cookies_become_one_cookie_header() -> None:
    # Given a Function URL event with cookies and a query string
    event = load("function-url-models.json")
    event["cookies"] = ["session=abc", "theme=dark"]
    event["rawQueryString"] = "limit=10&after=x%2Fy"

    # When it is forwarded
    request = to_http_request(event)

    # Then the cookies are one header and the raw query string is kept as is
    assert request.headers["cookie"] == "session=abc;theme=dark"
    assert request.query_string == "limit=10&after=x%2Fy"
    assert request.target == "/v1/models?limit=10&after=x%2Fy"


def test_rest_prefers_multi_value_headers_and_query() -> None:
    # Given a REST event with repeated headers and query parameters
    event = load("apigw-rest-models.json")
    event["headers"]["Accept"] = "text/event-stream"
    event["multiValueHeaders"]["Accept"] = ["application/json", "text/event-stream"]
    event["queryStringParameters"] = {"tag": "b", "n": "1"}
    event["multiValueQueryStringParameters"] = {"tag": ["a", "b"], "n": ["1"]}

    # When it is forwarded
    request = to_http_request(event)

    # Then the multi-value forms win, header values joined with ", "
    assert request.headers["accept"] == "application/json, text/event-stream"
    assert request.query_string == "tag=a&tag=b&n=1"


def test_rest_single_value_fallbacks() -> None:
    # Given a REST event without the multi-value maps
    event = load("apigw-rest-chat.json")
    event["multiValueHeaders"] = None
    event["multiValueQueryStringParameters"] = None
    event["queryStringParameters"] = {"q": "a cat & a dog"}

    # When it is forwarded
    request = to_http_request(event)

    # Then the single-value maps are used and the plain body is taken as UTF-8
    assert request.headers["authorization"] == "Bearer ms-test-token"
    assert request.query_string == "q=a+cat+%26+a+dog"
    assert request.json()["model"] == "Qwen/Qwen-Image"


def test_missing_body_is_empty() -> None:
    # Given an event without a body / Then the request body is empty
    event = load("function-url-chat.json")
    del event["body"]
    event["isBase64Encoded"] = False
    assert to_http_request(event).body == b""


def test_non_http_event_is_rejected() -> None:
    # Given an SQS-like event / Then it is no HTTP request
    with pytest.raises(ValueError, match="not a Lambda HTTP event"):
        to_http_request({"Records": []})


def test_request_defaults() -> None:
    # Given a bare request / Then it has no query, headers or body
    request = HttpRequest(method="GET", path="/healthz")
    assert (request.target, request.headers, request.body) == ("/healthz", {}, b"")
