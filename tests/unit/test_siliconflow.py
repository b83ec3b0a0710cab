"""SiliconFlow: parameters per model (seed 001, provider-wire.md), image counts, batching, and
the synchronous call and its error bodies, against the fake SiliconFlow over loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fakes.png import make_png
from fakes.siliconflow import MODEL_MISSING, OVERLOADED, FakeSiliconFlow
from imagegw.errors import (
    AuthenticationError,
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    render,
)
from imagegw.infra.config import Settings
from imagegw.infra.media import ImageBytes, InputImage
from imagegw.providers.base import Finished, GenerationRequest, ModelKind
from imagegw.providers.siliconflow import SiliconFlow

KEY = "sk-sf-test-token"
QWEN, EDIT, EDIT_2509, KOLORS = (
    "Qwen/Qwen-Image",
    "Qwen/Qwen-Image-Edit",
    "Qwen/Qwen-Image-Edit-2509",
    "Kwai-Kolors/Kolors",
)
OFFLINE = SiliconFlow(Settings(), None)  # type: ignore[arg-type]


def prepare(model: str, fields: dict[str, Any], images: int = 0) -> dict[str, Any]:
    return OFFLINE.prepare(model, OFFLINE.classify(model), fields, images)


def refused(model: str, fields: dict[str, Any], images: int = 0) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        prepare(model, fields, images)
    return caught.value


def job(model: str = QWEN, n: int = 1, images: tuple[InputImage, ...] = ()) -> GenerationRequest:
    return GenerationRequest(
        provider="siliconflow",
        model=model,
        kind=OFFLINE.classify(model),
        prompt="a cat",
        api_key=SecretStr(KEY),
        options=prepare(model, {}, len(images)),
        images=images,
        n=n,
    )


# ----------------------------------------------------------------------------- prepare


def test_seed_names_and_common_names_map_to_each_models_own() -> None:
    seed = {"guidance_scale": 7.5, "num_inference_steps": 30, "image_size": "1024x1024"}
    common = {"guidance": "7.5", "steps": "30", "size": "1024 x 1024"}
    for fields in (seed, common):
        assert prepare(QWEN, fields) == {
            "cfg": 7.5,
            "num_inference_steps": 30,
            "image_size": "1024x1024",
        }
        assert prepare(KOLORS, fields) == {
            "guidance_scale": 7.5,
            "num_inference_steps": 30,
            "image_size": "1024x1024",
        }


def test_negative_prompt_and_seed_up_to_ten_digits() -> None:
    fields = {"negative_prompt": "低质量", "seed": 9_999_999_999}
    assert prepare(QWEN, fields)["seed"] == 9_999_999_999
    assert prepare(EDIT, fields, images=1) == fields


def test_missing_image_size_gets_the_models_default() -> None:
    assert prepare(QWEN, {})["image_size"] == "1328x1328"
    assert prepare(KOLORS, {})["image_size"] == "1024x1024"
    assert prepare("black-forest-labs/FLUX.1-schnell", {})["image_size"] == "1024x1024"


def test_edit_models_get_no_image_size_but_a_bad_one_is_still_a_400() -> None:
    assert prepare(EDIT_2509, {"image_size": "1328x1328"}, images=1) == {}
    assert refused(EDIT, {"size": "huge"}, images=1).param == "size"


@pytest.mark.parametrize(
    ("model", "fields", "param", "fragment"),
    [
        (QWEN, {"num_inference_steps": 101}, "num_inference_steps", "1 to 100"),
        (QWEN, {"steps": 0}, "steps", "1 to 100"),
        (QWEN, {"seed": -1}, "seed", "0 to 9999999999"),
        (QWEN, {"cfg": 0.05}, "cfg", "0.1 to 20"),
        (QWEN, {"guidance": 20.5}, "guidance", "0.1 to 20"),
        (KOLORS, {"guidance_scale": -1}, "guidance_scale", "0 to 20"),
        (KOLORS, {"image_size": "4096x4096"}, "image_size", "2048x2048"),
        (QWEN, {"negative_prompt": 3}, "negative_prompt", "string"),
    ],
)
def test_out_of_range_is_a_400_naming_the_field_sent(
    model: str, fields: dict[str, Any], param: str, fragment: str
) -> None:
    error = refused(model, fields)
    assert error.param == param
    assert fragment in error.message


def test_kolors_takes_guidance_zero_which_qwen_does_not() -> None:
    assert prepare(KOLORS, {"guidance": 0})["guidance_scale"] == 0.0
    assert refused(QWEN, {"guidance": 0}).param == "guidance"


@pytest.mark.parametrize(
    ("model", "images", "code"),
    [
        (QWEN, 1, "unexpected_image"),
        (KOLORS, 2, "unexpected_image"),
        (EDIT, 0, "image_required"),
        (EDIT, 2, "too_many_images"),
        (EDIT_2509, 0, "image_required"),
        (EDIT_2509, 4, "too_many_images"),
    ],
)
def test_image_counts_per_model(model: str, images: int, code: str) -> None:
    assert refused(model, {}, images).code == code


def test_image_counts_that_fit() -> None:
    prepare(EDIT, {}, 1)
    for count in (1, 2, 3):
        prepare(EDIT_2509, {}, count)


def test_batch_size_is_the_number_of_images() -> None:
    assert OFFLINE.requested_images({}) == 1
    assert OFFLINE.requested_images({"batch_size": 2}) == 2
    assert OFFLINE.requested_images({"n": 7}) == 7
    assert OFFLINE.requested_images({"n": 3, "batch_size": "3"}) == 3
    with pytest.raises(InvalidRequestError) as caught:
        OFFLINE.requested_images({"batch_size": 5})
    assert caught.value.param == "batch_size"
    with pytest.raises(InvalidRequestError) as different:
        OFFLINE.requested_images({"n": 2, "batch_size": 3})
    assert different.value.param == "batch_size"


def test_kolors_splits_in_batches_of_four_others_one_image_a_call() -> None:
    assert [part.n for part in OFFLINE.split(job(KOLORS, n=10))] == [4, 4, 2]
    assert [part.n for part in OFFLINE.split(job(KOLORS, n=1))] == [1]
    assert [part.n for part in OFFLINE.split(job(QWEN, n=3))] == [1, 1, 1]


def test_catalog_is_seed_001s_models() -> None:
    assert [(m.id, m.kind) for m in OFFLINE.catalog] == [
        (QWEN, ModelKind.GENERATE),
        (EDIT, ModelKind.EDIT),
        (EDIT_2509, ModelKind.EDIT),
        (KOLORS, ModelKind.GENERATE),
    ]
    assert OFFLINE.classify("Qwen/Qwen2.5-VL-72B-Instruct") is ModelKind.CHAT


# ----------------------------------------------------------------------------- start, over HTTP


@pytest.fixture
async def provider(fake_sf: FakeSiliconFlow) -> AsyncIterator[SiliconFlow]:
    settings = Settings(siliconflow_base_url=fake_sf.base_url, generation_timeout=5.0)
    async with httpx.AsyncClient() as client:
        yield SiliconFlow(settings, client)


@pytest.mark.anyio
async def test_known_bytes_go_inline_and_urls_as_they_are(
    provider: SiliconFlow, fake_sf: FakeSiliconFlow
) -> None:
    # Given an uploaded photo (bytes known) and a second picture known only by its URL
    photo = make_png(30, 20)
    earlier = await provider.start(job(QWEN))
    (url,) = earlier.images
    images = (
        InputImage(
            url="https://bucket.example/uploads/a.png", image=ImageBytes(photo, "image/png")
        ),
        InputImage(url=url),
    )

    finished = await provider.start(job(EDIT_2509, images=images))

    # Then the photo went as a data URI, the other as its URL, and the service read both
    body = fake_sf.requests[1]["body"]
    assert body["image"].startswith("data:image/png;base64,")
    assert body["image2"] == url
    assert fake_sf.inputs[1][0] == photo
    assert fake_sf.inputs[1][1] == (await provider.client.get(url)).content
    assert len(finished.images) == 1


@pytest.mark.anyio
async def test_a_kolors_batch_is_one_call_with_all_its_images(
    provider: SiliconFlow, fake_sf: FakeSiliconFlow
) -> None:
    (part,) = provider.split(job(KOLORS, n=3))

    finished = await provider.start(part)

    assert isinstance(finished, Finished)
    assert len(finished.images) == 3
    assert all("Expires=" in url for url in finished.images)
    assert fake_sf.requests[0]["body"]["batch_size"] == 3


@pytest.mark.parametrize(
    ("status", "error", "code", "fragment"),
    [
        (401, AuthenticationError, "provider_error", "Invalid token"),
        (403, PermissionDeniedError, "provider_error", "balance"),
        (404, NotFoundError, "model_not_found", "404 page not found"),
        (400, NotFoundError, "model_not_found", MODEL_MISSING),
        (429, RateLimitError, "rate_limit_exceeded", "rate limiting"),
        (503, ProviderError, "provider_unavailable", OVERLOADED),
        (504, ProviderError, "provider_unavailable", "Gateway Timeout"),
    ],
)
@pytest.mark.anyio
async def test_error_bodies_map_to_the_gateways_errors(
    provider: SiliconFlow,
    fake_sf: FakeSiliconFlow,
    status: int,
    error: type[Exception],
    code: str,
    fragment: str,
) -> None:
    fake_sf.fail_next(status, **({"retry-after": "3"} if status == 429 else {}))

    with pytest.raises(error) as caught:
        await provider.start(job())

    failure = caught.value
    assert isinstance(failure, GatewayError)
    assert failure.code == code
    assert failure.message.startswith("SiliconFlow: ") and fragment in failure.message
    assert "trace id" in failure.message
    status_out, _, headers = render(failure)
    assert status_out == {503: 502, 504: 502, 400: 404}.get(status, status)
    if status == 429:
        assert headers["retry-after"] == "3"


@pytest.mark.anyio
async def test_a_validation_400_keeps_the_message(
    provider: SiliconFlow, fake_sf: FakeSiliconFlow
) -> None:
    request = replace(job(), options={})  # no image_size

    with pytest.raises(InvalidRequestError, match="image_size is required"):
        await provider.start(request)


@pytest.mark.anyio
async def test_an_answer_without_images_is_a_502(fake_sf: FakeSiliconFlow) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"images": [], "timings": {"inference": 1}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = SiliconFlow(Settings(), client)
        with pytest.raises(ProviderError, match="without an image"):
            await provider.start(job())


@pytest.mark.anyio
async def test_no_answer_within_the_deadline_is_a_504() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = SiliconFlow(Settings(generation_timeout=12), client)
        with pytest.raises(DeadlineExceededError, match="did not answer within 12 s"):
            await provider.start(job())
