"""End to end: the official `openai` SDK drives the gateway over real HTTP against the fake
SiliconFlow, the fake OpenAI-compatible image server (seed 003's style and OpenAI's) and the fake
ModelScope chat, all on loopback. Includes every SiliconFlow example of seed 001."""

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
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png, png_size
from fakes.siliconflow import OVERLOADED, RATE_LIMITED, FakeSiliconFlow

pytestmark = pytest.mark.e2e
SF_KEY = "sk-sf-test-token"
OPENAI_KEY = "sk-openai-test"
MS_KEY = "ms-test-token"
APPLE = (
    "写实静物摄影风格：一只新鲜的苹果静静地躺在干净柔软的表面上。苹果略微偏离中心，柔和的背光突显其"
    "自然的光泽和微妙的色彩渐变——深红色与浅金色交相辉映。"
)
IMAGE_LINE = re.compile(r"^!\[[^\]]*\]\((\S+)\)$")
VISION = "Qwen/Qwen3-VL-30B-A3B-Instruct"


def client(base: str, provider: str, key: str, *, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base}/{provider}/v1", api_key=key, max_retries=retries, timeout=30
    )


def siliconflow(base: str, key: str = SF_KEY, retries: int = 0) -> openai.OpenAI:
    return client(base, "siliconflow", key, retries=retries)


def image_urls(content: str | None) -> list[str]:
    assert content is not None
    return [m.group(1) for line in content.splitlines() if (m := IMAGE_LINE.match(line))]


def stored_png(url: str, base: str) -> bytes:
    """The picture behind a gateway link (a lasting /v1/files/ link, never a data URI)."""
    assert url.startswith(f"{base}/v1/files/"), url
    picture = httpx.get(url, follow_redirects=True, timeout=30)
    assert picture.status_code == 200
    return picture.content


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def user(text: str, *images: bytes) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": data_uri(png)}} for png in images]
    return {"role": "user", "content": parts}


# ----------------------------------------------------------------------------- SiliconFlow


def test_seed_qwen_image_example(gateway_url: str, fake_sf: FakeSiliconFlow) -> None:
    # Given seed 001's first example, in its own parameter names
    answer = siliconflow(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image",
        messages=[{"role": "user", "content": APPLE}],
        extra_body={
            "image_size": "1024x1024",
            "guidance_scale": 7.5,
            "num_inference_steps": 30,
            "negative_prompt": "低质量, 模糊",
            "seed": 42,
        },
    )
    # Then one lasting link to the 1024x1024 picture
    (url,) = image_urls(answer.choices[0].message.content)
    assert png_size(stored_png(url, gateway_url)) == (1024, 1024)
    # And SiliconFlow got Qwen-Image's names (guidance is `cfg` there) and the client's key
    (sent,) = fake_sf.requests
    assert sent["body"] == {
        "model": "Qwen/Qwen-Image",
        "prompt": APPLE,
        "image_size": "1024x1024",
        "cfg": 7.5,
        "num_inference_steps": 30,
        "negative_prompt": "低质量, 模糊",
        "seed": 42,
    }
    assert sent["status"] == 200


def test_seed_kolors_batch_is_one_call(gateway_url: str, fake_sf: FakeSiliconFlow) -> None:
    # Given seed 001's Kolors example: batch_size 2
    answer = siliconflow(gateway_url).chat.completions.create(
        model="Kwai-Kolors/Kolors",
        messages=[{"role": "user", "content": "一只可爱的狗狗在草地上奔跑，动漫画风"}],
        extra_body={"image_size": "1024x1024", "guidance_scale": 8.0, "seed": 42, "batch_size": 2},
    )
    # Then two different pictures from one upstream call
    urls = image_urls(answer.choices[0].message.content)
    assert len(urls) == 2
    pictures = [stored_png(url, gateway_url) for url in urls]
    assert pictures[0] != pictures[1]
    (sent,) = fake_sf.requests
    assert sent["body"]["batch_size"] == 2
    assert sent["body"]["guidance_scale"] == 8.0
    assert "cfg" not in sent["body"]


