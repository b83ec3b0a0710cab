"""OpenAI request and response shapes the gateway reads and writes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imagegw.errors import GatewayError
from imagegw.infra.media import is_data_uri


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[Any] | None = None


class ChatRequest(BaseModel):
    """A chat completion request. Extra fields are kept: they carry generation options."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    @property
    def fields(self) -> dict[str, Any]:
        """The extra fields of the body (custom parameters), `n` included."""
        return dict(self.model_extra or {})


EMPTY_USAGE: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


class Completion:
    """Ids and shapes of one chat completion, streamed or not."""

    def __init__(
        self, model: str, *, completion_id: str | None = None, created: int | None = None
    ) -> None:
        self.id = completion_id or f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time()) if created is None else created
        self.model = model

    def message(self, content: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": EMPTY_USAGE,
        }

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: Literal["stop"] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": EMPTY_USAGE,
        }


#: the Images API's answer forms: links, or the images' bytes in base64
ResponseFormat = Literal["url", "b64_json"]


def images_response(
    images: Sequence[str], response_format: ResponseFormat, created: int | None = None
) -> dict[str, Any]:
    """An Images API answer with only `url` items (`images` are links), or only `b64_json`
    items (`images` are data URIs; their base64 payload is the item). Never both forms."""
    if response_format == "b64_json":
        if not all(is_data_uri(ref) for ref in images):
            raise GatewayError(
                "A b64_json answer got a link.", code="internal_error", retryable=False
            )
        data = [{"b64_json": ref.partition(",")[2]} for ref in images]
    else:
        data = [{"url": ref} for ref in images]
    return {"created": int(time.time()) if created is None else created, "data": data}


def model_list(provider: str, models: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(provider, m) for m in models]}


def model_card(provider: str, model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1700000000, "owned_by": provider}
