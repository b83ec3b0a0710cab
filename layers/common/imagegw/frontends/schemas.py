"""OpenAI request and response shapes the gateway reads and writes, as pydantic models: the
handlers get typed objects. A request that does not fit is a 400 in the OpenAI error shape
(`read`, `request_error`), worded as the gateway words it (`refusal`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from imagegw.errors import GatewayError, InvalidRequestError
from imagegw.frontends.spans import shown
from imagegw.infra.media import DataUri
from imagegw.infra.spans import Around, Piece

#: a refusal raised inside a model: its `message` (where `{where}` is the field's place,
#: `messages[0].content`), `param` (None: that place) and `code`, as `request_error` reads them
_REFUSAL: Final = "gateway_refusal"


def refusal(message: str, *, param: str | None = None, code: str | None = None) -> Exception:
    """A request's field refused in the gateway's own words, from inside a model's validator
    (pydantic gathers it; `request_error` makes it the `InvalidRequestError` it describes)."""
    return PydanticCustomError(
        _REFUSAL, "{message}", {"message": message, "param": param, "code": code}
    )


def _place(loc: Sequence[int | str]) -> str:
    """Where a field sits, as messages name it: `messages[0].content`."""
    place = ""
    for part in loc:
        place += f"[{part}]" if isinstance(part, int) else (f".{part}" if place else str(part))
    return place


def _in_content(loc: Sequence[int | str]) -> tuple[int, int | None] | None:
    """(message, part) when `loc` is inside a chat message's content (part None: the content
    itself); None elsewhere."""
    if len(loc) < 3 or loc[0] != "messages" or not isinstance(loc[1], int) or loc[2] != "content":
        return None
    part = next((p for p in loc[3:] if isinstance(p, int)), None)
    return loc[1], part


def request_error(exc: ValidationError) -> InvalidRequestError:
    """A request model's first error as the 400 it means: a `refusal` as it was worded; any
    other error naming its field (inside a chat message's content: the part, not pydantic's
    union branches)."""
    errors = exc.errors()
    first = errors[0]
    loc = first["loc"]
    ctx = first.get("ctx") or {}
    if first["type"] == _REFUSAL:
        where = _place(loc) or None
        message = str(ctx["message"]).replace("{where}", where or "the request")
        return InvalidRequestError(message, param=ctx.get("param") or where, code=ctx.get("code"))
    content = _in_content(loc)
    if content is not None:
        # content is a string or a list of parts: a list's error is in one of its parts
        index, part = content
        if part is None:
            parts = [_in_content(e["loc"]) for e in errors]
            part = next((p[1] for p in parts if p and p[0] == index and p[1] is not None), None)
            first = next(
                (e for e, p in zip(errors, parts, strict=True) if p == (index, part)), first
            )
        where = f"messages[{index}].content" + ("" if part is None else f"[{part}]")
        return InvalidRequestError(f"{where} cannot be read: {first['msg']}.", param=where)
    param = ".".join(str(p) for p in loc) or None
    return InvalidRequestError(f"Invalid '{param}': {first['msg']}.", param=param)


M = TypeVar("M", bound=BaseModel)


def read(model: type[M], data: Any) -> M:
    """`data` (a request body, or its fields) as `model`; a 400 (`request_error`) otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise request_error(exc) from None


# ----------------------------------------------------------------------------- chat


