"""OpenAI-compatible image servers: the catalog from configuration, parameter mapping for seed
003's server and for OpenAI's own models, and the generations/edits calls and their answers,
against the fake server (both styles) over loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import json
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from fakes.image_host import FakeImageHost
from fakes.openai_images import FakeOpenAIImages
from fakes.png import JPEG_1x1, make_png
from fakes.server import ServerThread
from imagegw.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
)
from imagegw.infra.clients import provider_client
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.media import ImageBytes, InputImage, decode_data_uri
from imagegw.infra.spans import SPLICE_AT
from imagegw.providers.base import Finished, GenerationRequest, ModelKind
from imagegw.providers.openai_compat import Made, OpenAICompatible

OFFLINE = OpenAICompatible(Settings(), None)  # type: ignore[arg-type]
MB = 1024 * 1024


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


# ----------------------------------------------------------------------------- answers read apart

#: the image types an answer's base64 starts with, and the type its data URI is given
HEADS = {
    "png": (b"\x89PNG\r\n\x1a\n", "image/png"),
    "jpeg": (b"\xff\xd8\xff\xe0", "image/jpeg"),
    "gif": (b"GIF89a", "image/gif"),
    "none": (b"\x00", "image/png"),  # bytes that show no type: labelled PNG, as ever
}
#: an item of an answer's `data`: base64 of an image (its type, its size, "/" escaped or not,
#: a line break in it, early or late), a link, a data URI given as a link, or neither
_ITEMS = st.one_of(
    st.tuples(
        st.just("b64"),
        st.sampled_from(sorted(HEADS)),
        st.sampled_from([0, 10, SPLICE_AT - 40, SPLICE_AT, 70_000, 300_000]),
        st.sampled_from(["", "escaped", "newline", "late newline"]),
    ),
    st.tuples(st.just("url"), st.sampled_from(["https", "data"]), st.just(0), st.just("")),
    st.tuples(st.just("none"), st.just(""), st.just(0), st.just("")),
)


def _item(kind: str, how: str, size: int, twist: str, seed: int) -> tuple[str, str | None]:
    """An item's JSON text and the image the gateway is to make of it (None: none)."""
    if kind == "none":
        return '{"revised_prompt": "猫 \\"x\\""}', None
    if kind == "url":
        url = (
            "https://cdn.example/out.png?sig=abc"
            if how == "https"
            else "data:image/webp;base64," + "UklG" * 40_000
        )
        return json.dumps({"url": url, "revised_prompt": "é"}), url
    head, mime = HEADS[how]
    b64 = base64.b64encode(head + random.Random(seed).randbytes(size)).decode()
    text = json.dumps(b64)
    if twist == "escaped":  # "\/": what some servers' JSON encoders write for "/"
        text = text.replace("/", "\\/")
    elif twist:  # base64 broken into lines (escaped in JSON), from its start or near its end
        at = 76 if twist == "newline" else max(0, len(b64) - 50)
        b64 = b64[:at] + "\n" + b64[at:]
        text = json.dumps(b64)
    return f'{{"b64_json": {text}, "revised_prompt": "a cat"}}', f"data:{mime};base64,{b64}"


def _answer(items: list[tuple[str, str, int, str]], spaced: bool) -> tuple[bytes, tuple[str, ...]]:
    """An answer's JSON bytes and the images the gateway is to make of it."""
    made = [_item(*item, seed=index) for index, item in enumerate(items)]
    gap = "\n  " if spaced else ""
    text = f'{{{gap}"created": 1,{gap}"data": [{gap}{f",{gap}".join(t for t, _ in made)}]}}'
    return text.encode(), tuple(image for _, image in made if image)


def _cut(raw: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(raw), *(cut % (len(raw) + 1) for cut in cuts)})
    return [raw[a:b] for a, b in itertools.pairwise(edges)]


