"""End to end: requests as chat clients really send them (issue 12), over real HTTP against the
fakes: routes without `/v1` or with doubled and trailing slashes, every size parameter, options
written in the message, the notice of ignored fields, and progress in words. Each test checks
what the provider received."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png
from fakes.siliconflow import FakeSiliconFlow

pytestmark = pytest.mark.e2e
MS_TOKEN = "ms-test-token"
SF_TOKEN = "sk-sf-test-token"
OPENAI_TOKEN = "sk-openai-test"
FLUX = "MAILAND/majicflus_v1"  # ModelScope: a FLUX model, sides 64-1024
QWEN = "Qwen/Qwen-Image"  # ModelScope: sides 64-1664, native 1328x1328


def post(
    base: str, path: str, body: dict[str, Any], token: str = MS_TOKEN, **kwargs: Any
) -> httpx.Response:
    return httpx.post(
        base + path, json=body, headers={"authorization": f"Bearer {token}"}, timeout=30, **kwargs
    )


def ask(prompt: str, model: str = QWEN, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **fields}


def reasoning_of(response: httpx.Response) -> str:
    """The thinking block of a streamed answer (its `reasoning_content` deltas)."""
    text = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text.append(choice["delta"].get("reasoning_content") or "")
    return "".join(text)


# ------------------------------------------------------------------------- route variants


@pytest.mark.parametrize(
    "path",
    [
        "/chat/completions",  # a base URL without /v1
        "/v1//chat/completions",  # Cherry Studio: a base URL ending in "/"
        "//v1/chat/completions",
        "/v1/chat/completions/",
        "/modelscope/chat/completions",
        "/modelscope//v1/chat/completions",
        "/ModelScope/chat/completions/",
    ],
)
def test_chat_route_variants_all_reach_the_provider(
    gateway_url: str, fake_ms: FakeModelScope, path: str
) -> None:
    answer = post(gateway_url, path, ask("a lighthouse"))

    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].startswith("![image 1](")
    (submission,) = fake_ms.submissions
    assert submission["body"]["prompt"] == "a lighthouse"


@pytest.mark.parametrize(
    ("path", "listed"),
    [
        ("/models", "Qwen/Qwen-Image"),
        ("/v1/models/", "Qwen/Qwen-Image"),
        ("/v1//models", "Qwen/Qwen-Image"),
        ("/siliconflow/models", "Kwai-Kolors/Kolors"),
        ("/siliconflow//v1//models/", "Kwai-Kolors/Kolors"),
    ],
)
def test_model_list_variants(gateway_url: str, path: str, listed: str) -> None:
    answer = httpx.get(
        gateway_url + path, headers={"authorization": f"Bearer {MS_TOKEN}"}, timeout=30
    )

    assert answer.status_code == 200, answer.text
    assert listed in [card["id"] for card in answer.json()["data"]]


def test_images_api_without_v1(gateway_url: str, fake_sf: FakeSiliconFlow) -> None:
    answer = post(
        gateway_url,
        "/siliconflow/images/generations",
        {"model": "Kwai-Kolors/Kolors", "prompt": "a kite"},
        SF_TOKEN,
    )

    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 1
    (sent,) = fake_sf.requests
    assert sent["body"]["prompt"] == "a kite"


@pytest.mark.parametrize("path", ["/files/no-such-file.png", "/jobs/job-" + "0" * 32])
def test_files_and_jobs_without_v1_reach_their_routes(gateway_url: str, path: str) -> None:
    answer = httpx.get(
        gateway_url + path, headers={"authorization": f"Bearer {MS_TOKEN}"}, timeout=30
    )

    # the route answered (its own refusal), not the "no such route" of an unknown path
    assert answer.json()["error"]["code"] != "unknown_url"


@pytest.mark.parametrize("path", ["/nosuch/chat/completions", "/v2/chat/completions", "/chat"])
def test_unknown_prefixes_stay_unknown(
    gateway_url: str, fake_ms: FakeModelScope, path: str
) -> None:
    answer = post(gateway_url, path, ask("a lighthouse"))

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_url"
    assert fake_ms.submissions == []


# ------------------------------------------------------------------------- size parameters


@pytest.mark.parametrize(
    ("model", "fields", "size"),
    [
        # LobeChat's width/height: kept when the model takes them, else fitted, shape kept
        (QWEN, {"width": 1024, "height": 768}, "1024x768"),
        (FLUX, {"width": 1344, "height": 768}, "1024x592"),
        (FLUX, {"width": "32", "height": "48"}, "64x96"),
        # an aspect ratio: the model's native area in that shape, within its range
        (QWEN, {"aspectRatio": "16:9"}, "1664x928"),
        (QWEN, {"aspect_ratio": "1:1"}, "1328x1328"),
        (FLUX, {"aspect_ratio": "9:16"}, "576x1024"),
        # OpenAI's named sizes: fitted like width/height; auto is the model's default
        (FLUX, {"size": "1792x1024"}, "1024x592"),
        (QWEN, {"size": "1536x1024"}, "1536x1024"),
        (QWEN, {"size": "auto"}, None),
        # size wins over an aspect ratio; width/height over an aspect ratio
        (QWEN, {"size": "800x600", "aspect_ratio": "1:1"}, "800x600"),
        (QWEN, {"width": 640, "height": 480, "aspectRatio": "1:1"}, "640x480"),
    ],
)
def test_size_parameters_reach_modelscope_as_one_size(
    gateway_url: str, fake_ms: FakeModelScope, model: str, fields: dict[str, Any], size: str | None
) -> None:
    answer = post(gateway_url, "/v1/chat/completions", ask("a harbour", model, **fields))

    assert answer.status_code == 200, answer.text
    assert "x-ignored-parameters" not in answer.headers
    (submission,) = fake_ms.submissions
    assert submission["body"].get("size") == size
    assert not {"width", "height", "aspect_ratio", "aspectRatio"} & set(submission["body"])


@pytest.mark.parametrize(
    ("model", "fields", "image_size"),
    [
        ("Kwai-Kolors/Kolors", {"aspect_ratio": "3:4"}, "880x1184"),
        ("Kwai-Kolors/Kolors", {"width": 768, "height": 1024}, "768x1024"),
        ("Qwen/Qwen-Image", {"size": "1792x1024"}, "1792x1024"),
        ("Qwen/Qwen-Image", {"size": "auto"}, "1328x1328"),  # the model's default
    ],
)
def test_size_parameters_reach_siliconflow(
    gateway_url: str,
    fake_sf: FakeSiliconFlow,
    model: str,
    fields: dict[str, Any],
    image_size: str,
) -> None:
    answer = post(
        gateway_url, "/siliconflow/v1/chat/completions", ask("a harbour", model, **fields), SF_TOKEN
    )

    assert answer.status_code == 200, answer.text
    (sent,) = fake_sf.requests
    assert sent["body"]["image_size"] == image_size


def test_siliconflow_edit_models_get_no_size(gateway_url: str, fake_sf: FakeSiliconFlow) -> None:
    photo = base64.b64encode(make_png(8, 8, (1, 2, 3))).decode()
    content = [
        {"type": "text", "text": "make it blue"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{photo}"}},
    ]
    body = {
        "model": "Qwen/Qwen-Image-Edit",
        "messages": [{"role": "user", "content": content}],
        "aspect_ratio": "16:9",
    }
    answer = post(gateway_url, "/siliconflow/v1/chat/completions", body, SF_TOKEN)

    assert answer.status_code == 200, answer.text
    (sent,) = fake_sf.requests
    assert "image_size" not in sent["body"]


@pytest.mark.parametrize(
    ("model", "fields", "size"),
    [
        ("gpt-image-1", {"aspect_ratio": "16:9"}, "1536x1024"),
        ("gpt-image-1", {"size": "1792x1024"}, "1536x1024"),  # not one of its sizes
        ("gpt-image-1", {"size": "1024x1536"}, "1024x1536"),
        ("dall-e-3", {"width": 1920, "height": 1080}, "1792x1024"),
        ("dall-e-3", {"aspectRatio": "1:1"}, "1024x1024"),
    ],
)
def test_openais_models_get_the_listed_size_of_the_nearest_shape(
    gateway_url: str,
    fake_openai: FakeOpenAIImages,
    model: str,
    fields: dict[str, Any],
    size: str,
) -> None:
    fake_openai.style = "openai"  # refuses any parameter OpenAI does not know
    answer = post(
        gateway_url, "/openai/chat/completions", ask("a fox", model, **fields), OPENAI_TOKEN
    )

    assert answer.status_code == 200, answer.text
    (sent,) = fake_openai.requests
    assert sent["fields"]["size"] == size


def test_self_hosted_servers_get_width_and_height_from_an_aspect_ratio(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    answer = post(
        gateway_url,
        "/openai/v1/chat/completions",
        ask("a fox", "Qwen/Qwen-Image", aspectRatio="3:4"),
        OPENAI_TOKEN,
    )

    assert answer.status_code == 200, answer.text
    (sent,) = fake_openai.requests
    assert (sent["fields"]["width"], sent["fields"]["height"]) == (880, 1184)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"aspect_ratio": "wide"}, "aspect_ratio"),
        ({"aspectRatio": "0:9"}, "aspectRatio"),
        ({"width": 1024}, "height"),
        ({"width": "big", "height": 10}, "width"),
        ({"size": "800x600", "width": 640, "height": 480}, "size"),
        ({"size": "4000x4000"}, "size"),  # an explicit size outside the range stays a 400
    ],
)
def test_bad_size_parameters_are_400s(
    gateway_url: str, fake_ms: FakeModelScope, fields: dict[str, Any], param: str
) -> None:
    answer = post(gateway_url, "/v1/chat/completions", ask("a harbour", **fields))

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
    assert fake_ms.submissions == []


# ------------------------------------------------------------------ options in the message


def test_options_in_the_message_reach_modelscope_and_leave_the_prompt(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    prompt = "a cat on a roof --ar 16:9 --seed 42 --steps 30 --no blurry, text --guidance 4"
    answer = post(gateway_url, "/v1/chat/completions", ask(prompt))

    assert answer.status_code == 200, answer.text
    (submission,) = fake_ms.submissions
    assert submission["body"] == {
        "model": QWEN,
        "prompt": "a cat on a roof",
        "size": "1664x928",
        "seed": 42,
        "steps": 30,
        "negative_prompt": "blurry, text",
        "guidance": 4.0,
    }


@pytest.mark.parametrize(
    ("prompt", "wire"),
    [
        ("--size 1024x768 a cat", {"size": "1024x768"}),
        ("a cat --size 1792x1024", {"size": "1664x944"}),  # an OpenAI name, fitted
        ("a cat --w 640 --h 480", {"size": "640x480"}),
        ("a cat --cfg 3.5", {"guidance": 3.5}),
        ("a cat --negative dogs", {"negative_prompt": "dogs"}),
        ("a cat --aspect 1:1", {"size": "1328x1328"}),
    ],
)
def test_each_message_option(
    gateway_url: str, fake_ms: FakeModelScope, prompt: str, wire: dict[str, Any]
) -> None:
    answer = post(gateway_url, "/v1/chat/completions", ask(prompt))

    assert answer.status_code == 200, answer.text
    (submission,) = fake_ms.submissions
    assert submission["body"]["prompt"] == "a cat"
    assert {name: submission["body"].get(name) for name in wire} == wire


def test_n_in_the_message_makes_that_many_images(gateway_url: str, fake_ms: FakeModelScope) -> None:
    answer = post(gateway_url, "/v1/chat/completions", ask("a cat --n 2"))

    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].count("![image") == 2
    assert [s["body"]["prompt"] for s in fake_ms.submissions] == ["a cat", "a cat"]


def test_message_options_override_body_fields(gateway_url: str, fake_ms: FakeModelScope) -> None:
    body = ask("a cat --steps 30 --ar 1:1", num_inference_steps=20, width=640, height=480, seed=7)
    answer = post(gateway_url, "/v1/chat/completions", body)

    assert answer.status_code == 200, answer.text
    (submission,) = fake_ms.submissions
    assert (submission["body"]["steps"], submission["body"]["size"]) == (30, "1328x1328")
    assert submission["body"]["seed"] == 7  # a body field the message does not set stays


def test_options_of_earlier_messages_are_not_read(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    body = {
        "model": QWEN,
        "messages": [
            {"role": "user", "content": "a dog --seed 1"},
            {"role": "assistant", "content": "![image 1](https://example.com/a.png)"},
            {"role": "user", "content": "a cat"},
        ],
    }
    answer = post(gateway_url, "/v1/chat/completions", body)

    assert answer.status_code == 200, answer.text
    (submission,) = fake_ms.submissions
    assert submission["body"]["prompt"] == "a cat" and "seed" not in submission["body"]


@pytest.mark.parametrize(
    ("prompt", "param", "words"),
    [
        ("a cat --steps many", "messages", "--steps 30"),
        ("a cat --ar wide", "messages", "--ar 16:9"),
        ("a cat --seed", "messages", "no value"),
        ("a cat --stpes 30", "messages", "Unknown option --stpes"),
        ("--seed 4", "messages", "only options"),
        ("a cat --steps 500", "steps", "1 to 100"),  # the model's range, told by its check
    ],
)
def test_bad_message_options_are_clear_400s(
    gateway_url: str, fake_ms: FakeModelScope, prompt: str, param: str, words: str
) -> None:
    answer = post(gateway_url, "/v1/chat/completions", ask(prompt))

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert fake_ms.submissions == []


# --------------------------------------------------------------- nothing silently dropped


def test_an_unknown_field_is_named_in_the_thinking_block(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    body = ask("a cat", stream=True, stpes=30, temperature=0.7, top_p=1, max_tokens=100)
    answer = post(gateway_url, "/v1/chat/completions", body)

    assert answer.status_code == 200
    thinking = reasoning_of(answer)
    assert "ignored: stpes\n" in thinking
    assert "temperature" not in thinking and "top_p" not in thinking
    (submission,) = fake_ms.submissions
    assert "stpes" not in submission["body"]


def test_an_unknown_field_is_named_in_a_header_of_a_json_answer(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    body = ask("a cat", stpes=30, quality="hd", presence_penalty=0, frequency_penalty=0)
    answer = post(gateway_url, "/v1/chat/completions", body)

    assert answer.status_code == 200
    # quality means nothing to ModelScope: named too
    assert answer.headers["x-ignored-parameters"] == "quality, stpes"


def test_standard_chat_parameters_are_ignored_quietly(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    body = ask(
        "a cat",
        temperature=0.7,
        top_p=0.9,
        max_tokens=512,
        presence_penalty=0,
        frequency_penalty=0,
        stop=["\n"],
        user="u1",
        logit_bias={},
        tools=[],
        response_format={"type": "text"},
        metadata={},
        stream=True,
        stream_options={"include_usage": True},
    )
    answer = post(gateway_url, "/v1/chat/completions", body)

    assert answer.status_code == 200
    assert "ignored" not in reasoning_of(answer)
    assert "x-ignored-parameters" not in answer.headers


# ------------------------------------------------------------------------ progress in words


def test_progress_is_told_in_words(gateway_url: str, fake_ms: FakeModelScope) -> None:
    fake_ms.task_duration, fake_ms.pending_seconds = 0.6, 0.2
    answer = post(gateway_url, "/v1/chat/completions", ask("a cat", stream=True))

    thinking = reasoning_of(answer)
    lines = thinking.splitlines()
    assert lines[0] == f"ModelScope · {QWEN} · 1 image"
    assert any(line.startswith("queued at ModelScope · ") for line in lines)
    assert any(line.startswith("generating · ") for line in lines)
    assert any(line.startswith("saving the image · ") for line in lines)
    for raw in ("PENDING", "RUNNING", "SUCCEED"):
        assert raw not in thinking


def test_options_a_model_does_without_are_named(
    gateway_url: str, fake_openai: FakeOpenAIImages
) -> None:
    fake_openai.style = "openai"  # refuses any parameter OpenAI does not know
    body = ask("a fox", "dall-e-3", seed=4, steps=30, quality="hd", temperature=1)
    answer = post(gateway_url, "/openai/v1/chat/completions", body, OPENAI_TOKEN)

    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ignored-parameters"] == "seed, steps"
    (sent,) = fake_openai.requests
    assert sent["fields"]["quality"] == "hd" and "seed" not in sent["fields"]


def test_hostile_field_names_make_a_bounded_ascii_notice(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    fields = {"größe" * 200: 1, **{f"x{i}": i for i in range(40)}}
    answer = post(gateway_url, "/v1/chat/completions", ask("a cat", **fields))

    assert answer.status_code == 200, answer.text
    notice = answer.headers["x-ignored-parameters"]
    assert notice.startswith("gr%C3%B6%C3%9Fe") and notice.endswith("and 21 more")
    assert len(notice) < 1000
