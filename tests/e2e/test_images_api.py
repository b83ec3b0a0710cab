"""End to end: the OpenAI Images API (`images.generate`, `images.edit`) over real HTTP with the
official `openai` SDK, and requests shaped exactly like Cherry Studio's and Open WebUI's.

The provider-dependent tests run against every provider in `BACKENDS`: a row names the route,
the models and the fake fixture, and says how to read the fake's records.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import JPEG_1x1, make_png, png_size
from fakes.siliconflow import FakeSiliconFlow

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"
SIZE = "96x64"


@dataclass(frozen=True)
class Backend:
    """One provider (and style of fake) as these tests drive it."""

    id: str
    #: the provider's route name: the gateway serves it at `/{route}/v1`
    route: str
    #: fixture name of the provider's fake (wired into the gateway's settings by conftest)
    fake: str
    #: the API key the fake accepts
    key: str
    #: a text-to-image model, and an edit model taking `edit_images` images at most
    generate_model: str
    edit_model: str
    edit_images: int
    #: the masks the fake received, or None for a provider without masks
    masks: Callable[[Any], list[bytes]] | None
    #: the input images each generation the fake ran received, in order
    inputs: Callable[[Any], list[list[bytes]]]
    #: make the provider's own result links expire (nothing for providers that answer bytes)
    expire: Callable[[Any], None]
    #: put the fake in the style this row drives
    setup: Callable[[Any], None] = lambda fake: None


def _expire_files(fake: Any) -> None:
    fake.expire_files = True


def _openai_inputs(fake: FakeOpenAIImages) -> list[list[bytes]]:
    return [
        [data for field, _, _, data in request["files"] if field.startswith("image")]
        for request in fake.requests
        if request["status"] == 200
    ]


def _openai_masks(fake: FakeOpenAIImages) -> list[bytes]:
    return [
        data
        for request in fake.requests
        for field, _, _, data in request["files"]
        if field == "mask"
    ]


def _openai_expire(fake: FakeOpenAIImages) -> None:
    fake.files.clear()  # OpenAI's links die after an hour


def _openai_style(fake: FakeOpenAIImages) -> None:
    fake.style = "openai"


BACKENDS = [
    Backend(
        id="modelscope",
        route="modelscope",
        fake="fake_ms",
        key=TOKEN,
        generate_model="Qwen/Qwen-Image",
        edit_model="Qwen/Qwen-Image-Edit-2509",
        edit_images=3,
        masks=None,
        inputs=lambda fake: [task.inputs for task in fake.tasks.values()],
        expire=_expire_files,
    ),
    Backend(
        id="siliconflow",
        route="siliconflow",
        fake="fake_sf",
        key="sk-sf-test-token",
        generate_model="Qwen/Qwen-Image",
        edit_model="Qwen/Qwen-Image-Edit-2509",
        edit_images=3,
        masks=None,
        inputs=lambda fake: fake.inputs,
        expire=_expire_files,
    ),
    Backend(  # seed 003's self-hosted server: base64 answers, one input image
        id="openai-compatible-server",
        route="openai",
        fake="fake_openai",
        key="sk-local",
        generate_model="Qwen/Qwen-Image",
        edit_model="Qwen/Qwen-Image-Edit",
        edit_images=1,
        masks=_openai_masks,
        inputs=_openai_inputs,
        expire=lambda fake: None,
    ),
    Backend(  # OpenAI's own API: dall-e answers urls, gpt-image base64
        id="openai",
        route="openai",
        fake="fake_openai",
        key="sk-openai-test",
        generate_model="dall-e-3",
        edit_model="gpt-image-1",
        edit_images=16,
        masks=_openai_masks,
        inputs=_openai_inputs,
        expire=_openai_expire,
        setup=_openai_style,
    ),
]


@dataclass(frozen=True)
class Target:
    backend: Backend
    fake: Any
    #: the gateway's `/{provider}/v1` base URL
    api: str

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api, api_key=self.backend.key, max_retries=0)

    def inputs(self) -> list[list[bytes]]:
        return self.backend.inputs(self.fake)


@pytest.fixture(params=BACKENDS, ids=lambda b: b.id)
def target(request: pytest.FixtureRequest, gateway_url: str) -> Target:
    backend: Backend = request.param
    fake = request.getfixturevalue(backend.fake)
    backend.setup(fake)
    return Target(backend, fake, f"{gateway_url}/{backend.route}/v1")


def sdk(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def picture(url: str) -> bytes:
    answer = httpx.get(url, follow_redirects=True, timeout=30)
    assert answer.status_code == 200
    return answer.content


def error_of(answer: httpx.Response) -> Mapping[str, Any]:
    error: Mapping[str, Any] = answer.json()["error"]
    return error


# ----------------------------------------------------------------- every provider


def test_generate_url(target: Target) -> None:
    result = target.sdk().images.generate(
        model=target.backend.generate_model, prompt="a red square", size=SIZE
    )
    (item,) = result.data or []
    assert item.b64_json is None
    assert item.url is not None and item.url.startswith("http")
    assert png_size(picture(item.url)) == (96, 64)


def test_generate_b64_json(target: Target) -> None:
    result = target.sdk().images.generate(
        model=target.backend.generate_model,
        prompt="a red square",
        size=SIZE,
        response_format="b64_json",
    )
    (item,) = result.data or []
    assert item.url is None
    assert item.b64_json is not None
    assert png_size(base64.b64decode(item.b64_json)) == (96, 64)


def test_generate_two_images(target: Target) -> None:
    result = target.sdk().images.generate(
        model=target.backend.generate_model, prompt="a red square", size=SIZE, n=2
    )
    urls = [item.url for item in result.data or []]
    assert len(urls) == 2 and len(set(urls)) == 2
    assert all(png_size(picture(str(url))) == (96, 64) for url in urls)
    assert len(target.inputs()) == 2  # two generations ran


def test_edit_one_file(target: Target) -> None:
    photo = make_png(40, 30, (0, 120, 255))
    result = target.sdk().images.edit(
        model=target.backend.edit_model,
        image=("photo.png", photo, "image/png"),
        prompt="make it night",
        size=SIZE,
    )
    (item,) = result.data or []
    assert png_size(picture(str(item.url)))  # a real PNG (edit models may keep the input's size)
    assert target.inputs() == [[photo]]


def backends(where: Callable[[Backend], bool]) -> Any:
    """Run a test on the backends that fit (the test takes the `target` fixture)."""
    chosen = [backend for backend in BACKENDS if where(backend)]
    return pytest.mark.parametrize("target", chosen, ids=lambda b: b.id, indirect=True)


@backends(lambda backend: backend.edit_images >= 2)
def test_edit_two_files_in_order(target: Target) -> None:
    first, second = make_png(40, 30, (0, 120, 255)), make_png(20, 20, (255, 255, 0))
    result = target.sdk().images.edit(  # the SDK sends a list as image[]
        model=target.backend.edit_model,
        image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
        prompt="put the yellow square on the blue picture",
        response_format="b64_json",
    )
    (item,) = result.data or []
    assert item.url is None and item.b64_json
    assert target.inputs() == [[first, second]]


def test_stored_link_outlives_the_providers(target: Target) -> None:
    # Given a generated image, linked the default way (stored)
    result = target.sdk().images.generate(
        model=target.backend.generate_model, prompt="a red square", size=SIZE
    )
    link = str((result.data or [])[0].url)
    assert "/v1/files/" in link
    # When the provider's own links have expired
    target.backend.expire(target.fake)
    # Then the gateway's link still leads to the picture
    assert png_size(picture(link)) == (96, 64)


def test_n_images_are_n_items_whatever_the_batching(
    gateway_url: str, fake_sf: FakeSiliconFlow
) -> None:
    # Kolors on SiliconFlow makes up to 4 images a call: 6 images are two calls, six items
    result = openai.OpenAI(
        base_url=f"{gateway_url}/siliconflow/v1", api_key="sk-sf-test-token", max_retries=0
    ).images.generate(model="Kwai-Kolors/Kolors", prompt="a red square", size=SIZE, n=6)
    urls = [item.url for item in result.data or []]
    assert len(urls) == 6 and len(set(urls)) == 6
    # the two calls go out together: their order at the provider is not fixed
    assert sorted(request["body"].get("batch_size") for request in fake_sf.requests) == [2, 4]


@backends(lambda backend: backend.masks is None)
def test_mask_is_refused_without_masks(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        target.sdk().images.edit(
            model=target.backend.edit_model,
            image=("photo.png", make_png(8, 8), "image/png"),
            mask=("mask.png", make_png(8, 8), "image/png"),
            prompt="make it night",
        )
    assert caught.value.param == "mask"
    assert "mask" in caught.value.message
    assert target.inputs() == []  # nothing was generated


@backends(lambda backend: backend.masks is not None)
def test_mask_reaches_a_provider_with_masks(target: Target) -> None:
    mask = make_png(8, 8, (0, 0, 0))
    result = target.sdk().images.edit(
        model=target.backend.edit_model,
        image=("photo.png", make_png(8, 8), "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="make it night",
    )
    assert len(result.data or []) == 1
    assert target.backend.masks is not None and target.backend.masks(target.fake) == [mask]


# ----------------------------------------------------------------- clients' exact requests


def post(url: str, **kwargs: Any) -> list[dict[str, Any]]:
    """POST as a client would; the answer's `data` items (the answer must be a 200)."""
    answer = httpx.post(url, headers={**auth(), "x-stainless-timeout": "600"}, timeout=30, **kwargs)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["data"]
    return items