def _served(chunks: list[bytes], status: int = 200) -> httpx.AsyncClient:
    """A client whose every call is answered `chunks`, a chunk at a time."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body(), headers={"content-type": "application/json"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def _streamed_images(provider: OpenAICompatible) -> tuple[str, ...]:
    """The images of `stream_images` (an upstream that answers JSON to `stream: true`)."""
    made = [item async for item in provider.stream_images(job(), 1)]
    assert all(isinstance(item, Made) for item in made)
    return tuple(item.ref for item in made if isinstance(item, Made))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(_ITEMS, min_size=1, max_size=3),
    spaced=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=800_000), max_size=8),
)
def test_an_answer_cut_into_chunks_anywhere_gives_the_same_images(
    items: list[tuple[str, str, int, str]], spaced: bool, cuts: list[int]
) -> None:
    # Given an answer with images as base64 (of any type, long or short, "/" escaped or not),
    # links, data URIs as links and items without either, its bytes cut into chunks anywhere
    raw, expected = _answer(items, spaced)
    chunks = _cut(raw, cuts)

    async def images() -> tuple[tuple[str, ...], tuple[str, ...]]:
        async with _served(chunks) as client:
            provider = OpenAICompatible(Settings(), client)
            return (await provider.start(job())).images, await _streamed_images(provider)

    if not expected:  # Then an answer without an image is refused, as ever
        with pytest.raises(ProviderError, match="answered without an image"):
            asyncio.run(images())
        return
    # When the gateway reads it, whole or asked to stream / Then the images are byte for byte
    # those of the answer read whole: each base64 a data URI of the type its bytes show
    assert asyncio.run(images()) == (expected, expected)


class _Answering:
    """An ASGI app answering every request `body` with `status` and `headers`, 64 KiB at a
    time (no length declared: chunked)."""

    def __init__(self) -> None:
        self.status, self.body, self.headers = 200, b"", [(b"content-type", b"application/json")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        for at in range(0, len(self.body), 65536):
            part = self.body[at : at + 65536]
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def answering() -> Iterator[tuple[_Answering, str]]:
    app = _Answering()
    with ServerThread(app) as server:
        yield app, f"{server.url}/v1"


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["length", "chunked", "gzip"])
@pytest.mark.parametrize("size", [100, 3_000_000])
async def test_the_provider_clients_answers_give_the_same_images(
    answering: tuple[_Answering, str], framing: str, size: int
) -> None:
    # Given a server answering an image's base64 (small: in with the answer's head; large:
    # read as it comes), its length declared, chunked, or gzip-encoded
    app, base = answering
    raw, expected = _answer([("b64", "png", size, ""), ("url", "https", 0, "")], spaced=False)
    app.status, app.body = 200, gzip.compress(raw) if framing == "gzip" else raw
    app.headers = [(b"content-type", b"application/json")]
    if framing == "gzip":
        app.headers.append((b"content-encoding", b"gzip"))
    if framing != "chunked":
        app.headers.append((b"content-length", str(len(app.body)).encode()))
    settings = Settings(openai_base_url=base, generation_timeout=10.0)
    # When the gateway's provider client reads it (straight from its pool, or through httpx's
    # decoder) / Then the images are those of the answer
    async with provider_client(settings) as client:
        provider = OpenAICompatible(settings, client)
        assert (await provider.start(job())).images == expected


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_the_provider_clients_refusals_are_unchanged(
    answering: tuple[_Answering, str], framing: str
) -> None:
    app, base = answering
    settings = Settings(openai_base_url=base, generation_timeout=10.0, max_result_bytes=MB)
    raw, _ = _answer([("b64", "png", 5 * MB, "")], spaced=False)

    def answer(status: int, body: bytes) -> None:
        app.status, app.body = status, body
        app.headers = [(b"content-type", b"application/json")]
        if framing == "length":
            app.headers.append((b"content-length", str(len(body)).encode()))

    async with provider_client(settings) as client:
        provider = OpenAICompatible(settings, client)
        # Given an answer past the limit on what the gateway reads (4 MiB at least)
        answer(200, raw)
        with pytest.raises(ProviderError) as large:
            await provider.start(job())
        # an answer cut short (not JSON), one with no image, and an error with a long message
        answer(200, _answer([("b64", "png", 300_000, "")], spaced=False)[0][:-3])
        with pytest.raises(ProviderError) as cut:
            await provider.start(job())
        answer(200, b'{"data": []}')
        with pytest.raises(ProviderError) as empty:
            await provider.start(job())
        answer(500, json.dumps({"error": {"message": "x" * 100_000 + " out of memory"}}).encode())
        with pytest.raises(ProviderError) as failed:
            await provider.start(job())
    # Then each is refused as ever: the limit named, no image, the provider's own words
    assert large.value.code == "provider_answer_too_large"
    assert large.value.message.startswith(f"{provider.title} answered more than 4 MiB")
    assert (cut.value.code, empty.value.code) == ("no_image", "no_image")
    assert failed.value.code == "provider_unavailable"
    assert failed.value.message.startswith(f"{provider.title}: xxxx")