class TextPart(BaseModel):
    """A text part: `{"type": "text", "text": ...}` (`input_text` as some clients name it)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    type: Literal["text", "input_text"]
    text: str | None = None


class ImageLink(BaseModel):
    """An image given as an object: `{"url": ...}` (OpenAI's `image_url`) or `{"data": ...}`."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    url: str | None = None
    data: str | None = None


class ImageSource(BaseModel):
    """The Anthropic-like `source` some clients send: a URL, or base64 data and its type."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    url: str | None = None
    data: str | None = None
    media_type: str | None = None


class ImagePart(BaseModel):
    """An image part in any of the forms clients send: OpenAI's
    `{"type": "image_url", "image_url": {"url": ...}}` (or the plain string form
    `"image_url": "..."`), Cherry Studio's `{"type": "image", "image": ...}`, the Responses
    API's `{"type": "input_image", "image_url": ...}`, or a `source` object."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    type: Literal["image_url", "image", "input_image"]
    image_url: str | ImageLink | None = None
    image: str | ImageLink | None = None
    url: str | ImageLink | None = None
    source: ImageSource | None = None

    @property
    def ref(self) -> str | None:
        """The image's reference (a URL or a data URI) as sent; None when it has none."""
        for value in (self.image_url, self.image, self.url):
            if isinstance(value, str) and value:
                return value
            if isinstance(value, ImageLink) and (value.url or value.data):
                return value.url or value.data
        if self.source is not None:
            if self.source.url is not None:
                return self.source.url
            if self.source.data is not None:
                media = self.source.media_type or "image/png"
                return f"data:{media};base64,{self.source.data}"
        return None


class OtherPart(BaseModel):
    """A part of another type (audio, a file, a tool's): kept for a chat model, which gets the
    body as sent; an image model reads none of it."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    type: Any = None


def _part_kind(part: Any) -> str:
    kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
    if kind in ("text", "input_text"):
        return "text"
    if kind in ("image_url", "image", "input_image"):
        return "image"
    return "other"


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImagePart, Tag("image")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_kind),
]


class ChatMessage(BaseModel):
    """One message: a role, and content as a string or a list of parts (a string part is a
    text part)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    role: str = Field(min_length=1)
    content: str | list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise refusal("{where} must be a string or a list of parts.")
        parts: list[Any] = []
        for part in value:
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
            elif isinstance(part, dict):
                parts.append(part)
            else:
                raise refusal("{where} has a part that is neither text nor an object.")
        return parts

    @property
    def parts(self) -> list[TextPart | ImagePart | OtherPart]:
        """The content as parts; a string is one text part."""
        if self.content is None:
            return []
        if isinstance(self.content, str):
            return [TextPart(type="text", text=self.content)]
        return list(self.content)


class ChatRequest(BaseModel):
    """A chat completion request. Extra fields are kept: they carry generation options."""

    model_config = ConfigDict(extra="allow", defer_build=True)

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


# ----------------------------------------------------------------------------- Images API

#: the Images API's answer forms: links, or the images' bytes in base64
ResponseFormat = Literal["url", "b64_json"]
RESPONSE_FORMATS: Final[tuple[ResponseFormat, ...]] = ("url", "b64_json")
MAX_MODEL_CHARS: Final = 256
#: form values that mean "yes" and "no" (multipart sends every value as text)
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off", ""})
#: OpenAI's `partial_images`: previews a streamed answer may carry before each image
MAX_PARTIAL_IMAGES: Final = 3


class ImagesRequest(BaseModel):
    """A `POST /v1/images/generations` body: the fields this front end reads itself; every
    other field is an option for the provider (`options`: the gateway's common names or the
    provider's own, numbers also as strings)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    #: what the prompt describes, in the words of a missing prompt's error
    describes: ClassVar[str] = "the picture to make"

    prompt: str = Field(default=None, validate_default=True)
    #: None: the provider's first listed model of the kind the endpoint makes
    model: str | None = None
    response_format: ResponseFormat = Field(default=None, validate_default=True)
    #: true: OpenAI's image event stream (`imagegw.frontends.image_stream`) instead of JSON
    stream: bool = False
    #: OpenAI's previews per image in a stream (0-3): passed to an upstream that streams them
    partial_images: int | None = None
    #: a durable job's webhook (`Prefer: respond-async`), checked where the job starts
    webhook_url: str | None = None
    #: the edit endpoint's files; a JSON body's are ignored
    image: Any = Field(default=None, exclude=True)
    mask: Any = Field(default=None, exclude=True)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise refusal(f"'prompt' is required: it describes {cls.describes}.", param="prompt")
        if not isinstance(value, str):
            raise refusal("'prompt' must be a string.", param="prompt")
        return value.strip()

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not (isinstance(value, str) and len(value) <= MAX_MODEL_CHARS):
            raise refusal(
                f"'model' must be a model id of at most {MAX_MODEL_CHARS} characters.",
                param="model",
            )
        return value.strip() or None

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, value: Any) -> ResponseFormat:
        if value is None:
            return "url"
        if value not in RESPONSE_FORMATS:
            raise refusal(
                f"'response_format' must be 'url' or 'b64_json'; got {value!r}.",
                param="response_format",
                code="invalid_response_format",
            )
        return value  # type: ignore[no-any-return]

    @field_validator("stream", mode="before")
    @classmethod
    def _stream(cls, value: Any) -> bool:
        """JSON's true/false/null, or a form's text ("true", "0", ...)."""
        if value is None or isinstance(value, bool):
            return bool(value)
        text = value.strip().lower() if isinstance(value, str) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise refusal("'stream' must be true or false.", param="stream")

    @field_validator("partial_images", mode="before")
    @classmethod
    def _partial_images(cls, value: Any) -> int | None:
        if value is None:
            return None
        text = str(value).strip() if isinstance(value, int | str) else ""
        if isinstance(value, bool) or not text.isdigit() or int(text) > MAX_PARTIAL_IMAGES:
            raise refusal(
                f"'partial_images' must be a whole number from 0 to {MAX_PARTIAL_IMAGES}.",
                param="partial_images",
            )
        return int(text)

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise refusal("'webhook_url' must be a string.", param="webhook_url")
        return value.strip() or None if value is not None else None

    @property
    def options(self) -> dict[str, Any]:
        """Every other field, for `provider.prepare` (`n` included); `size: auto` (OpenAI's
        "let the model choose") left out: the provider's default."""
        options = dict(self.model_extra or {})
        size = options.get("size")
        if isinstance(size, str) and size.strip().lower() == "auto":
            del options["size"]
        return options


class ImagesEditRequest(ImagesRequest):
    """A `POST /v1/images/edits` form's text fields, gathered (`images_api.edit_call`)."""

    describes: ClassVar[str] = "the change to make"


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


def _only_data_uris(images: Sequence[str | DataUri], response_format: ResponseFormat) -> None:
    if response_format == "b64_json" and not all(isinstance(ref, DataUri) for ref in images):
        raise GatewayError("A b64_json answer got a link.", code="internal_error", retryable=False)


def images_response(
    images: Sequence[str | DataUri],
    response_format: ResponseFormat,
    created: int | None = None,
    around: Around | None = None,
) -> dict[str, Any]:
    """An Images API answer with only `url` items (`images` are links, or data URIs with
    IMAGE_LINKS=inline), or only `b64_json` items (`images` are data URIs; their base64
    payload is the item). A data URI's payload is its mark with `around` (`Around.pieces`
    writes the answer around the payloads), else the whole text. Never both forms."""
    _only_data_uris(images, response_format)
    if response_format == "b64_json":
        data = [
            {"b64_json": around.payload(ref) if around else ref.payload_text()}
            for ref in images
            if isinstance(ref, DataUri)
        ]
    else:
        data = [{"url": shown(ref, around)} for ref in images]
    return {"created": int(time.time()) if created is None else created, "data": data}


@dataclass(frozen=True)
class ImagesAnswer:
    """A synchronous Images API answer (`images_response`'s), kept as the delivered images
    until it is sent: `pieces` writes its JSON around each image's payload, made from its
    bytes as it is sent (`imagegw.frontends.spans`), not a copy."""

    images: tuple[str | DataUri, ...]
    response_format: ResponseFormat
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        _only_data_uris(self.images, self.response_format)

    def pieces(self) -> list[Piece]:
        """The answer's JSON text: the bytes `json.dumps(images_response(...))` would make."""
        around = Around()
        return around.pieces(
            images_response(self.images, self.response_format, self.created, around)
        )
