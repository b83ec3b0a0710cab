"""parse_messages: the prompt and input images a chat conversation asks an image model for
(the messages read as the chat route reads them: typed, `schemas.ChatRequest`)."""

from __future__ import annotations

from typing import Any

import pytest

from imagegw.errors import InvalidRequestError
from imagegw.frontends import messages
from imagegw.frontends.messages import ParsedChat
from imagegw.frontends.schemas import ChatRequest, read

PNG_URI = "data:image/png;base64,iVBORw0KGgo="
JPEG_URI = "data:image/jpeg;base64,/9j/4AAQ"
PHOTO = "https://example.com/photo.png"
GENERATED_1 = "https://cdn.example.com/out/first.png"
GENERATED_2 = "https://cdn.example.com/out/second.png"


def parse_messages(conversation: list[dict[str, Any]], *, edit: bool) -> ParsedChat:
    """The chat route's path: the body read as a typed request, then its messages parsed."""
    chat = read(ChatRequest, {"model": "Qwen/Qwen-Image", "messages": conversation})
    return messages.parse_messages(chat.messages, edit=edit)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


# ----------------------------------------------------------------------------- prompt


def test_string_content_is_the_prompt() -> None:
    parsed = parse_messages([user("A golden cat")], edit=False)

    assert parsed.prompt == "A golden cat"
    assert parsed.images == ()
    assert parsed.from_history is False


def test_text_parts_are_joined_with_newlines() -> None:
    parsed = parse_messages([user([text("A golden cat"), text("on a red sofa")])], edit=False)

    assert parsed.prompt == "A golden cat\non a red sofa"


def test_the_prompt_is_the_last_user_message() -> None:
    messages = [user("first idea"), assistant("![image 1](https://x/1.png)"), user("second idea")]

    assert parse_messages(messages, edit=False).prompt == "second idea"


def test_system_messages_are_ignored() -> None:
    messages = [{"role": "system", "content": "You are a helpful assistant."}, user("A cat")]

    parsed = parse_messages(messages, edit=False)

    assert parsed.prompt == "A cat"


def test_system_message_is_not_taken_as_the_prompt() -> None:
    # Given a conversation whose only text is a system prompt
    with pytest.raises(InvalidRequestError) as caught:
        parse_messages([{"role": "system", "content": "Draw things."}], edit=False)

    # Then it has no user message
    assert caught.value.status == 400
    assert caught.value.param == "messages"


def test_no_user_message_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_messages([assistant("hello")], edit=False)

    assert caught.value.status == 400
    assert caught.value.param == "messages"
    assert "no user message" in caught.value.message


@pytest.mark.parametrize("content", ["", "   ", None, [], [text("  ")]])
def test_empty_prompt_is_a_400(content: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_messages([user(content)], edit=False)

    assert caught.value.status == 400
    assert caught.value.param == "messages"
    assert "no text" in caught.value.message


def test_image_without_text_is_a_400() -> None:
    content = [{"type": "image_url", "image_url": {"url": PHOTO}}]

    with pytest.raises(InvalidRequestError) as caught:
        parse_messages([user(content)], edit=True)

    assert caught.value.status == 400
    assert "no text" in caught.value.message


def test_empty_assistant_turns_are_fine() -> None:
    # Cherry Studio sends assistant turns as "" between user turns
    messages = [user("a cat"), assistant(""), user("a dog"), assistant(""), user("a bird")]

    parsed = parse_messages(messages, edit=True)

    assert parsed.prompt == "a bird"
    assert parsed.images == ()


# ----------------------------------------------------------------------------- image forms


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": PNG_URI}},
        {"type": "image_url", "image_url": PNG_URI},
        {"type": "image", "image": PNG_URI},
        {"type": "image", "image_url": {"url": PNG_URI}},
    ],
    ids=["image_url-object", "image_url-string", "cherry-image", "image-with-image_url"],
)
def test_image_part_forms(part: dict[str, Any]) -> None:
    parsed = parse_messages([user([text("make it blue"), part])], edit=True)

    assert parsed.prompt == "make it blue"
    assert parsed.images == (PNG_URI,)
    assert parsed.from_history is False


def test_several_images_keep_their_order() -> None:
    content = [
        {"type": "image_url", "image_url": {"url": PHOTO}},
        text("merge these"),
        {"type": "image", "image": JPEG_URI},
    ]

    parsed = parse_messages([user(content)], edit=True)

    assert parsed.images == (PHOTO, JPEG_URI)


