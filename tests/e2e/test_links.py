"""End to end: IMAGE_LINKS decides what links chat answers carry, and stored links outlive the
provider's own."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

import fakes.modelscope
from fakes.modelscope import FakeModelScope
from fakes.png import noisy_png, png_size

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"


def generate(base: str, **extra: object) -> str:
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)
    answer = sdk.chat.completions.create(
        model="Qwen/Qwen-Image",
        messages=[{"role": "user", "content": "a red square"}],
        extra_body={"size": "96x64", **extra},
    )
    content = answer.choices[0].message.content
    assert content is not None
    match = re.fullmatch(r"!\[[^\]]*\]\((\S+)\)", content)
    assert match, content
    return match.group(1)


def test_stored_link_outlives_the_providers(gateway_url: str, fake_ms: FakeModelScope) -> None:
    # Given a generated image, linked the default way (stored)
    link = generate(gateway_url)
    assert link.startswith(f"{gateway_url}/v1/files/")
    # When the provider's own link has expired
    fake_ms.expire_files = True
    (task,) = fake_ms.tasks.values()
    provider_link = f"{fake_ms.base_url.removesuffix('/v1')}/files/{task.output_names[0]}"  # type: ignore[attr-defined]
    assert httpx.get(provider_link, timeout=30).status_code == 403
    # Then the gateway's link still redirects to the picture, freshly signed each time
    first = httpx.get(link, timeout=30)
    assert first.status_code == 307
    assert "X-Amz-Signature=" in first.headers["location"]
    picture = httpx.get(link, follow_redirects=True, timeout=30)
    assert picture.status_code == 200
    assert png_size(picture.content) == (96, 64)


def test_inline_links_are_png_data_uris(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    link = generate(gateway(image_links="inline"))
    assert link.startswith("data:image/png;base64,")
    assert png_size(base64.b64decode(link.split(",", 1)[1])) == (96, 64)


def test_a_large_inline_picture_comes_whole_answered_or_streamed(
    gateway: Callable[..., str], fake_ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a provider whose picture does not compress: 1.5 MB, its base64 more than a megabyte
    big = noisy_png(800, 640)
    assert len(big) > 1_500_000
    monkeypatch.setattr(fakes.modelscope, "make_png", lambda *args: big)
    sdk = openai.OpenAI(
        base_url=f"{gateway(image_links='inline')}/v1", api_key=TOKEN, max_retries=0
    )
    asked: dict[str, Any] = {
        "model": "Qwen/Qwen-Image",
        "messages": [{"role": "user", "content": "noise"}],
    }

    # When it is asked for in one answer and streamed
    raw = sdk.chat.completions.with_raw_response.create(**asked)
    chunks = list(sdk.chat.completions.create(**asked, stream=True))

    # Then both hold the picture byte for byte, the answer as long as it says and written as
    # JSON writes it
    assert int(raw.headers["content-length"]) == len(raw.content)
    assert (
        raw.content
        == json.dumps(json.loads(raw.content), ensure_ascii=False, separators=(",", ":")).encode()
    )
    answered = raw.parse().choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    for content in (answered, streamed):
        match = re.fullmatch(r"!\[image 1\]\(data:image/png;base64,([\w+/=]+)\)", content or "")
        assert match, (content or "")[:80]
        assert base64.b64decode(match.group(1)) == big
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_provider_links_are_passed_on(gateway: Callable[..., str], fake_ms: FakeModelScope) -> None:
    link = generate(gateway(image_links="provider"))
    (task,) = fake_ms.tasks.values()
    assert link.endswith(f"/files/{task.output_names[0]}")


def test_unknown_or_malformed_file_is_404(gateway_url: str) -> None:
    for name in ("A" * 32 + ".png", "..%2F..%2Fetc.png", "short.png"):
        answer = httpx.get(f"{gateway_url}/v1/files/{name}", timeout=30)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] in ("file_not_found", "unknown_url")


def test_public_base_url_setting_wins(gateway: Callable[..., str], fake_ms: FakeModelScope) -> None:
    link = generate(gateway(public_base_url="https://images.example.org/"))
    assert link.startswith("https://images.example.org/v1/files/")


def streamed(base: str) -> tuple[str, str]:
    """A streamed chat generation's thinking block and its content."""
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model="Qwen/Qwen-Image",
            messages=[{"role": "user", "content": "a red square"}],
            extra_body={"size": "96x64"},
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thinking = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    return thinking, "".join(d.content or "" for d in deltas)


def test_a_stream_says_it_saves_only_what_it_stores(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    # Given the provider's links passed on: nothing is saved, so nothing says so
    thinking, content = streamed(gateway(image_links="provider"))
    assert "generating · " in thinking
    assert "saving" not in thinking
    (task,) = fake_ms.tasks.values()
    assert content.endswith(f"/files/{task.output_names[0]})")
    # And with stored links the copy is waited for in words
    thinking, content = streamed(gateway(image_links="stored"))
    assert "saving the image · " in thinking
    assert "/v1/files/" in content


NO_BUCKET_ASKS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a red square"}]}),
    "chat stream": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "a red square"}], "stream": True},
    ),
    "images": ("/v1/images/generations", {"prompt": "a red square"}),
}


@pytest.mark.parametrize("mode", ["stored", "inline"])
@pytest.mark.parametrize("ask", list(NO_BUCKET_ASKS))
def test_links_that_need_a_bucket_are_refused_without_one_before_the_provider_starts(
    gateway: Callable[..., str], fake_ms: FakeModelScope, mode: str, ask: str
) -> None:
    # Given a hand-made setup without BUCKET, linking results through it
    base = gateway(bucket=None, image_links=mode)
    path, body = NO_BUCKET_ASKS[ask]
    # When a picture is asked for
    answer = httpx.post(
        f"{base}{path}",
        json={"model": "Qwen/Qwen-Image", **body},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    # Then it is refused at once, saying what setting is missing, and nothing was started
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error["code"] == "no_bucket"
    assert error["type"] == "server_error"
    assert "BUCKET" in error["message"]
    assert answer.headers["x-should-retry"] == "false"
    assert fake_ms.tasks == {}


def test_provider_links_need_no_bucket(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    link = generate(gateway(bucket=None, image_links="provider"))
    assert link.startswith(fake_ms.base_url.removesuffix("/v1"))  # type: ignore[attr-defined]


def test_an_image_file_to_edit_is_refused_without_a_bucket_before_the_provider_starts(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    # Given a setup without BUCKET that passes the provider's links on
    base = gateway(bucket=None, image_links="provider")
    # When an image file is sent to edit (it would be uploaded to the bucket for the provider)
    answer = httpx.post(
        f"{base}/v1/images/edits",
        data={"prompt": "make it blue", "model": "Qwen/Qwen-Image-Edit-2509"},
        files=[("image", ("a.png", noisy_png(12, 12), "image/png"))],
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    # Then it is refused, saying what setting is missing, and nothing was started
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"]["code"] == "no_bucket"
    assert "BUCKET" in answer.json()["error"]["message"]
    assert fake_ms.tasks == {}
