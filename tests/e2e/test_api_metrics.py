"""End to end: the API's CloudWatch metrics (EMF lines on stdout, `imagegw.infra.apimetrics`) as the
dashboard and alarms in template.yaml read them, for a generation, an error and `make run`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fakes.modelscope import FakeModelScope
from imagegw.frontends.app import create_app
from imagegw.infra import apimetrics
from imagegw.infra.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]
TOKEN = "ms-test-token"
CHAT = {"model": "Qwen/Qwen-Image", "messages": [{"role": "user", "content": "an apple"}]}


def emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


async def ask(settings: Settings, body: dict[str, Any], key: str = TOKEN) -> httpx.Response:
    """One request to the app in this process: it has finished (metrics written) on return."""
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )


async def test_a_generation_writes_requests_images_and_its_time(
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.setattr(apimetrics, "_cold", True)
    capsys.readouterr()
    answer = await ask(make_settings(), {**CHAT, "stream": True})
    assert answer.status_code == 200 and "![" in answer.text
    (line,) = emf_lines(capsys.readouterr().out)
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == apimetrics.NAMESPACE
    assert directive["Dimensions"] == [["service"]] and line["service"] == "image-gateway"
    assert line["Requests"] == [1.0] and line["Generations"] == [1.0]
    assert line["ImagesGenerated"] == [1.0] and line["ColdStart"] == [1.0]
    assert "Errors" not in line
    (seconds,) = line["GenerationSeconds"]
    assert seconds >= 0
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["GenerationSeconds"] == "Seconds" and units["Requests"] == "Count"


async def test_an_error_is_counted_by_its_code(
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    capsys.readouterr()
    answer = await ask(make_settings(), {**CHAT, "model": "no-such/model"})
    assert answer.status_code == 404
    code = answer.json()["error"]["code"]
    assert code == "model_not_found"
    lines = emf_lines(capsys.readouterr().out)
    (request,) = [line for line in lines if "Requests" in line]
    assert request["Requests"] == [1.0] and "Generations" not in request
    assert "Errors" not in request  # a client's mistake is not a server error
    (failure,) = [line for line in lines if "Failures" in line]
    assert failure["ErrorCode"] == code and failure["Failures"] == [1.0]
    assert failure["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "ErrorCode"]]


async def test_metrics_are_off_when_disabled_as_under_make_run(
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    capsys.readouterr()
    answer = await ask(make_settings(), CHAT, key="")
    assert answer.status_code == 401
    assert emf_lines(capsys.readouterr().out) == []