def test_seed_two_image_edit_with_system_message_streamed(
    gateway_url: str, fake_sf: FakeSiliconFlow
) -> None:
    # Given seed 001's 2509 example: a system message, two photos, cfg and steps, streamed
    girl, car = make_png(40, 60, (250, 200, 200)), make_png(80, 50, (20, 20, 200))
    stream = siliconflow(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image-Edit-2509",
        messages=[
            {"role": "system", "content": "我是一个综合智能 AI 助手。"},
            user("图1中的女生站在图2的车旁边", girl, car),
        ],
        stream=True,
        extra_body={"cfg": 4, "num_inference_steps": 40},
    )
    chunks = list(stream)
    # Then the stream carries progress, then one picture, then stop
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert "SiliconFlow · Qwen/Qwen-Image-Edit-2509" in reasoning
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    (url,) = image_urls(content)
    assert png_size(stored_png(url, gateway_url)) == (40, 60)  # the fake keeps image 1's size
    assert chunks[-1].choices[0].finish_reason == "stop"
    # And SiliconFlow got both photos inline as `image` and `image2`, the prompt, and no size
    (sent,) = fake_sf.requests
    body = sent["body"]
    assert body["image"] == data_uri(girl) and body["image2"] == data_uri(car)
    assert fake_sf.inputs == [[girl, car]]
    assert body["prompt"] == "图1中的女生站在图2的车旁边"
    assert (body["cfg"], body["num_inference_steps"]) == (4, 40)
    assert "image_size" not in body


def test_n_makes_parallel_calls_and_kolors_batches_of_four(
    gateway_url: str, fake_sf: FakeSiliconFlow
) -> None:
    sdk = siliconflow(gateway_url)
    # Given Qwen-Image with n=2: two calls of one image, with the default size
    qwen = sdk.chat.completions.create(
        model="Qwen/Qwen-Image",
        messages=[{"role": "user", "content": "a cat"}],
        extra_body={"n": 2},
    )
    assert len(image_urls(qwen.choices[0].message.content)) == 2
    assert [r["body"].get("batch_size") for r in fake_sf.requests] == [None, None]
    assert {r["body"]["image_size"] for r in fake_sf.requests} == {"1328x1328"}
    # Given Kolors with n=6: batches of 4 and 2, six pictures
    kolors = sdk.chat.completions.create(
        model="Kwai-Kolors/Kolors",
        messages=[{"role": "user", "content": "a dog"}],
        extra_body={"n": 6, "size": "64x64"},
    )
    assert len(image_urls(kolors.choices[0].message.content)) == 6
    assert sorted(r["body"]["batch_size"] for r in fake_sf.requests[2:]) == [2, 4]


def test_image_size_is_dropped_for_edit_models(gateway_url: str, fake_sf: FakeSiliconFlow) -> None:
    # Given an assistant whose custom parameters carry a size, used with an edit model
    answer = siliconflow(gateway_url).chat.completions.create(
        model="Qwen/Qwen-Image-Edit",
        messages=[user("make it night", make_png(24, 24))],
        extra_body={"image_size": "1328x1328"},
    )
    # Then the edit works: the size the edit models refuse is not sent
    assert len(image_urls(answer.choices[0].message.content)) == 1
    assert "image_size" not in fake_sf.requests[0]["body"]


