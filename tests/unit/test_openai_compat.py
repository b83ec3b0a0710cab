"""OpenAI-compatible image servers: the catalog from configuration, parameter mapping for seed
003's server and for OpenAI's own models, and the generations/edits calls and their answers,
against the fake server (both styles) over loopback HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fakes.image_host import FakeImageHost
from fakes.openai_images import FakeOpenAIImages
from fakes.png import JPEG_1x1, make_png
from imagegw.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
)
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.media import ImageBytes, InputImage, decode_data_uri
from imagegw.providers.base import Finished, GenerationRequest, ModelKind
from imagegw.providers.openai_compat import OpenAICompatible

OFFLINE = OpenAICompatible(Settings(), None)  # type: ignore[arg-type]


def prepare(model: str, fields: dict[str, Any], images: int = 0) -> dict[str, Any]:
    return OFFLINE.prepare(model, OFFLINE.classify(model), fields, images)


def refused(model: str, fields: dict[str, Any], images: int = 0) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        prepare(model, fields, images)
    return caught.value


def job(
    model: str = "Qwen/Qwen-Image",
    images: tuple[InputImage, ...] = (),
    options: dict[str, Any] | None = None,
    key: str = "any",
    mask: InputImage | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        provider="openai",
        model=model,
        kind=OFFLINE.classify(model),
        prompt="a cat",
        api_key=SecretStr(key),
        options=options or {},
        images=images,
        mask=mask,
    )


def uploaded(png: bytes) -> InputImage:
    return InputImage(
        url="https://bucket.example/uploads/x.png", image=ImageBytes(png, "image/png")
    )


# ----------------------------------------------------------------------------- catalog


def test_catalog_comes_from_configuration_and_edit_ids_are_edit_models() -> None:
    provider = OpenAICompatible(
        Settings(openai_image_models=" my/flux-dev , acme/Image-Edit-Pro,,my/flux-dev"),
        None,  # type: ignore[arg-type]
    )
    assert [(m.id, m.kind) for m in provider.catalog] == [
        ("my/flux-dev", ModelKind.GENERATE),
        ("acme/Image-Edit-Pro", ModelKind.EDIT),
    ]
    assert provider.classify("gpt-4o") is ModelKind.CHAT


def test_default_catalog() -> None:
    assert [m.id for m in OFFLINE.catalog] == [
        "gpt-image-1",
        "dall-e-3",
        "Qwen/Qwen-Image",
        "Qwen/Qwen-Image-Edit",
    ]


# ----------------------------------------------------------------------------- prepare


def test_seed_003_servers_get_their_own_names_and_size_as_width_height() -> None:
    fields = {
        "image_size": "1664x928",
        "num_inference_steps": "30",
        "cfg": 4,
        "seed": 42,
        "negative_prompt": " ",
        "temperature": 0.7,
    }
    assert prepare("Qwen/Qwen-Image", fields) == {
        "size": "1664x928",
        "width": 1664,
        "height": 928,
        "num_inference_steps": 30,
        "true_cfg_scale": 4.0,
        "seed": 42,
        "negative_prompt": " ",
    }


def test_seed_003_names_given_directly() -> None:
    fields = {"width": 640, "height": "480", "true_cfg_scale": "2.5"}
    assert prepare("Qwen/Qwen-Image", fields) == {
        "size": "640x480",
        "width": 640,
        "height": 480,
        "true_cfg_scale": 2.5,
    }
    assert prepare("Qwen/Qwen-Image", {"size": "640x480", "width": 640, "height": 480})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "640x480", "width": 641, "height": 480}, "size"),
        ({"width": 640}, "width"),
        ({"guidance": 3, "true_cfg_scale": 4}, "true_cfg_scale"),
        ({"true_cfg_scale": 25}, "true_cfg_scale"),
        ({"steps": 0}, "steps"),
        ({"seed": -5}, "seed"),
        ({"height": 10, "width": 64}, "height"),
    ],
)
def test_conflicts_and_ranges_are_400s(fields: dict[str, Any], param: str) -> None:
    assert refused("Qwen/Qwen-Image", fields).param == param


def test_openais_own_models_get_only_openai_names() -> None:
    fields = {
        "size": "1024x1536",
        "quality": "high",
        "background": "transparent",
        "steps": 30,
        "seed": 1,
        "negative_prompt": "x",
        "response_format": {"type": "json_object"},  # chat's meaning: not for images
    }
    assert prepare("gpt-image-1", fields) == {
        "size": "1024x1536",
        "quality": "high",
        "background": "transparent",
    }
    assert prepare("dall-e-3", {"size": "auto", "response_format": "b64_json"}) == {
        "size": "auto",
        "response_format": "b64_json",
    }


def test_any_model_edits_with_images_and_edit_models_need_one() -> None:
    assert prepare("Qwen/Qwen-Image", {}, images=2) == {}
    assert refused("Qwen/Qwen-Image-Edit", {}).code == "image_required"


# ----------------------------------------------------------------------------- calls over HTTP


@pytest.fixture
async def provider(fake_openai: FakeOpenAIImages) -> AsyncIterator[OpenAICompatible]:
    settings = Settings(openai_base_url=fake_openai.base_url, generation_timeout=5.0)
    async with httpx.AsyncClient() as client:
        yield OpenAICompatible(settings, client)


@pytest.mark.anyio
async def test_b64_answers_become_data_uris_of_the_right_type(
    provider: OpenAICompatible, fake_openai: FakeOpenAIImages
) -> None:
    finished = await provider.start(job(options={"width": 96, "height": 64}))

    assert isinstance(finished, Finished)
    (image,) = finished.images
    assert image.startswith("data:image/png;base64,")
    assert decode_data_uri(image, max_bytes=10**7).data == make_png(96, 64)
    assert fake_openai.requests[0]["path"] == "/v1/images/generations"


@pytest.mark.anyio
async def test_a_jpeg_answer_is_labelled_jpeg() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"data": [{"b64_json": base64.b64encode(JPEG_1x1).decode()}]}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        finished = await OpenAICompatible(Settings(), client).start(job())
    assert finished.images[0].startswith("data:image/jpeg;base64,")


@pytest.mark.anyio
async def test_one_image_is_sent_as_image_several_as_image_array(
    provider: OpenAICompatible, fake_openai: FakeOpenAIImages
) -> None:
    one, two = make_png(10, 10), make_png(12, 12)
    fake_openai.style = "openai"

    await provider.start(job("gpt-image-1", images=(uploaded(one),), key="sk-openai-test"))
    await provider.start(
        job("gpt-image-1", images=(uploaded(one), uploaded(two)), key="sk-openai-test")
    )

    first, second = fake_openai.requests
    assert [(f[0], f[3]) for f in first["files"]] == [("image", one)]
    assert [(f[0], f[3]) for f in second["files"]] == [("image[]", one), ("image[]", two)]
    assert second["fields"] == {"model": "gpt-image-1", "prompt": "a cat"}


@pytest.mark.anyio
async def test_a_mask_is_sent_with_the_edit(
    provider: OpenAICompatible, fake_openai: FakeOpenAIImages
) -> None:
    photo, mask = make_png(10, 10), make_png(10, 10, (0, 0, 0))

    await provider.start(job(images=(uploaded(photo),), mask=uploaded(mask)))

    assert [(f[0], f[3]) for f in fake_openai.requests[0]["files"]] == [
        ("image", photo),
        ("mask", mask),
    ]


@pytest.mark.anyio
async def test_url_only_inputs_are_downloaded_first(image_host: FakeImageHost) -> None:
    photo = make_png(14, 14)
    url = image_host.add("a.png", photo)

    def handler(request: httpx.Request) -> httpx.Response:
        assert photo in request.content  # the multipart body carries the downloaded bytes
        return httpx.Response(200, json={"data": [{"url": "https://cdn.example/out.png"}]})

    settings = Settings(allow_private_urls=True)  # the image host is on loopback
    fetcher = Fetcher(settings)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = OpenAICompatible(settings, client, fetcher)
        finished = await provider.start(job(images=(InputImage(url),)))
        with pytest.raises(InvalidRequestError) as missing:
            await provider.start(job(images=(InputImage(f"{image_host.url}/files/gone.png"),)))
    await fetcher.aclose()

    assert finished.images == ("https://cdn.example/out.png",)
    # a 404 gets the text every failed download gets: nothing about what was there
    assert missing.value.message == "Input image 1 could not be downloaded from its URL."
    assert (missing.value.code, missing.value.param) == ("invalid_image", "messages")
    assert image_host.requests == ["/files/a.png", "/files/gone.png"]


@pytest.mark.anyio
async def test_server_errors_keep_their_message(
    provider: OpenAICompatible, fake_openai: FakeOpenAIImages
) -> None:
    # FastAPI's 422 of seed 003's server: an edit without the `image` field
    fake_openai.next_error = (
        422,
        {"detail": [{"type": "missing", "loc": ["body", "image"], "msg": "Field required"}]},
    )
    with pytest.raises(InvalidRequestError) as unprocessable:
        await provider.start(job())
    assert unprocessable.value.message.endswith("Field required (body.image)")

    fake_openai.style = "openai"
    with pytest.raises(AuthenticationError, match="Incorrect API key provided"):
        await provider.start(job("gpt-image-1", key="sk-wrong"))
    with pytest.raises(NotFoundError, match="does not exist"):
        await provider.start(job("dall-e-9", key="sk-openai-test"))
    fake_openai.next_error = (500, {"error": {"message": "The server had an error"}})
    with pytest.raises(ProviderError, match="The server had an error"):
        await provider.start(job("dall-e-3", key="sk-openai-test"))


@pytest.mark.anyio
async def test_an_answer_without_data_is_a_502() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"created": 1, "data": [{"revised_prompt": "x"}]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ProviderError, match="without an image"):
            await OpenAICompatible(Settings(), client).start(job())
