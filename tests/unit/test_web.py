"""The public base URL of lasting links, as a client behind each front door sees it."""

from __future__ import annotations

import json

from starlette.requests import Request

from imagegw.frontends.web import public_base_url
from imagegw.infra.config import Settings


def request(headers: dict[str, str]) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/chat/completions",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "query_string": b"",
    }
    return Request(scope)


def test_function_url_uses_host_and_forwarded_proto() -> None:
    host = "abc123.lambda-url.us-east-1.on.aws"
    got = public_base_url(request({"host": host, "x-forwarded-proto": "https"}), Settings())
    assert got == f"https://{host}"


def test_api_gateway_rest_keeps_the_stage() -> None:
    host = "abc.execute-api.us-east-1.amazonaws.com"
    context = json.dumps({"stage": "Prod", "domainName": host})
    headers = {"host": host, "x-forwarded-proto": "https", "x-amzn-request-context": context}
    assert public_base_url(request(headers), Settings()) == f"https://{host}/Prod"


def test_custom_domain_has_no_stage_and_setting_wins() -> None:
    context = json.dumps({"stage": "Prod", "domainName": "abc.execute-api.x.amazonaws.com"})
    headers = {"host": "img.example.org", "x-amzn-request-context": context}
    assert public_base_url(request(headers), Settings()) == "http://img.example.org"
    fixed = Settings(public_base_url="https://gw.example.org/")
    assert public_base_url(request(headers), fixed) == "https://gw.example.org"


def test_client_budget_from_the_sdk_timeout_headers() -> None:
    from imagegw.frontends.web import client_budget

    # Cherry Studio sends x-stainless-timeout: 600; the Python SDK x-stainless-read-timeout
    assert client_budget(request({"x-stainless-timeout": "600"})) == 570.0
    assert client_budget(request({"x-stainless-read-timeout": "4.0"})) == 2.0
    assert client_budget(request({"x-stainless-read-timeout": "junk"})) is None
    assert client_budget(request({})) is None


def test_a_non_streamed_answer_through_the_rest_api_ends_before_its_idle_limit() -> None:
    from imagegw.frontends.web import REST_IDLE_BUDGET, client_budget

    # API Gateway closes a REST API stream after 5 minutes without a byte: a JSON answer
    # (no byte until it is done) gets a clear 504 from the gateway before that
    rest = {"x-amzn-request-context": json.dumps({"stage": "Prod", "resourcePath": "/{proxy+}"})}
    assert REST_IDLE_BUDGET < 300
    assert client_budget(request(rest)) == REST_IDLE_BUDGET
    assert client_budget(request({**rest, "x-stainless-timeout": "600"})) == REST_IDLE_BUDGET
    # a client that gives up sooner keeps its own budget
    assert client_budget(request({**rest, "x-stainless-read-timeout": "60"})) == 57.0
    # the Function URL has no such limit (its context has no resourcePath)
    url = {"x-amzn-request-context": json.dumps({"stage": "$default"})}
    assert client_budget(request(url)) is None