@pytest.mark.parametrize(
    ("model", "images", "fragment"),
    [
        ("Qwen/Qwen-Image-Edit", 2, "takes 1 input image; the message has 2"),
        ("Qwen/Qwen-Image-Edit-2509", 4, "takes 1 to 3 input images; the message has 4"),
        ("Kwai-Kolors/Kolors", 1, "takes no input image"),
        ("Qwen/Qwen-Image-Edit-2509", 0, "edits an image"),
    ],
)
def test_image_counts_per_model_are_400s(
    gateway_url: str, fake_sf: FakeSiliconFlow, model: str, images: int, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        siliconflow(gateway_url).chat.completions.create(
            model=model, messages=[user("x", *[make_png(8, 8)] * images)]
        )
    assert fragment in caught.value.message
    assert fake_sf.requests == []


@pytest.mark.parametrize(
    ("model", "extra", "param", "fragment"),
    [
        ("Qwen/Qwen-Image", {"num_inference_steps": 101}, "num_inference_steps", "1 to 100"),
        ("Qwen/Qwen-Image", {"steps": 0}, "steps", "1 to 100"),
        ("Qwen/Qwen-Image", {"seed": 10_000_000_000}, "seed", "9999999999"),
        ("Qwen/Qwen-Image", {"cfg": 0}, "cfg", "0.1 to 20"),
        ("Kwai-Kolors/Kolors", {"guidance_scale": 21}, "guidance_scale", "0 to 20"),
        ("Kwai-Kolors/Kolors", {"batch_size": 5}, "batch_size", "1 to 4"),
        ("Kwai-Kolors/Kolors", {"image_size": "big"}, "image_size", "WIDTHxHEIGHT"),
    ],
)
def test_out_of_range_options_are_400s_naming_the_field(
    gateway_url: str,
    fake_sf: FakeSiliconFlow,
    model: str,
    extra: dict[str, Any],
    param: str,
    fragment: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        siliconflow(gateway_url).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], extra_body=extra
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and fragment in error["message"]
    assert fake_sf.requests == []


@pytest.mark.parametrize(
    ("status", "error", "fragment"),
    [
        (401, openai.AuthenticationError, "Invalid token"),
        (403, openai.PermissionDeniedError, "balance is insufficient"),
        (404, openai.NotFoundError, "404 page not found"),
        (400, openai.NotFoundError, "Model does not exist"),
        (503, openai.InternalServerError, OVERLOADED),
        (504, openai.InternalServerError, "Gateway Timeout"),
    ],
)
def test_siliconflow_error_bodies_become_openai_errors(
    gateway_url: str,
    fake_sf: FakeSiliconFlow,
    status: int,
    error: type[openai.APIStatusError],
    fragment: str,
) -> None:
    # Given each of SiliconFlow's error shapes (bare strings, {code,message,data}, plain text)
    fake_sf.fail_next(status)
    with pytest.raises(error) as caught:
        siliconflow(gateway_url, retries=2).chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
        )
    # Then the client reads SiliconFlow's own message in the OpenAI error shape
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"].startswith("SiliconFlow: ") and fragment in body["message"]
    assert "trace id" in body["message"]
    if status >= 500:  # a 502 the SDK does not re-run: generation is paid
        assert caught.value.status_code == 502
        assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake_sf.requests) == 1


def test_unknown_token_is_401_without_the_key(gateway_url: str, fake_sf: FakeSiliconFlow) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        siliconflow(gateway_url, key="sk-wrong-secret-key").chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
        )
    assert "Invalid token" in caught.value.message
    assert "sk-wrong-secret-key" not in json.dumps(caught.value.body)


def test_rate_limit_keeps_message_and_retry_after(
    gateway_url: str, fake_sf: FakeSiliconFlow
) -> None:
    fake_sf.fail_next(429, **{"retry-after": "9"})
    with pytest.raises(openai.RateLimitError) as caught:
        siliconflow(gateway_url).chat.completions.create(
            model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "x"}]
        )
    assert RATE_LIMITED in caught.value.message
    assert caught.value.response.headers["retry-after"] == "9"


