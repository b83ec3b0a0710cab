"""The Images API's pure parts: reading generation bodies and edit forms, the answer's shape,
how results are delivered, the default model, and the multipart reader's limits."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from fakes.png import GIF_1x1, JPEG_1x1, make_png, noisy_png
from imagegw.errors import GatewayError, InvalidRequestError, PayloadTooLargeError
from imagegw.frontends.images_api import (
    ImagesCall,
    default_model,
    edit_call,
    generation_call,
    link_mode,
    provider_options,
)
from imagegw.frontends.schemas import ImagesAnswer, ResponseFormat, images_response
from imagegw.frontends.spans import PiecesResponse
from imagegw.frontends.web import read_form
from imagegw.infra.config import Settings
from imagegw.infra.media import URI_STEP, DataUri, ImageBytes, check_image, decode_data_uri
from imagegw.infra.spans import Around, encoded
from imagegw.providers.base import ModelKind
from imagegw.providers.modelscope import ModelScope

PNG = make_png(4, 4)
#: characters of base64 written at a time
STEP = URI_STEP // 3 * 4
#: a noisy PNG whose base64 is a few steps long
BIG = noisy_png(900, 700)


def image(data: bytes) -> DataUri:
    """`data` as the gateway delivers a data URI: the checked image's bytes."""
    return DataUri.of(check_image(data, max_bytes=10**8))


def provider_image(data: bytes) -> DataUri:
    """`data` as a provider's own (canonical) base64 answer is delivered: its text."""
    text = f"data:image/png;base64,{base64.b64encode(data).decode()}"
    made = DataUri.of(decode_data_uri(text, max_bytes=10**8))
    assert made.source is text
    return made


LIMIT = 1_000_000
OFFLINE = ModelScope(Settings(), None)  # type: ignore[arg-type]


def edit(items: Sequence[tuple[str, str | bytes]], limit: int = LIMIT) -> ImagesCall:
    return edit_call([("prompt", "make it night"), *items], max_image_bytes=limit)


