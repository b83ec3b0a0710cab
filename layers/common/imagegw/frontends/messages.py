"""Chat messages -> a prompt and input image references (with iterative editing).

The messages are typed (`schemas.ChatMessage`): content is a string or a list of parts, text
parts and image parts in every form clients send (`schemas.ImagePart`: OpenAI's `image_url`,
Cherry Studio's `image`, `input_image`, a `source` object). Assistant messages are searched for
markdown images (`![alt](url)`), which is how the gateway returns its results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from imagegw.errors import InvalidRequestError
from imagegw.frontends.schemas import ChatMessage, ImagePart, TextPart
from imagegw.infra.media import is_data_uri, is_http_url

_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclass(frozen=True)
class ParsedChat:
    """What a chat conversation asks of an image model."""

    prompt: str
    #: image references of the last user message: data URIs or http(s) URLs
    images: tuple[str, ...]
    #: True when `images` came from earlier in the conversation (iterative editing)
    from_history: bool = False


def _check_ref(ref: str, index: int) -> str:
    ref = ref.strip()
    if not (is_data_uri(ref) or is_http_url(ref)):
        raise InvalidRequestError(
            f"messages[{index}] has an image that is neither a data URI nor an http(s) URL.",
            param=f"messages[{index}].content",
            code="invalid_image",
        )
    return ref


def message_images(message: ChatMessage, index: int) -> list[str]:
    """Every image in a message, in order: image parts, then markdown images in its text."""
    found: list[str] = []
    for part in message.parts:
        if isinstance(part, ImagePart):
            ref = part.ref
            if ref is None:
                raise InvalidRequestError(
                    f"messages[{index}] has an image part without a URL.",
                    param=f"messages[{index}].content",
                )
            found.append(_check_ref(ref, index))
        elif isinstance(part, TextPart) and part.text and message.role == "assistant":
            found.extend(m.group(1) for m in _MARKDOWN_IMAGE.finditer(part.text))
    return found


def _text(message: ChatMessage) -> str:
    texts = [
        part.text.strip()
        for part in message.parts
        if isinstance(part, TextPart) and part.text and part.text.strip()
    ]
    return "\n".join(texts)


def parse_messages(messages: Sequence[ChatMessage], *, edit: bool) -> ParsedChat:
    """Prompt and images for an image model.

    The prompt is the last user message's text. Its images are the input images. For an edit
    model whose last user message has no image, the most recent image earlier in the
    conversation is used, including one the gateway returned in an assistant message.
    """
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)
    if last is None:
        raise InvalidRequestError("The conversation has no user message.", param="messages")
    prompt = _text(messages[last])
    if not prompt:
        raise InvalidRequestError(
            "The last user message has no text: it is the prompt.", param="messages"
        )
    images = message_images(messages[last], last)
    if images or not edit:
        return ParsedChat(prompt, tuple(images))
    for i in range(last - 1, -1, -1):
        earlier = [ref for ref in message_images(messages[i], i) if _usable(ref)]
        if earlier:
            return ParsedChat(prompt, (earlier[-1],), from_history=True)
    return ParsedChat(prompt, ())


def _usable(ref: str) -> bool:
    return is_data_uri(ref) or is_http_url(ref)