def test_stored_links_outlive_siliconflow_links(
    gateway: Callable[..., str], fake_sf: FakeSiliconFlow
) -> None:
    # Given a picture made with the default IMAGE_LINKS=stored and one with provider links
    messages = [{"role": "user", "content": "a lighthouse"}]
    stored = gateway()
    (lasting,) = image_urls(
        siliconflow(stored)
        .chat.completions.create(model="Qwen/Qwen-Image", messages=messages)
        .choices[0]
        .message.content
    )
    (borrowed,) = image_urls(
        siliconflow(gateway(image_links="provider"))
        .chat.completions.create(model="Qwen/Qwen-Image", messages=messages)
        .choices[0]
        .message.content
    )
    assert "Expires=" in borrowed
    # When SiliconFlow's hour is over
    fake_sf.expire_files = True
    # Then SiliconFlow's own link is dead, and the gateway's still shows the picture
    assert httpx.get(borrowed, timeout=30).status_code == 403
    assert png_size(stored_png(lasting, stored)) == (1328, 1328)


def test_siliconflow_models_are_listed(gateway_url: str) -> None:
    models = siliconflow(gateway_url, key="unused").models.list()
    assert [m.id for m in models.data] == [
        "Qwen/Qwen-Image",
        "Qwen/Qwen-Image-Edit",
        "Qwen/Qwen-Image-Edit-2509",
        "Kwai-Kolors/Kolors",
    ]


# ----------------------------------------------------------------------------- OpenAI-compatible