# Cherry Studio sends image-like model ids to /images/generations, asks for b64_json and fails
# on urls; Open WebUI asks for b64_json too
B64_CLIENT_BODIES = {
    "cherry-studio-image-model": {
        "model": "Tongyi-MAI/Z-Image-Turbo",
        "prompt": "a lighthouse at dusk",
        "n": 1,
        "size": "512x768",
        "response_format": "b64_json",
    },
    "open-webui": {
        "model": "Qwen/Qwen-Image",
        "prompt": "a lighthouse at dusk",
        "n": 1,
        "size": "96x64",
        "response_format": "b64_json",
    },
}


@pytest.mark.parametrize("client", B64_CLIENT_BODIES)
def test_clients_asking_for_b64_json(
    client: str, gateway_url: str, fake_ms: FakeModelScope
) -> None:
    body = B64_CLIENT_BODIES[client]
    (item,) = post(f"{gateway_url}/v1/images/generations", json=body)
    assert set(item) == {"b64_json"}
    width, height = (int(side) for side in str(body["size"]).split("x"))
    assert png_size(base64.b64decode(item["b64_json"])) == (width, height)


def test_cherry_studio_paintings_call(gateway_url: str, fake_ms: FakeModelScope) -> None:
    # the Paintings page sends no response_format and reads both forms: only urls come back
    body = {"prompt": "a lighthouse at dusk", "model": "Qwen/Qwen-Image", "size": SIZE, "n": 2}
    items = post(f"{gateway_url}/modelscope/v1/images/generations", json=body)
    assert [set(item) for item in items] == [{"url"}, {"url"}]


