"""End to end: every log line of a request carries its request id (the `x-request-id` the client
got), and concurrent requests never carry each other's."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fakes.modelscope import FakeModelScope
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from imagegw.infra.log import logger

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]
TOKEN = "ms-test-token"


def log_lines(out: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"level"')]
    return [line for line in lines if line.get("service") == "image-gateway"]


async def test_each_line_of_a_request_carries_its_own_request_id(
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()  # the logger's own stream (bound when it was made)
    monkeypatch.setattr(logger.registered_handler, "stream", out)
    # Given two generations at once in one gateway process
    transport = httpx.ASGITransport(app=create_app(make_settings()))
    body = {"model": "Qwen/Qwen-Image", "messages": [{"role": "user", "content": "an apple"}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/images/generations",
                    json={"model": "Qwen/Qwen-Image", "prompt": f"apple {i}"},
                    headers={"authorization": f"Bearer {TOKEN}"},
                )
                for i in range(2)
            ),
            client.post("/v1/chat/completions", json=body),  # refused: no key
        )
    ids = {answer.headers["x-request-id"] for answer in answers}
    assert [answer.status_code for answer in answers] == [200, 200, 401]
    lines = log_lines(out.getvalue())
    # Then every line names one of the requests, and each request's final line is its own
    assert lines and all(line.get("request_id") in ids for line in lines)
    finals = [line for line in lines if line["message"] == "request"]
    assert {line["request_id"] for line in finals} == ids
    for answer in answers[:2]:
        mine = [line for line in lines if line["request_id"] == answer.headers["x-request-id"]]
        assert {"images generation", "request"} <= {line["message"] for line in mine}
    # and nothing is left behind for lines outside a request
    out.truncate(0)
    out.seek(0)
    logger.info("outside")
    (outside,) = log_lines(out.getvalue())
    assert "request_id" not in outside and "job_id" not in outside