def test_seed_003_server_generation_in_its_own_names(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    # Given seed 003's self-hosted server, and the gateway's common parameter names
    answer = client(gateway_url, "openai", "any-key").chat.completions.create(
        model="Qwen/Qwen-Image",
        messages=[{"role": "user", "content": "一只可爱的猫在沙发上睡觉"}],
        extra_body={
            "size": "928x640",
            "steps": 30,
            "guidance": 5,
            "seed": 7,
            "negative_prompt": "ugly",
        },
    )
    # Then its b64 answer reaches the chat as a lasting http link, not a data URI
    content = answer.choices[0].message.content
    assert content is not None and "data:" not in content
    (url,) = image_urls(content)
    assert png_size(stored_png(url, gateway_url)) == (928, 640)
    # And the server got its own names, size also as width/height
    (sent,) = fake_openai.requests
    assert sent["path"] == "/v1/images/generations"
    assert sent["fields"] == {
        "model": "Qwen/Qwen-Image",
        "prompt": "一只可爱的猫在沙发上睡觉",
        "size": "928x640",
        "width": 928,
        "height": 640,
        "num_inference_steps": 30,
        "true_cfg_scale": 5.0,
        "seed": 7,
        "negative_prompt": "ugly",
    }


def test_seed_003_server_edit_gets_the_uploaded_photo_as_a_file(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    # Given a photo attached to a chat with the edit model
    photo = make_png(56, 40, (10, 200, 30))
    answer = client(gateway_url, "openai", "any-key").chat.completions.create(
        model="Qwen/Qwen-Image-Edit",
        messages=[user("给猫戴上派对帽", photo)],
        extra_body={"true_cfg_scale": 4.0},
    )
    # Then the server got a multipart edit: `image` with the very bytes, and the prompt
    (sent,) = fake_openai.requests
    assert sent["path"] == "/v1/images/edits"
    ((field, filename, content_type, data),) = sent["files"]
    assert (field, content_type, data) == ("image", "image/png", photo)
    assert filename.endswith(".png")
    assert sent["fields"]["prompt"] == "给猫戴上派对帽"
    assert sent["fields"]["true_cfg_scale"] == "4.0"
    # And its b64 answer shows in chat as a lasting link
    (url,) = image_urls(answer.choices[0].message.content)
    assert png_size(stored_png(url, gateway_url)) == (56, 40)


def test_openai_url_answers_are_stored_and_openai_gets_only_its_names(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    # Given OpenAI's own API, which refuses names it does not know, and dall-e-3 (url answers)
    fake_openai.style = "openai"
    answer = client(gateway_url, "openai", OPENAI_KEY).chat.completions.create(
        model="dall-e-3",
        messages=[{"role": "user", "content": "a red fox"}],
        extra_body={"size": "1024x1792", "steps": 30, "quality": "hd", "n": 2},
    )
    # Then both url answers became lasting links to the pictures
    urls = image_urls(answer.choices[0].message.content)
    assert [png_size(stored_png(url, gateway_url)) for url in urls] == [(1024, 1792)] * 2
    assert [r["status"] for r in fake_openai.requests] == [200, 200]
    assert fake_openai.requests[0]["fields"] == {
        "model": "dall-e-3",
        "prompt": "a red fox",
        "size": "1024x1792",
        "quality": "hd",
    }


def test_openai_multi_image_edit_uses_image_array(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    fake_openai.style = "openai"
    first, second = make_png(16, 16, (1, 2, 3)), make_png(20, 20, (4, 5, 6))
    answer = client(gateway_url, "openai", OPENAI_KEY).chat.completions.create(
        model="gpt-image-1", messages=[user("put them together", first, second)]
    )
    assert len(image_urls(answer.choices[0].message.content)) == 1
    (sent,) = fake_openai.requests
    assert [(f[0], f[3]) for f in sent["files"]] == [("image[]", first), ("image[]", second)]


def test_openai_errors_keep_the_server_message(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    fake_openai.style = "openai"
    with pytest.raises(openai.AuthenticationError) as caught:
        client(gateway_url, "openai", "sk-nope").chat.completions.create(
            model="gpt-image-1", messages=[{"role": "user", "content": "x"}]
        )
    assert "Incorrect API key provided" in caught.value.message
    assert "sk-nope" not in json.dumps(caught.value.body)


def test_openai_models_come_from_configuration(gateway: Callable[..., str]) -> None:
    base = gateway(openai_image_models="Qwen/Qwen-Image, Qwen/Qwen-Image-Edit ,flux-dev")
    listed = client(base, "openai", "unused").models.list()
    assert [m.id for m in listed.data] == ["Qwen/Qwen-Image", "Qwen/Qwen-Image-Edit", "flux-dev"]


# ----------------------------------------------------------------------------- chat pass-through


def test_vision_chat_is_streamed_through_chunk_by_chunk(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # Given a vision chat model on ModelScope that sends each chunk once the client has the
    # previous one, and a photo
    fake_ms.chat_lockstep = True
    photo = make_png(12, 12)
    message = user("请描述这张图片的内容。", photo)
    stream = client(gateway_url, "modelscope", MS_KEY).chat.completions.create(
        model=VISION, messages=[message], stream=True, stream_options={"include_usage": True}
    )
    pieces: list[str] = []
    sent_when_received: list[int] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            sent_when_received.append(fake_ms.chat_sent)
            fake_ms.chat_go.release()
    # Then the words arrive one by one, as the provider sends them, not all at once at the end:
    # each reached the client before the provider sent the next
    assert "".join(pieces) == "I see 1 image(s). This is the fake ModelScope vision model."
    assert len(pieces) >= 8
    assert sent_when_received == list(range(1, len(pieces) + 1))
    assert not fake_ms.chat_stalled
    # And the provider got the request as sent: the image part untouched
    (sent,) = fake_ms.chat_requests
    assert sent["body"]["messages"] == [message]
    assert sent["body"]["stream_options"] == {"include_usage": True}
    assert fake_ms.submissions == []


def test_vision_chat_without_stream_is_passed_on(gateway_url: str, fake_ms: FakeModelScope) -> None:
    answer = client(gateway_url, "modelscope", MS_KEY).chat.completions.create(
        model=VISION, messages=[{"role": "user", "content": "hello"}], temperature=0.7
    )
    assert answer.choices[0].message.content == (
        "I see 0 image(s). This is the fake ModelScope vision model."
    )
    assert answer.usage is not None and answer.usage.total_tokens > 0
    assert fake_ms.chat_requests[0]["body"]["temperature"] == 0.7


def test_chat_errors_before_the_stream_are_openai_errors(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway_url, "modelscope", MS_KEY).chat.completions.create(
            model="nobody/no-such-chat-model",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
    assert "does not exist" in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        client(gateway_url, "modelscope", "ms-wrong").chat.completions.create(
            model=VISION, messages=[{"role": "user", "content": "x"}]
        )
