"""The OpenAI request models the handlers get (`imagegw.frontends.schemas`): every content-part
form the chat clients send is read as a typed part, and a body that does not fit is a 400 in
the OpenAI error shape naming where, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from imagegw.errors import InvalidRequestError, render
from imagegw.frontends.schemas import (
    ChatRequest,
    ImagePart,
    ImagesEditRequest,
    ImagesRequest,
    OtherPart,
    TextPart,
    read,
)

PNG_URI = "data:image/png;base64,iVBORw0KGgo="
PHOTO = "https://example.com/photo.png"


def chat(*content: Any) -> dict[str, Any]:
    return {
        "model": "Qwen/Qwen-Image-Edit",
        "messages": [{"role": "user", "content": list(content)}],
    }


def refused(model: type[Any], body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(InvalidRequestError) as caught:
        read(model, body)
    status, answer, _ = render(caught.value)
    assert status == 400
    error: dict[str, Any] = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("part", "ref"),
    [
        ({"type": "image_url", "image_url": {"url": PHOTO, "detail": "high"}}, PHOTO),  # OpenAI
        ({"type": "image_url", "image_url": PHOTO}, PHOTO),  # LobeChat's plain string
        ({"type": "image", "image": PNG_URI}, PNG_URI),  # Cherry Studio
        ({"type": "input_image", "image_url": PHOTO}, PHOTO),  # the Responses API's form
        ({"type": "image", "source": {"url": PHOTO}}, PHOTO),
        (
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"},
            },
            "data:image/jpeg;base64,/9j/",
        ),
        ({"type": "image_url", "image_url": {"data": PNG_URI}}, PNG_URI),
    ],
)
def test_every_image_part_form_is_a_typed_image_part(part: dict[str, Any], ref: str) -> None:
    request = read(ChatRequest, chat({"type": "text", "text": "make it blue"}, part))
    text, image = request.messages[0].parts
    assert isinstance(text, TextPart) and text.text == "make it blue"
    assert isinstance(image, ImagePart) and image.ref == ref


def test_string_content_and_string_parts_are_text_parts() -> None:
    request = read(ChatRequest, chat("a cat", {"type": "input_text", "text": "on a sofa"}))
    assert [type(p) for p in request.messages[0].parts] == [TextPart, TextPart]
    body = {"model": "m", "messages": [{"role": "user", "content": "a dog"}]}
    (part,) = read(ChatRequest, body).messages[0].parts
    assert isinstance(part, TextPart) and part.text == "a dog"


def test_parts_of_other_types_are_kept_for_chat_models() -> None:
    # Open WebUI and others send files, audio and tool parts to chat models, relayed as sent
    request = read(ChatRequest, chat({"type": "file", "file": {"file_id": "f1"}}, {"x": 1}))
    assert all(isinstance(p, OtherPart) for p in request.messages[0].parts)


def test_the_body_s_other_fields_are_the_options() -> None:
    request = read(ChatRequest, {**chat("a cat"), "steps": 30, "n": 2})
    assert request.fields == {"steps": 30, "n": 2}


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ({"text": "a cat"}, "messages[0].content"),
        ([7], "messages[0].content"),
        ([{"type": "text", "text": 5}], "messages[0].content[0]"),
        (["ok", {"type": "image_url", "image_url": 123}], "messages[0].content[1]"),
        (["ok", {"type": "image", "source": {"url": ["x"]}}], "messages[0].content[1]"),
    ],
)
def test_a_part_that_does_not_fit_is_a_400_naming_it(content: Any, param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    error = refused(ChatRequest, body)
    assert error["param"] == param
    assert error["message"].startswith(param)


def test_the_request_s_own_fields_are_named_when_wrong() -> None:
    assert refused(ChatRequest, {"model": "m", "messages": []})["param"] == "messages"
    assert refused(ChatRequest, {"messages": [{"role": "user"}]})["param"] == "model"


def test_images_requests_are_typed_with_the_endpoint_s_words() -> None:
    request = read(ImagesRequest, {"prompt": " a cat ", "size": "auto", "seed": "7"})
    assert (request.prompt, request.model, request.response_format) == ("a cat", None, "url")
    assert request.options == {"seed": "7"}
    generation = refused(ImagesRequest, {"prompt": " "})
    edit = refused(ImagesEditRequest, {"prompt": " "})
    assert generation["param"] == edit["param"] == "prompt"
    assert "the picture to make" in generation["message"]
    assert "the change to make" in edit["message"]
    error = refused(ImagesRequest, {"prompt": "a cat", "response_format": "jpeg"})
    assert error["code"] == "invalid_response_format"
