"""End to end: the official `openai` SDK drives the gateway over real HTTP, against the fake
ModelScope and the S3 stand-in, all on loopback. Includes every ModelScope example of seed 000."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from fakes.modelscope import FakeModelScope
from fakes.png import make_png, png_size

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"
APPLE = (
    "写实静物摄影风格：一只新鲜的苹果静静地躺在干净柔软的表面上。苹果略微偏离中心，柔和的背光突显其"
    "自然的光泽和微妙的色彩渐变——深红色与浅金色交相辉映。"
)
IMAGE_LINE = re.compile(r"^!\[[^\]]*\]\((\S+)\)$")


def client(base: str, *, key: str = TOKEN, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=retries, timeout=30)


def image_urls(content: str | None) -> list[str]:
    assert content is not None
    urls = []
    for line in content.splitlines():
        match = IMAGE_LINE.match(line)
        if match:
            urls.append(match.group(1))
    return urls


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_seed_text_to_image_with_options(gateway_url: str, fake_ms: FakeModelScope) -> None:
    # Given seed 000's first example: Qwen/Qwen-Image with steps and a negative prompt
    answer = client(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image",
        messages=[{"role": "user", "content": APPLE}],
        extra_body={"steps": 30, "negative_prompt": "低质量, 模糊", "size": "928x1664"},
    )
    # Then a chat.completion carries one markdown image that really is the generated picture
    assert answer.object == "chat.completion"
    assert answer.choices[0].finish_reason == "stop"
    urls = image_urls(answer.choices[0].message.content)
    assert len(urls) == 1
    picture = httpx.get(urls[0], follow_redirects=True, timeout=30)
    assert picture.status_code == 200
    assert png_size(picture.content) == (928, 1664)
    # And ModelScope got the async header and the options under its own names
    (submission,) = fake_ms.submissions
    assert submission["headers"]["x-modelscope-async-mode"] == "true"
    assert submission["body"] == {
        "model": "Qwen/Qwen-Image",
        "prompt": APPLE,
        "steps": 30,
        "negative_prompt": "低质量, 模糊",
        "size": "928x1664",
    }


def test_seed_edit_streamed_with_uploaded_image(gateway_url: str, fake_ms: FakeModelScope) -> None:
    # Given seed 000's edit example: a data-URI photo, streamed
    photo = make_png(48, 32, (10, 200, 30))
    stream = client(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image-Edit",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "修复并给老照片上色"},
                    {"type": "image_url", "image_url": {"url": data_uri(photo)}},
                ],
            }
        ],
        stream=True,
    )
    chunks = list(stream)
    # Then progress arrives as reasoning_content, then the image, then finish_reason stop
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert "ModelScope" in reasoning
    assert "saving the image" in reasoning and "SUCCEED" not in reasoning
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(image_urls(content)) == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    # And ModelScope fetched the exact photo from a presigned URL of the private bucket
    (submission,) = fake_ms.submissions
    (url,) = submission["body"]["image_url"]
    assert "/uploads/" in url and "X-Amz-Signature=" in url
    (task,) = fake_ms.tasks.values()
    assert task.inputs == [photo]


def test_iterative_editing_reuses_the_returned_image(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # Given a first edit, then "now make it night" without re-attaching the image
    sdk = client(gateway_url)
    first = sdk.chat.completions.create(
        model="Qwen/Qwen-Image-Edit-2511",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "add a hat"},
                    {"type": "image_url", "image_url": {"url": data_uri(make_png(16, 16))}},
                ],
            }
        ],
    )
    previous = first.choices[0].message.content
    (returned,) = image_urls(previous)
    sdk.chat.completions.create(
        model="Qwen/Qwen-Image-Edit-2511",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "add a hat"}]},
            {"role": "assistant", "content": previous},
            {"role": "user", "content": "now make it night"},
        ],
    )
    # Then the second task edits the image the gateway returned the first time: its stored copy,
    # handed over as a presigned URL of the object (no redirect for the provider to follow)
    (sent,) = fake_ms.submissions[1]["body"]["image_url"]
    assert f"/images/{returned.rsplit('/', 1)[1]}?" in sent
    assert fake_ms.submissions[1]["body"]["prompt"] == "now make it night"
    second = fake_ms.tasks[fake_ms.submissions[1]["task_id"]]
    assert second.inputs == [httpx.get(returned, follow_redirects=True, timeout=30).content]


def test_stream_with_usage_and_several_images(gateway_url: str, fake_ms: FakeModelScope) -> None:
    # Given Cherry Studio's stream options and n=2
    stream = client(gateway_url).chat.completions.create(
        model="Tongyi-MAI/Z-Image-Turbo",
        messages=[{"role": "user", "content": "A golden cat"}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.7,
        top_p=0.9,
        extra_body={"n": 2},
    )
    chunks = list(stream)
    # Then two tasks ran, two images came back, and the last chunk carries usage only
    assert len(fake_ms.submissions) == 2
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(image_urls(content)) == 2
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert "temperature" not in fake_ms.submissions[0]["body"]


def test_provider_route_and_aliases(gateway_url: str, fake_ms: FakeModelScope) -> None:
    # Given the explicit /modelscope/v1 route and the alias names of the options
    sdk = openai.OpenAI(base_url=f"{gateway_url}/modelscope/v1", api_key=TOKEN, max_retries=0)
    sdk.chat.completions.create(
        model="MAILAND/majicflus_v1",
        messages=[{"role": "user", "content": "a lighthouse"}],
        extra_body={"image_size": "512x512", "num_inference_steps": 12, "cfg": 3.5, "seed": 7},
    )
    # Then ModelScope gets its own names
    body = fake_ms.submissions[0]["body"]
    assert (body["size"], body["steps"], body["guidance"], body["seed"]) == ("512x512", 12, 3.5, 7)


def test_models_are_listed_without_auth(gateway_url: str) -> None:
    models = client(gateway_url, key="unused").models.list()
    ids = [m.id for m in models.data]
    assert ids == [
        "Qwen/Qwen-Image",
        "Tongyi-MAI/Z-Image-Turbo",
        "Qwen/Qwen-Image-Edit",
        "Qwen/Qwen-Image-Edit-2509",
        "Qwen/Qwen-Image-Edit-2511",
    ]
    assert httpx.get(f"{gateway_url}/modelscope/v1/models", timeout=30).json()["object"] == "list"


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"steps": 101}, "steps", "from 1 to 100"),
        ({"guidance": 25}, "guidance", "from 1.5 to 20"),
        ({"size": "2048x2048"}, "size", "1664x1664"),
        ({"seed": -1}, "seed", "2147483647"),
        ({"n": 11}, "n", "from 1 to 10"),
        ({"loras": {"a": 0.5, "b": 0.2}}, "loras", "sum to 1.0"),
    ],
)
def test_out_of_range_options_are_400s(
    gateway_url: str, fake_ms: FakeModelScope, extra: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway_url).chat.completions.create(
            model="Qwen/Qwen-Image",
            messages=[{"role": "user", "content": "x"}],
            extra_body=extra,
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and fragment in error["message"]
    assert fake_ms.submissions == []


def test_bad_token_is_401_with_modelscope_message_and_no_secret(gateway_url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(gateway_url, key="ms-wrong-secret").chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
        )
    assert "valid ModelScope token" in str(caught.value)
    assert "ms-wrong-secret" not in json.dumps(caught.value.body)


def test_missing_or_malformed_auth_is_401(gateway_url: str) -> None:
    url = f"{gateway_url}/v1/chat/completions"
    body = {"model": "Qwen/Qwen-Image", "messages": [{"role": "user", "content": "x"}]}
    for headers in ({}, {"authorization": "Token abc"}):
        answer = httpx.post(url, json=body, headers=headers, timeout=30)
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "authentication_error"


def test_unknown_model_is_404(gateway_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway_url).chat.completions.create(
            model="nobody/no-such-image-model", messages=[{"role": "user", "content": "x"}]
        )
    assert "does not exist" in str(caught.value)


def test_failed_task_is_502_and_not_retried_by_the_sdk(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # Given a task that fails, and an SDK that would retry 5xx twice
    fake_ms.fail_reason = "the worker ran out of memory"
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway_url, retries=2).chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
        )
    # Then the provider's reason and task id reach the client, and the paid job ran once
    assert caught.value.status_code == 502
    assert "the worker ran out of memory" in caught.value.message
    assert next(iter(fake_ms.tasks)) in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake_ms.submissions) == 1


def test_failure_after_stream_start_is_an_in_stream_error(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    fake_ms.fail_reason = "GPU fell over"
    stream = client(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "GPU fell over" in caught.value.message


def test_rate_limit_keeps_message_and_retry_after(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    fake_ms.submit_override = (
        429,
        {"errors": {"message": "Rate limit exceeded"}},
        {"retry-after": "7", "modelscope-ratelimit-requests-remaining": "0"},
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway_url).chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
        )
    assert "Rate limit exceeded" in caught.value.message
    assert caught.value.response.headers["retry-after"] == "7"


def test_deadline_is_504_naming_the_task(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    fake_ms.task_duration = 30.0
    # the deadline bounds the submission too: 2 s, so a busy machine's submission is in
    # before it (at 0.6 s one could miss it, and the 504 named no task)
    base = gateway(generation_timeout=2.0)
    with pytest.raises(openai.APIStatusError) as caught:
        client(base, retries=2).chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 504
    assert next(iter(fake_ms.tasks)) in caught.value.message
    assert len(fake_ms.submissions) == 1


def test_transient_poll_errors_are_retried(gateway_url: str, fake_ms: FakeModelScope) -> None:
    fake_ms.poll_errors = 3
    answer = client(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
    )
    assert len(image_urls(answer.choices[0].message.content)) == 1
    assert sum(1 for *_, status in fake_ms.polls if status == "HTTP 503") == 3


def test_unknown_status_names_keep_polling(gateway_url: str, fake_ms: FakeModelScope) -> None:
    fake_ms.running_status_name = "PROCESSING"
    fake_ms.task_duration = 0.4
    answer = client(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
    )
    assert len(image_urls(answer.choices[0].message.content)) == 1
    assert "PROCESSING" in {status for *_, status in fake_ms.polls}


def test_keepalive_comments_while_waiting(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    # Given a slow task and a short keep-alive interval, read the raw SSE (the task lasts ten
    # intervals: a busy machine's stall of a few does not leave fewer than three)
    fake_ms.task_duration = 2.0
    base = gateway(keepalive_interval=0.2, progress_interval=5.0)
    body = {
        "model": "Qwen/Qwen-Image",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
    }
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    frames = [f for f in text.split("\n\n") if f]
    assert frames.count(": keep-alive") >= 3
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith(("data: ", ": ")) and f != "data:" for f in frames)


def test_body_too_large_is_413(gateway: Callable[..., str]) -> None:
    base = gateway(max_body_bytes=1000)
    big = data_uri(make_png(8, 8)) + "A" * 2000
    answer = httpx.post(
        f"{base}/v1/chat/completions",
        headers={"authorization": f"Bearer {TOKEN}"},
        json={"model": "Qwen/Qwen-Image-Edit", "messages": [{"role": "user", "content": big}]},
        timeout=30,
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"


def test_unknown_paths_and_methods_are_json(gateway_url: str) -> None:
    missing = httpx.get(f"{gateway_url}/v2/nothing", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{gateway_url}/v1/chat/completions", timeout=30)
    assert wrong.status_code == 405 and "error" in wrong.json()
    provider = httpx.get(f"{gateway_url}/nosuch/v1/models", timeout=30)
    assert provider.status_code == 404 and "Known providers" in provider.json()["error"]["message"]


def test_cors_preflight_allows_browsers(gateway_url: str) -> None:
    answer = httpx.options(
        f"{gateway_url}/v1/chat/completions",
        headers={
            "origin": "https://chat.example.org",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] in ("*", "https://chat.example.org")


def test_prompt_over_modelscope_limit_is_400(gateway_url: str, fake_ms: FakeModelScope) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway_url).chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "cats " * 500}]
        )
    assert "fewer than 2000" in caught.value.message
    assert fake_ms.submissions == []


@pytest.mark.parametrize("api", ["chat", "images"])
def test_answer_beats_the_sdk_timeout_instead_of_a_paid_retry(
    gateway_url: str, fake_ms: FakeModelScope, api: str
) -> None:
    # Given a task slower than the client waits, and an SDK that retries timeouts twice
    fake_ms.task_duration = 30.0
    sdk = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=TOKEN, max_retries=2, timeout=4)

    def ask() -> object:
        if api == "chat":
            return sdk.chat.completions.create(
                model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
            )
        return sdk.images.generate(model="Qwen/Qwen-Image", prompt="x")

    # When it asks without streaming (the SDK sends x-stainless-read-timeout: 4)
    with pytest.raises(openai.APIStatusError) as caught:
        ask()
    # Then the gateway answers a 504 naming the task before the SDK's timer runs out, and the
    # paid job was submitted once, not three times
    assert caught.value.status_code == 504
    assert next(iter(fake_ms.tasks)) in caught.value.message
    assert len(fake_ms.submissions) == 1