def test_generate_model_still_reports_images_of_the_last_message() -> None:
    # the provider then refuses them for a text-to-image model; the parser keeps them
    content = [text("a cat"), {"type": "image_url", "image_url": {"url": PHOTO}}]

    assert parse_messages([user(content)], edit=False).images == (PHOTO,)


@pytest.mark.parametrize(
    "ref",
    ["ftp://example.com/cat.png", "file:///etc/passwd", "/etc/passwd", "cat.png", "javascript:1"],
)
def test_invalid_image_refs_are_a_400(ref: str) -> None:
    content = [text("edit"), {"type": "image_url", "image_url": {"url": ref}}]

    with pytest.raises(InvalidRequestError) as caught:
        parse_messages([user(content)], edit=True)

    assert caught.value.status == 400
    assert caught.value.code == "invalid_image"
    assert caught.value.param == "messages[0].content"


def test_image_part_without_url_is_a_400() -> None:
    content = [text("edit"), {"type": "image_url", "image_url": {}}]

    with pytest.raises(InvalidRequestError) as caught:
        parse_messages([user(content)], edit=True)

    assert caught.value.status == 400
    assert caught.value.param == "messages[0].content"


def test_content_of_the_wrong_type_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_messages([user({"text": "a cat"})], edit=False)

    assert caught.value.status == 400
    assert caught.value.param == "messages[0].content"


# ----------------------------------------------------------------------------- iterative editing


def test_edit_picks_an_image_from_an_earlier_user_message() -> None:
    messages = [
        user([text("make it blue"), {"type": "image_url", "image_url": {"url": PHOTO}}]),
        assistant(""),
        user("now make it night"),
    ]

    parsed = parse_messages(messages, edit=True)

    assert parsed.prompt == "now make it night"
    assert parsed.images == (PHOTO,)
    assert parsed.from_history is True


def test_edit_picks_the_image_the_gateway_returned() -> None:
    messages = [
        user([text("make it blue"), {"type": "image_url", "image_url": {"url": PNG_URI}}]),
        assistant(f"![image 1]({GENERATED_1})"),
        user("now make it night"),
    ]

    parsed = parse_messages(messages, edit=True)

    assert parsed.images == (GENERATED_1,)
    assert parsed.from_history is True


def test_edit_picks_the_latest_image_of_the_latest_turn() -> None:
    messages = [
        user([text("a cat"), {"type": "image_url", "image_url": {"url": PHOTO}}]),
        assistant(f"![image 1]({GENERATED_1})"),
        user("brighter"),
        assistant(f"Here you go:\n![image 1]({GENERATED_1})\n![image 2]({GENERATED_2})"),
        user("now make it night"),
    ]

    parsed = parse_messages(messages, edit=True)

    assert parsed.images == (GENERATED_2,)


def test_edit_prefers_an_attached_image_over_history() -> None:
    messages = [
        assistant(f"![image 1]({GENERATED_1})"),
        user([text("use this one"), {"type": "image_url", "image_url": {"url": PHOTO}}]),
    ]

    parsed = parse_messages(messages, edit=True)

    assert parsed.images == (PHOTO,)
    assert parsed.from_history is False


def test_edit_reads_assistant_content_given_as_parts() -> None:
    messages = [
        assistant([text(f"![image 1]({GENERATED_1})")]),
        user("now make it night"),
    ]

    assert parse_messages(messages, edit=True).images == (GENERATED_1,)


def test_edit_ignores_markdown_links_that_are_not_urls() -> None:
    messages = [
        assistant(f"![image 1]({GENERATED_1})"),
        assistant("![diagram](./local/picture.png)"),
        user("now make it night"),
    ]

    assert parse_messages(messages, edit=True).images == (GENERATED_1,)


def test_edit_without_any_image_in_the_conversation_has_none() -> None:
    parsed = parse_messages([user("a cat"), assistant("no image here"), user("again")], edit=True)

    assert parsed.images == ()
    assert parsed.from_history is False


def test_generate_model_does_not_pick_history() -> None:
    messages = [
        user([text("a cat"), {"type": "image_url", "image_url": {"url": PHOTO}}]),
        assistant(f"![image 1]({GENERATED_1})"),
        user("a dog"),
    ]

    parsed = parse_messages(messages, edit=False)

    assert parsed.prompt == "a dog"
    assert parsed.images == ()
    assert parsed.from_history is False


def test_user_markdown_is_not_taken_as_an_image() -> None:
    # only the gateway's own answers (assistant turns) are searched for markdown images
    messages = [user(f"look at ![x]({PHOTO})"), user("now make it night")]

    assert parse_messages(messages, edit=True).images == ()