def test_cherry_studio_paintings_edit_with_repeated_image(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    first, second = make_png(12, 12, (1, 2, 3)), JPEG_1x1
    items = post(
        f"{gateway_url}/v1/images/edits",
        data={"prompt": "merge them", "model": "Qwen/Qwen-Image-Edit-2509", "n": "1"},
        files=[
            ("image", ("a.png", first, "image/png")),
            ("image", ("b.jpg", second, "image/jpeg")),
        ],
    )
    assert [set(item) for item in items] == [{"url"}]
    (task,) = fake_ms.tasks.values()
    assert task.inputs == [first, second]


# ----------------------------------------------------------------- fields and options


def test_options_pass_and_openai_only_fields_are_ignored(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    sdk(gateway_url).images.generate(
        model="Qwen/Qwen-Image",
        prompt="a red square",
        size=SIZE,
        quality="high",
        style="vivid",
        background="auto",
        moderation="low",
        output_format="png",
        output_compression=80,
        user="someone",
        extra_body={"steps": "30", "negative_prompt": "blurry", "seed": 7},
    )
    (submission,) = fake_ms.submissions
    assert submission["body"] == {
        "model": "Qwen/Qwen-Image",
        "prompt": "a red square",
        "size": SIZE,
        "steps": 30,
        "negative_prompt": "blurry",
        "seed": 7,
    }


def test_model_left_out_is_the_first_listed(gateway_url: str, fake_ms: FakeModelScope) -> None:
    sdk(gateway_url).images.generate(prompt="a red square", size="auto")
    (submission,) = fake_ms.submissions
    assert submission["body"] == {"model": "Qwen/Qwen-Image", "prompt": "a red square"}


def test_edit_form_fields_loras_and_url_image(gateway_url: str, fake_ms: FakeModelScope) -> None:
    path = fake_ms.add_file("input.png", make_png(16, 16))
    url = f"{fake_ms.base_url.removesuffix('/v1')}{path}"  # type: ignore[attr-defined]
    post(
        f"{gateway_url}/v1/images/edits",
        data={
            "prompt": "make it night",
            "model": "Qwen/Qwen-Image-Edit",
            "steps": "25",
            "loras": json.dumps({"repo/a": 0.6, "repo/b": 0.4}),
            "quality": "high",
        },
        files={"image": (None, url)},  # a text part holding a URL
    )
    (submission,) = fake_ms.submissions
    assert submission["body"]["image_url"] == [url]
    assert submission["body"]["steps"] == 25
    assert submission["body"]["loras"] == {"repo/a": 0.6, "repo/b": 0.4}


def test_inline_setting_still_gives_urls(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    result = sdk(gateway(image_links="inline")).images.generate(
        model="Qwen/Qwen-Image", prompt="a red square", size=SIZE
    )
    url = str((result.data or [])[0].url)
    assert url.startswith("http") and "/v1/files/" in url


def test_provider_setting_gives_the_providers_link(
    gateway: Callable[..., str], fake_ms: FakeModelScope
) -> None:
    result = sdk(gateway(image_links="provider")).images.generate(
        model="Qwen/Qwen-Image", prompt="a red square", size=SIZE
    )
    (task,) = fake_ms.tasks.values()
    assert str((result.data or [])[0].url).endswith(f"/files/{task.output_names[0]}")


# ----------------------------------------------------------------- refusals


def test_bad_response_format(gateway_url: str, fake_ms: FakeModelScope) -> None:
    answer = httpx.post(
        f"{gateway_url}/v1/images/generations",
        headers=auth(),
        json={"model": "Qwen/Qwen-Image", "prompt": "a cat", "response_format": "base64"},
        timeout=30,
    )
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["param"] == "response_format"
    assert "'base64'" in error["message"] and "b64_json" in error["message"]
    assert fake_ms.submissions == []


def test_missing_prompt(gateway_url: str, fake_ms: FakeModelScope) -> None:
    answer = httpx.post(
        f"{gateway_url}/v1/images/generations",
        headers=auth(),
        json={"model": "Qwen/Qwen-Image"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "prompt"
    assert fake_ms.submissions == []


def test_edit_without_image(gateway_url: str, fake_ms: FakeModelScope) -> None:
    answer = httpx.post(
        f"{gateway_url}/v1/images/edits",
        headers=auth(),
        files={"prompt": (None, "make it night")},
        timeout=30,
    )
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "image"


def test_edit_with_a_file_that_is_no_image(gateway_url: str, fake_ms: FakeModelScope) -> None:
    answer = httpx.post(
        f"{gateway_url}/v1/images/edits",
        headers=auth(),
        data={"prompt": "make it night", "model": "Qwen/Qwen-Image-Edit"},
        files={"image": ("notes.png", b"just text", "image/png")},
        timeout=30,
    )
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["param"] == "image" and "PNG, JPEG" in error["message"]


def test_edit_body_over_the_limit(gateway: Callable[..., str], fake_ms: FakeModelScope) -> None:
    base = gateway(max_body_bytes=50_000)
    answer = httpx.post(
        f"{base}/v1/images/edits",
        headers=auth(),
        data={"prompt": "make it night", "model": "Qwen/Qwen-Image-Edit"},
        files={"image": ("big.png", make_png(300, 300) + b"\0" * 60_000, "image/png")},
        timeout=30,
    )
    assert answer.status_code == 413
    assert error_of(answer)["code"] == "request_too_large"


def test_edit_model_on_generations_points_to_edits(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway_url).images.generate(model="Qwen/Qwen-Image-Edit", prompt="a cat")
    assert caught.value.param == "model"
    assert "/v1/images/edits" in caught.value.message


def test_a_stream_that_is_no_boolean_is_refused(gateway_url: str, fake_ms: FakeModelScope) -> None:
    answer = httpx.post(
        f"{gateway_url}/v1/images/generations",
        headers=auth(),
        json={"model": "Qwen/Qwen-Image", "prompt": "a cat", "stream": "maybe"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert error_of(answer)["param"] == "stream"
    assert fake_ms.submissions == []  # streamed answers: tests/e2e/test_images_stream.py


def test_failed_generation_is_a_502_not_to_retry(gateway_url: str, fake_ms: FakeModelScope) -> None:
    fake_ms.fail_reason = "the worker ran out of memory"
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gateway_url).images.generate(model="Qwen/Qwen-Image", prompt="a cat")
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "ran out of memory" in caught.value.message


def test_a_generation_refused_for_its_content_is_a_400_run_once(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # Given a provider that refuses the prompt (its task ends FAILED, moderated), and an SDK
    # that retries 5xx twice
    fake_ms.fail_reason = "Content Moderated: the prompt did not pass content moderation"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway_url).with_options(max_retries=2).images.generate(
            model="Qwen/Qwen-Image", prompt="a cat"
        )
    # Then it is the client's 400, as OpenAI answers its content-policy refusals: not retried
    assert caught.value.status_code == 400
    assert caught.value.code == "content_policy_violation"
    assert "content moderation" in caught.value.message
    assert len(fake_ms.submissions) == 1
