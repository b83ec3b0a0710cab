"""Chat messages -> a prompt and input image references (with iterative editing).

Accepted content forms: a string; a list of parts with `{"type":"text"}`,
`{"type":"image_url","image_url":{"url":...}}` (or the plain-string form `"image_url": "..."`),
and Cherry Studio's `{"type":"image", ...}` parts. Assistant messages are searched for markdown
images (`![alt](url)`), which is how the gateway returns its results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagegw.errors import InvalidRequestError
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


def _image_ref(part: dict[str, Any]) -> str | None:
    """The image reference of one content part, in any of the forms clients send."""
    for key in ("image_url", "image", "url"):
        value = part.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            url = value.get("url") or value.get("data")
            if isinstance(url, str) and url:
                return url
    source = part.get("source")  # the Anthropic-like form some clients use
    if isinstance(source, dict):
        if isinstance(source.get("url"), str):
            return str(source["url"])
        if isinstance(source.get("data"), str):
            media = source.get("media_type") or "image/png"
            return f"data:{media};base64,{source['data']}"
    return None


def _parts(content: Any, index: int) -> list[dict[str, Any]]:
    """Content as a list of parts; a string is one text part."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
            elif isinstance(part, dict):
                parts.append(part)
            else:
                raise InvalidRequestError(
                    f"messages[{index}].content has a part that is neither text nor an object.",
                    param=f"messages[{index}].content",
                )
        return parts
    raise InvalidRequestError(
        f"messages[{index}].content must be a string or a list of parts.",
        param=f"messages[{index}].content",
    )


def _check_ref(ref: str, index: int) -> str:
    ref = ref.strip()
    if not (is_data_uri(ref) or is_http_url(ref)):
        raise InvalidRequestError(
            f"messages[{index}] has an image that is neither a data URI nor an http(s) URL.",
            param=f"messages[{index}].content",
            code="invalid_image",
        )
    return ref


def message_images(message: dict[str, Any], index: int) -> list[str]:
    """Every image in a message, in order: image parts, then markdown images in its text."""
    found: list[str] = []
    for part in _parts(message.get("content"), index):
        kind = part.get("type")
        if kind in ("image_url", "image", "input_image"):
            ref = _image_ref(part)
            if ref is None:
                raise InvalidRequestError(
                    f"messages[{index}] has an image part without a URL.",
                    param=f"messages[{index}].content",
                )
            found.append(_check_ref(ref, index))
        elif kind == "text" and message.get("role") == "assistant":
            text = part.get("text")
            if isinstance(text, str):
                found.extend(m.group(1) for m in _MARKDOWN_IMAGE.finditer(text))
    return found


def _text(message: dict[str, Any], index: int) -> str:
    texts = []
    for part in _parts(message.get("content"), index):
        if part.get("type") in ("text", "input_text"):
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                texts.append(text.strip())
    return "\n".join(texts)


def parse_messages(messages: Sequence[dict[str, Any]], *, edit: bool) -> ParsedChat:
    """Prompt and images for an image model.

    The prompt is the last user message's text. Its images are the input images. For an edit
    model whose last user message has no image, the most recent image earlier in the
    conversation is used, including one the gateway returned in an assistant message.
    """
    last = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None
    )
    if last is None:
        raise InvalidRequestError("The conversation has no user message.", param="messages")
    prompt = _text(messages[last], last)
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
