"""Every file in events/ replayed through the app the way the Lambda Web Adapter forwards it
(method, raw path, query, headers, decoded body), against the fake ModelScope and S3 stand-in."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.modelscope import FakeModelScope
from fakes.png import png_size
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from lambdahost.events import HttpRequest, to_http_request

pytestmark = pytest.mark.functional
EVENTS = Path(__file__).resolve().parents[2] / "events"
API_EVENTS = sorted(
    p for p in EVENTS.glob("*.json") if p.name.startswith(("function-url", "apigw"))
)


async def replay(request: HttpRequest, settings: Settings) -> httpx.Response:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        return await client.request(
            request.method,
            request.target,
            headers=request.headers,
            content=request.body,
            timeout=30,
        )


def load(name: str) -> HttpRequest:
    return to_http_request(json.loads((EVENTS / name).read_text()))


def test_every_api_event_is_covered() -> None:
    covered = {
        "function-url-models.json",
        "function-url-chat.json",
        "function-url-chat-stream.json",
        "function-url-edit.json",
        "function-url-images-generations.json",
        "apigw-rest-models.json",
        "apigw-rest-chat.json",
        "apigw-rest-page.json",
        "apigw-rest-images-async.json",  # replayed in test_job_events.py (needs a job runner)
    }
    assert {p.name for p in API_EVENTS} <= covered


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["function-url-models.json", "apigw-rest-models.json"])
async def test_models_events(name: str, make_settings: Callable[..., Settings]) -> None:
    answer = await replay(load(name), make_settings())
    assert answer.status_code == 200
    assert "Qwen/Qwen-Image" in [m["id"] for m in answer.json()["data"]]


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["function-url-chat.json", "apigw-rest-chat.json"])
async def test_chat_events(
    name: str, make_settings: Callable[..., Settings], fake_ms: FakeModelScope
) -> None:
    request = load(name)
    answer = await replay(request, make_settings())
    assert answer.status_code == 200, answer.text
    content = answer.json()["choices"][0]["message"]["content"]
    assert re.fullmatch(r"!\[[^\]]*\]\(http\S+\)", content)
    assert fake_ms.submissions[0]["body"]["model"] == request.json()["model"]


@pytest.mark.anyio
async def test_streamed_chat_event(
    make_settings: Callable[..., Settings], fake_ms: FakeModelScope
) -> None:
    answer = await replay(load("function-url-chat-stream.json"), make_settings())
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in answer.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    payloads: list[dict[str, Any]] = [json.loads(f[6:]) for f in frames if f.startswith("data: {")]
    assert payloads[-1]["choices"] == [] and "usage" in payloads[-1]  # include_usage
    assert any("![" in (p["choices"][0]["delta"].get("content") or "") for p in payloads[:-1])


@pytest.mark.anyio
async def test_edit_event_uploads_the_image(
    make_settings: Callable[..., Settings], fake_ms: FakeModelScope
) -> None:
    request = load("function-url-edit.json")
    parts = request.json()["messages"][-1]["content"]
    uri = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    sent = base64.b64decode(uri.split(",", 1)[1])
    answer = await replay(request, make_settings())
    assert answer.status_code == 200, answer.text
    (task,) = fake_ms.tasks.values()
    assert task.inputs == [sent]


@pytest.mark.anyio
async def test_images_generations_event(
    make_settings: Callable[..., Settings], fake_ms: FakeModelScope
) -> None:
    request = load("function-url-images-generations.json")
    answer = await replay(request, make_settings())
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["data"]
    assert set(item) == {"b64_json"}
    assert png_size(base64.b64decode(item["b64_json"])) == (64, 64)
    assert fake_ms.submissions[0]["body"]["prompt"] == request.json()["prompt"]


@pytest.mark.anyio
async def test_the_page_event_under_the_stage_links_its_assets_there(
    make_settings: Callable[..., Settings],
) -> None:
    """A browser opening the REST API's stage URL: the page's relative URLs resolve under
    /Prod/ (its `<base href>`), and the policy allows nothing inline."""
    answer = await replay(load("apigw-rest-page.json"), make_settings(demo_provider="enabled"))
    assert answer.status_code == 200
    assert '<base href="https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/Prod/">' in (
        answer.text
    )
    assert "script-src 'self'" in answer.headers["content-security-policy"]