def refused_edit(items: Sequence[tuple[str, str | bytes]]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        edit(items)
    return caught.value


def refused_generation(body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        generation_call(body)
    return caught.value


# ----------------------------------------------------------------------------- generations


def test_generation_defaults_to_url_and_keeps_options() -> None:
    call = generation_call({"prompt": " a cat ", "n": 2, "steps": "30", "quality": "hd"})
    assert call.prompt == "a cat"
    assert call.model is None
    assert call.response_format == "url"
    assert call.fields == {"n": 2, "steps": "30", "quality": "hd"}
    assert not call.edit


def test_generation_front_end_fields_are_not_options() -> None:
    call = generation_call(
        {"prompt": "a cat", "model": "m", "response_format": "b64_json", "stream": False}
    )
    assert call.fields == {}
    assert (call.model, call.response_format) == ("m", "b64_json")


@pytest.mark.parametrize("body", [{}, {"prompt": ""}, {"prompt": "   "}, {"prompt": None}])
def test_generation_needs_a_prompt(body: dict[str, Any]) -> None:
    error = refused_generation(body)
    assert error.param == "prompt"
    assert "required" in error.message


def test_generation_prompt_must_be_text() -> None:
    assert refused_generation({"prompt": ["a", "cat"]}).param == "prompt"


@pytest.mark.parametrize("value", ["base64", "URL", "png", 1])
def test_bad_response_format_is_named(value: Any) -> None:
    error = refused_generation({"prompt": "a cat", "response_format": value})
    assert error.param == "response_format"
    assert repr(value) in error.message and "'b64_json'" in error.message


@pytest.mark.parametrize(
    ("value", "streamed"),
    [(True, True), ("true", True), ("1", True), (False, False), ("false", False), (None, False)],
)
def test_stream_is_read_as_json_or_form_text(value: Any, streamed: bool) -> None:
    assert generation_call({"prompt": "a cat", "stream": value}).stream is streamed


@pytest.mark.parametrize("value", ["maybe", 2, [True]])
def test_stream_that_is_no_boolean_is_refused(value: Any) -> None:
    assert refused_generation({"prompt": "a cat", "stream": value}).param == "stream"


@pytest.mark.parametrize("value", [-1, 4, "many", 1.5, True])
def test_partial_images_outside_0_to_3_is_refused(value: Any) -> None:
    assert refused_generation({"prompt": "a cat", "partial_images": value}).param == (
        "partial_images"
    )


def test_stream_fields_are_not_provider_options() -> None:
    call = generation_call({"prompt": "a cat", "stream": True, "partial_images": "2"})
    assert (call.partial_images, call.fields) == (2, {})


def test_size_auto_means_the_providers_default() -> None:
    assert "size" not in generation_call({"prompt": "a cat", "size": "auto"}).fields
    assert generation_call({"prompt": "a cat", "size": "64x64"}).fields == {"size": "64x64"}


def test_blank_model_is_no_model_and_other_types_are_refused() -> None:
    assert generation_call({"prompt": "a cat", "model": " "}).model is None
    assert refused_generation({"prompt": "a cat", "model": 3}).param == "model"
    assert refused_generation({"prompt": "a cat", "model": "m" * 300}).param == "model"


# ----------------------------------------------------------------------------- edit forms


@pytest.mark.parametrize(
    "names",
    [["image"], ["image", "image"], ["image[]", "image[]"], ["image[0]", "image[1]"]],
)
def test_edit_images_in_order_under_every_field_name(names: list[str]) -> None:
    files = [make_png(i + 1, 1) for i in range(len(names))]
    call = edit(list(zip(names, files, strict=True)))
    assert call.edit
    assert [image.data for image in call.images if isinstance(image, ImageBytes)] == files


def test_edit_image_may_be_a_url_or_a_data_uri() -> None:
    uri = "data:image/gif;base64," + base64.b64encode(GIF_1x1).decode()
    call = edit([("image", " https://example.org/a.png "), ("image[]", uri)])
    assert call.images[0] == "https://example.org/a.png"
    assert call.images[1] == ImageBytes(GIF_1x1, "image/gif")


def test_edit_form_values_become_options() -> None:
    call = edit(
        [
            ("image", PNG),
            ("n", "2"),
            ("size", ""),  # empty form fields count as absent
            ("loras[repo/a]", "0.6"),
            ("loras[repo/b]", "0.4"),
            ("response_format", "b64_json"),
        ]
    )
    assert call.fields == {"n": "2", "loras": {"repo/a": "0.6", "repo/b": "0.4"}}
    assert call.response_format == "b64_json"


def test_edit_loras_may_be_json_text() -> None:
    call = edit([("image", PNG), ("loras", '{"repo/a": 0.6, "repo/b": 0.4}')])
    assert call.fields["loras"] == {"repo/a": 0.6, "repo/b": 0.4}
    assert edit([("image", PNG), ("loras", "repo/a")]).fields["loras"] == "repo/a"
    assert refused_edit([("image", PNG), ("loras", "{oops")]).param == "loras"


def test_edit_needs_an_image() -> None:
    error = refused_edit([("image", "  ")])
    assert error.param == "image" and "'image' is required" in error.message


def test_edit_checks_each_image_by_its_bytes() -> None:
    error = refused_edit([("image", PNG), ("image", b"GIF is what I am not")])
    assert error.param == "image" and "image 2" in error.message
    error = refused_edit([("image", "ftp://example.org/a.png")])
    assert error.param == "image" and error.code == "invalid_image"


def test_edit_image_over_the_limit_is_413() -> None:
    with pytest.raises(PayloadTooLargeError):
        edit([("image", PNG)], limit=len(PNG) - 1)


def test_edit_refuses_files_in_text_fields_and_two_masks() -> None:
    assert refused_edit([("image", PNG), ("prompt", JPEG_1x1)]).param == "prompt"
    assert refused_edit([("image", PNG), ("mask", PNG), ("mask", PNG)]).param == "mask"


def test_edit_keeps_the_mask_unchecked() -> None:
    # whether a mask is refused depends on the provider, which decides before any check
    assert edit([("image", PNG), ("mask", b"not an image")]).mask == b"not an image"


# ----------------------------------------------------------------------------- the answer


def test_url_answer_has_only_urls() -> None:
    body = images_response(["https://a/1.png", "https://a/2.png"], "url", created=5)
    assert body == {"created": 5, "data": [{"url": "https://a/1.png"}, {"url": "https://a/2.png"}]}


@pytest.mark.parametrize("made", [image, provider_image])
def test_b64_answer_has_only_the_payloads(made: Any) -> None:
    payload = base64.b64encode(PNG).decode()
    body = images_response([made(PNG)], "b64_json")
    assert body["data"] == [{"b64_json": payload}]
    assert isinstance(body["created"], int)


def test_an_inline_url_answer_has_the_data_uris() -> None:
    body = images_response([image(PNG), "https://a/2.png"], "url", created=5)
    assert body["data"] == [
        {"url": f"data:image/png;base64,{base64.b64encode(PNG).decode()}"},
        {"url": "https://a/2.png"},
    ]


def test_b64_answer_never_carries_a_link() -> None:
    with pytest.raises(GatewayError):
        images_response(["https://a/1.png"], "b64_json")
    with pytest.raises(GatewayError):
        ImagesAnswer(("https://a/1.png",), "b64_json")


def sent(response: PiecesResponse) -> tuple[list[Message], bytes]:
    """The ASGI messages `response` sends, and its body."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)

    asyncio.run(response({"type": "http"}, receive, send))
    return messages, b"".join(m.get("body", b"") for m in messages[1:])


@pytest.mark.parametrize(
    ("images", "response_format"),
    [
        ((), "b64_json"),
        ((image(PNG),), "b64_json"),
        ((provider_image(PNG),), "b64_json"),
        ((image(BIG), image(GIF_1x1)), "b64_json"),  # a payload of several steps
        ((provider_image(BIG),), "b64_json"),
        (("https://a/1.png", "https://a/ü.png"), "url"),
        (("https://a/1.png", image(BIG)), "url"),  # IMAGE_LINKS=inline
    ],
)
def test_an_answer_is_sent_as_the_json_of_its_images(
    images: tuple[str | DataUri, ...], response_format: ResponseFormat
) -> None:
    # Given an answer, When it is sent
    answer = ImagesAnswer(images, response_format, created=7)
    messages, body = sent(PiecesResponse(answer.pieces(), headers={"x-a": "1"}))

    # Then its body is the JSON of its images, byte for byte, and its length says so
    expected = json.dumps(
        images_response(images, response_format, created=7),
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    assert body == expected
    headers = dict(messages[0]["headers"])
    assert headers[b"content-length"] == str(len(expected)).encode()
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-a"] == b"1"
    # the last piece ends the answer (links alone: one message, as JSONResponse sends it)
    assert [m["more_body"] for m in messages[1:]] == [True] * (len(messages) - 2) + [False]
    assert all(m["body"] for m in messages[1:])
    if all(isinstance(i, str) for i in images):  # links alone
        assert len(messages) == 2
    # a payload several steps long comes a step at a time
    assert max(len(m["body"]) for m in messages[1:]) <= STEP + 64
    if any(isinstance(i, DataUri) and i.payload_size() > 2 * STEP for i in images):
        assert len(messages) > 4


@pytest.mark.parametrize(
    ("response_format", "configured", "mode"),
    [
        ("b64_json", "stored", "data"),
        ("b64_json", "provider", "data"),
        ("b64_json", "inline", "data"),
        ("url", "stored", "stored"),
        ("url", "provider", "provider"),
        ("url", "inline", "stored"),  # a data URI is no URL
    ],
)
def test_link_mode(response_format: str, configured: Any, mode: str) -> None:
    call = generation_call({"prompt": "a cat", "response_format": response_format})
    assert link_mode(call, configured) == mode


# ----------------------------------------------------------------------------- the provider


def test_default_model_is_the_first_listed_of_its_kind() -> None:
    assert default_model(OFFLINE, ModelKind.GENERATE) == "Qwen/Qwen-Image"
    assert default_model(OFFLINE, ModelKind.EDIT) == "Qwen/Qwen-Image-Edit"
    with pytest.raises(InvalidRequestError) as caught:
        default_model(OFFLINE, ModelKind.CHAT)
    assert caught.value.param == "model"


def test_image_count_refusals_speak_of_this_api() -> None:
    on_generations = generation_call({"prompt": "a cat"})
    with pytest.raises(InvalidRequestError) as caught:
        provider_options(OFFLINE, "Qwen/Qwen-Image-Edit", ModelKind.EDIT, on_generations)
    assert caught.value.param == "model" and "/v1/images/edits" in caught.value.message
    on_edits = edit([("image", PNG)])
    with pytest.raises(InvalidRequestError) as caught:
        provider_options(OFFLINE, "Qwen/Qwen-Image", ModelKind.GENERATE, on_edits)
    assert caught.value.param == "model" and "edit model" in caught.value.message


def test_option_errors_name_the_field() -> None:
    call = generation_call({"prompt": "a cat", "steps": 500})
    with pytest.raises(InvalidRequestError) as caught:
        provider_options(OFFLINE, "Qwen/Qwen-Image", ModelKind.GENERATE, call)
    assert caught.value.param == "steps"


# ----------------------------------------------------------------------------- multipart reader


def form_request(content_type: str, chunks: list[bytes], length: int | None = None) -> Request:
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    pending = [*chunks]

    async def receive() -> Message:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    scope = {"type": "http", "method": "POST", "path": "/v1/images/edits", "headers": headers}
    return Request(scope, receive)


BOUNDARY = "xyz"


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.anyio
async def test_read_form_gives_text_and_file_bytes_in_order() -> None:
    body = multipart(("prompt", b"night", None), ("image", PNG, "a.png"), ("n", b"2", None))
    request = form_request(f"multipart/form-data; boundary={BOUNDARY}", [body])
    assert await read_form(request, LIMIT) == [("prompt", "night"), ("image", PNG), ("n", "2")]


@pytest.mark.anyio
async def test_read_form_stops_a_streamed_body_over_the_limit() -> None:
    # no content-length (chunked): the limit is enforced while the body arrives
    body = multipart(("image", PNG * 50, "a.png"))
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    request = form_request(f"multipart/form-data; boundary={BOUNDARY}", chunks)
    with pytest.raises(PayloadTooLargeError):
        await read_form(request, len(body) - 1)


@pytest.mark.anyio
async def test_read_form_refuses_a_declared_length_over_the_limit() -> None:
    request = form_request(f"multipart/form-data; boundary={BOUNDARY}", [b""], length=10_000)
    with pytest.raises(PayloadTooLargeError):
        await read_form(request, 9_999)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/form-data", b"--x\r\n"),  # no boundary
        (f"multipart/form-data; boundary={BOUNDARY}", b"--other\r\ngarbage"),
    ],
)
async def test_read_form_refuses_what_is_no_multipart_form(content_type: str, body: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        await read_form(form_request(content_type, [body]), LIMIT)


def test_a_value_is_written_around_its_payloads_whatever_else_it_holds() -> None:
    # Given a job-like body whose other fields hold text a client chose: another answer's
    # mark too (a mark is new for each answer: no client can send the one of its answer)
    around = Around()
    assert around.mark != Around().mark
    uri = image(PNG)
    body = {
        "id": "job-1",
        "prompt": f'{Around().mark}0\ue000 "quoted" \\ é',
        "data": images_response([uri, uri], "b64_json", 3, around)["data"],
        "error": None,
    }

    # When it is written around its payloads, Then it is the JSON of the body with the payloads
    pieces = around.pieces(body)
    text = b"".join(encoded(pieces)).decode()
    assert json.loads(text) == {**body, "data": images_response([uri, uri], "b64_json", 3)["data"]}
    assert [piece for piece in pieces if isinstance(piece, DataUri)] == [uri, uri]
