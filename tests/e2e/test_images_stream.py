"""End to end: the Images API streamed (`stream: true`) with the official `openai` SDK over real
HTTP: OpenAI's `image_generation.completed` / `image_edit.completed` events, no made-up
previews, keep-alive comments through a long generation, a failure as an `error` event."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

import fakes.openai_images
from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png, noisy_png, png_size

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"
SIZE = "96x64"


def sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event name, data) of each SSE event in `text`; comments skipped."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "data" in fields and fields["data"] != "[DONE]":
            found.append((fields.get("event", ""), json.loads(fields["data"])))
    return found


def test_streamed_generation_of_two_images_yields_two_completed_events(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    stream = sdk(gateway_url).images.generate(
        model="Qwen/Qwen-Image", prompt="a red square", size=SIZE, n=2, stream=True
    )
    events = list(stream)

    assert [event.type for event in events] == ["image_generation.completed"] * 2
    pictures = [base64.b64decode(event.b64_json) for event in events]  # type: ignore[union-attr]
    assert all(png_size(picture) == (96, 64) for picture in pictures)
    assert pictures[0] != pictures[1]  # two generations, not one image twice
    for event in events:
        assert event.size == SIZE
        assert event.output_format == "png"
        assert event.quality == "auto" and event.background == "auto"
        assert abs(event.created_at - time.time()) < 600
        assert event.usage.total_tokens == 0
    assert len(fake_ms.submissions) == 2


def test_partial_images_are_named_ignored_and_never_made_up(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    body = {"model": "Qwen/Qwen-Image", "prompt": "a cat", "stream": True, "partial_images": 2}
    answer = httpx.post(
        f"{gateway_url}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.headers["x-ignored-parameters"] == "partial_images"
    names = [name for name, _ in sse_events(answer.text)]
    assert names == ["image_generation.completed"]
    assert all(data["type"] == name for name, data in sse_events(answer.text))
    assert answer.text.endswith("data: [DONE]\n\n")  # the SDKs stop there


def test_a_long_generation_never_goes_quiet_for_15_seconds(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    # Given a task the provider takes 25 s to make, and the gateway's default intervals
    fake_ms.task_duration = 25.0
    base = gateway(keepalive_interval=10.0, progress_interval=5.0, generation_timeout=60.0)
    body = {"model": "Qwen/Qwen-Image", "prompt": "a slow cat", "stream": True}
    # When the client reads the stream as it comes
    arrivals: list[float] = []
    text = ""
    with httpx.stream(
        "POST",
        f"{base}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    ) as answer:
        assert answer.status_code == 200
        arrivals.append(time.monotonic())
        for chunk in answer.iter_text():
            arrivals.append(time.monotonic())
            text += chunk
    # Then no gap between two pieces of the stream reaches 15 s (a proxy's idle cut is 60 s
    # or more), and the image still comes at the end
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert arrivals[-1] - arrivals[0] >= 20  # the generation did take long
    assert max(gaps) < 15
    assert ": " in text  # comments carried the wait
    assert [name for name, _ in sse_events(text)] == ["image_generation.completed"]


def test_streamed_edit_yields_an_image_edit_completed_event(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    photo = make_png(40, 30, (0, 120, 255))
    stream = sdk(gateway_url).images.edit(
        model="Qwen/Qwen-Image-Edit-2509",
        image=("photo.png", photo, "image/png"),
        prompt="make it night",
        stream=True,
    )
    (event,) = list(stream)
    assert event.type == "image_edit.completed"
    assert png_size(base64.b64decode(event.b64_json))
    assert [task.inputs for task in fake_ms.tasks.values()] == [[photo]]


def test_a_failure_after_the_stream_began_is_an_error_event(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    fake_ms.fail_reason = "content moderation: the prompt was refused"
    stream = sdk(gateway_url).images.generate(
        model="Qwen/Qwen-Image", prompt="a red square", stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert "content moderation" in raised.value.message
    assert isinstance(raised.value.body, dict) and raised.value.body["message"]


def test_bad_partial_images_is_a_400_before_anything_starts(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(gateway_url).images.generate(
            model="Qwen/Qwen-Image", prompt="a cat", stream=True, partial_images=7
        )
    assert raised.value.body["param"] == "partial_images"  # type: ignore[index]
    assert fake_ms.submissions == []


# ------------------------------------------- an OpenAI-compatible upstream that streams previews


def openai_sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/openai/v1", api_key="sk-openai-test", max_retries=0)


def test_previews_of_an_upstream_that_streams_them_are_passed_through(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    fake_openai.style = "openai"
    stream = openai_sdk(gateway_url).images.generate(
        model="gpt-image-1", prompt="a red square", size="1024x1024", stream=True, partial_images=2
    )
    events = list(stream)

    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [getattr(event, "partial_image_index", None) for event in events[:2]] == [0, 1]
    assert png_size(base64.b64decode(events[-1].b64_json)) == (1024, 1024)
    (request,) = fake_openai.requests
    assert request["fields"]["stream"] is True and request["fields"]["partial_images"] == 2


def test_a_streamed_edit_relays_the_upstreams_previews(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    fake_openai.style = "openai"
    photo = make_png(40, 30, (0, 120, 255))
    answer = httpx.post(
        f"{gateway_url}/openai/v1/images/edits",
        headers={"Authorization": "Bearer sk-openai-test"},
        data={"model": "gpt-image-1", "prompt": "night", "stream": "true", "partial_images": "1"},
        files=[("image", ("photo.png", photo, "image/png"))],
        timeout=30,
    )
    assert answer.status_code == 200
    assert "x-ignored-parameters" not in answer.headers
    names = [name for name, _ in sse_events(answer.text)]
    assert names == ["image_edit.partial_image", "image_edit.completed"]
    (request,) = fake_openai.requests
    assert [data for field, _, _, data in request["files"]] == [photo]


def test_an_upstream_failing_mid_stream_is_an_error_event_after_its_preview(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    fake_openai.style = "openai"
    fake_openai.fail_stream = "the upstream ran out of memory"
    stream = openai_sdk(gateway_url).images.generate(
        model="gpt-image-1", prompt="a red square", stream=True, partial_images=1
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        seen.extend(event.type for event in stream)
    assert seen == ["image_generation.partial_image"]
    assert "ran out of memory" in raised.value.message


def test_a_self_hosted_server_that_does_not_stream_gives_its_image_and_no_preview(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    # seed 003's server ignores `stream` and answers JSON: nothing to pass through
    stream = openai_sdk(gateway_url).images.generate(
        model="Qwen/Qwen-Image", prompt="a red square", size=SIZE, stream=True, partial_images=2
    )
    (event,) = list(stream)
    assert event.type == "image_generation.completed"
    assert png_size(base64.b64decode(event.b64_json)) == (96, 64)


def test_a_stream_and_a_plain_answer_agree_and_neither_says_it_saves(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    # Given a gateway passing the provider's links on
    base = gateway(image_links="provider")
    # When the same picture is asked for as base64, plainly and streamed
    plain = sdk(base).images.generate(
        model="Qwen/Qwen-Image", prompt="a red square", size=SIZE, response_format="b64_json"
    )
    answer = httpx.post(
        f"{base}/v1/images/generations",
        json={"model": "Qwen/Qwen-Image", "prompt": "a red square", "size": SIZE, "stream": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    # Then both carry the picture itself, of the size asked, in the same format
    ((name, data),) = sse_events(answer.text)
    assert name == "image_generation.completed"
    (item,) = plain.data or []
    pictures = [base64.b64decode(str(item.b64_json)), base64.b64decode(data["b64_json"])]
    assert [png_size(picture) for picture in pictures] == [(96, 64)] * 2
    assert data["output_format"] == "png" and data["size"] == SIZE
    # And the stream's progress says what it waited for, never a copy nothing made
    comments = [line for line in answer.text.splitlines() if line.startswith(": ")]
    assert any("generating" in line or "queued" in line for line in comments)
    assert not any("saving" in line for line in comments)
    assert len(fake_ms.submissions) == 2


def test_a_large_image_comes_whole_as_b64_json_answered_or_streamed(
    gateway_url: str, fake_openai: FakeOpenAIImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an OpenAI-compatible server whose picture does not compress: 1.5 MB, its base64
    # sent in more than one piece
    big = noisy_png(800, 640)
    assert len(big) > 1_500_000
    monkeypatch.setattr(fakes.openai_images, "make_png", lambda *size: big)
    client = openai.OpenAI(base_url=f"{gateway_url}/openai/v1", api_key="sk-local", max_retries=0)
    asked: dict[str, Any] = {"model": "Qwen/Qwen-Image", "prompt": "noise"}

    # When it is asked for as b64_json, in one answer and streamed
    answer = client.images.with_raw_response.generate(**asked, response_format="b64_json")
    events = list(client.images.generate(**asked, response_format="b64_json", stream=True))

    # Then both hold the picture byte for byte, the answer as long as it says
    assert int(answer.headers["content-length"]) == len(answer.content)
    (item,) = answer.parse().data or []
    assert base64.b64decode(item.b64_json or "") == big
    assert [event.type for event in events] == ["image_generation.completed"]
    assert base64.b64decode(events[0].b64_json) == big  # type: ignore[union-attr]
    assert events[0].size == "800x640"  # type: ignore[union-attr]
