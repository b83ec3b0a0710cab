"""CORS_SCOPE=api-gateway (the stack): the app answers CORS for requests that came through API
Gateway, and leaves Function URL requests to the Function URL's own CORS (no doubled headers)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from lambdahost.events import to_http_request

EVENTS = Path(__file__).resolve().parents[2] / "events"
ORIGIN = "https://chat.example.com"


async def send(name: str, settings: Settings, method: str | None = None) -> httpx.Response:
    request = to_http_request(json.loads((EVENTS / name).read_text()))
    headers = {**request.headers, "origin": ORIGIN}
    if method == "OPTIONS":  # a browser's preflight of the same request
        headers = {
            **headers,
            "access-control-request-method": request.method,
            "access-control-request-headers": "authorization,content-type",
        }
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        return await client.request(method or request.method, request.target, headers=headers)


@pytest.mark.anyio
async def test_requests_through_api_gateway_get_cors() -> None:
    settings = Settings(cors_allow_origins="*", cors_scope="api-gateway")
    answer = await send("apigw-rest-models.json", settings)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    preflight = await send("apigw-rest-models.json", settings, method="OPTIONS")
    assert preflight.status_code == 200
    assert "GET" in preflight.headers["access-control-allow-methods"]


@pytest.mark.anyio
async def test_function_url_requests_are_left_to_the_function_url() -> None:
    settings = Settings(cors_allow_origins="*", cors_scope="api-gateway")
    answer = await send("function-url-models.json", settings)
    assert answer.status_code == 200
    assert not any(name.startswith("access-control-") for name in answer.headers)


@pytest.mark.anyio
async def test_scope_all_answers_every_request() -> None:
    answer = await send("function-url-models.json", Settings(cors_allow_origins="*"))
    assert answer.headers["access-control-allow-origin"] == "*"
