"""OpenAI-compatible image servers (synchronous): a self-hosted one such as seed 003's Qwen-Image
server, or OpenAI itself.

Upstream docs: https://platform.openai.com/docs/api-reference/images
Protocol (see shared/docs/provider-wire.md): `POST /images/generations` (JSON) makes images from
text; `POST /images/edits` (multipart: one `image` file, or repeated `image[]`, and an optional
`mask`) edits. Both answer `{"created":..,"data":[{"url":..} or {"b64_json":..}]}`. Seed 003's
server answers `b64_json` only, ignores `model`/`n`/`size`/`response_format` and takes its own
names (`width`/`height`, `negative_prompt`, `num_inference_steps`, `true_cfg_scale`, `seed`).
OpenAI's own models (`gpt-image-*`, `dall-e-*`) refuse names they do not know, so they get
OpenAI's names only. No `response_format` is sent unless the client gives one: gpt-image models
refuse it and answer `b64_json`, dall-e answers `url`, seed 003's server ignores it.

A JSON answer is read a chunk at a time as it comes (`imagegw.infra.spans.Apart`): an image's
`b64_json` is held as its own str, after the head of its data URI (`_lead`), and that str is the
data URI passed on; only the short rest of the answer is parsed. So a 4 MB image's answer is
one 5.3 MB str, not the body's bytes, the str parsed from them and the data URI made of that.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from imagegw.errors import InvalidRequestError, ProviderError
from imagegw.infra.config import BaseUrl, ProviderSettings, Settings
from imagegw.infra.lazy import httpx
from imagegw.infra.media import ImageBytes, InputImage, check_image, sniff_mime
from imagegw.infra.spans import Apart
from imagegw.providers.base import (
    Finished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Provider,
    check_image_count,
)
from imagegw.providers.options import (
    as_float,
    as_int,
    as_text,
    common_options,
    option_names,
    parse_size,
)
from imagegw.providers.sizes import SizeLimits
from imagegw.providers.upstream import (
    error_for,
    image_answer_limit,
    lines,
    opened,
    read_answer,
    send,
    unreachable,
    work_timeout,
)

if TYPE_CHECKING:
    from imagegw.infra.fetcher import Fetcher

#: OpenAI's own image models: OpenAI's parameter names only
OPENAI_MODELS: Final = re.compile(r"^(gpt-image|chatgpt-image|dall-e)", re.IGNORECASE)
#: OpenAI image parameters passed on as given (strings)
PASSED_ON: Final = ("quality", "style", "background", "output_format", "moderation")
RESPONSE_FORMATS: Final = ("url", "b64_json")
#: no documented limits on seed 003's server: sanity bounds
SIDE_RANGE: Final = (64, 4096)
MAX_STEPS: Final = 200
MAX_SEED: Final = 2**32 - 1
MAX_TEXT: Final = 10_000
#: input images an edit takes (OpenAI's gpt-image models take up to 16); bounds what one
#: request can make the gateway upload or download
MAX_INPUT_IMAGES: Final = 16
_AUTO: Final = "auto"
#: the sizes OpenAI's own models take, by id prefix (first match wins)
OPENAI_CHOICES: Final[tuple[tuple[str, tuple[tuple[int, int], ...]], ...]] = (
    ("dall-e-2", ((256, 256), (512, 512), (1024, 1024))),
    ("dall-e", ((1024, 1024), (1792, 1024), (1024, 1792))),
    ("", ((1024, 1024), (1536, 1024), (1024, 1536))),  # gpt-image-*
)


class OpenAISettings(ProviderSettings):
    """The OpenAI-compatible server's settings."""

    #: an OpenAI-compatible image server (a self-hosted one, or OpenAI itself)
    openai_base_url: BaseUrl = "https://api.openai.com/v1"
    #: the image models listed for the base URL, comma-separated (ids with "edit" are edit
    #: models); other ids still work, classed by their id (docs/providers.md "Model classes")
    openai_image_models: str = "gpt-image-1,dall-e-3,Qwen/Qwen-Image,Qwen/Qwen-Image-Edit"


#: models that stream their images (OpenAI's dall-e models do not; self-hosted ones may)
NO_STREAM: Final = re.compile(r"^dall-e", re.IGNORECASE)
PREVIEW_TYPES: Final = frozenset({"image_generation.partial_image", "image_edit.partial_image"})
DONE_TYPES: Final = frozenset({"image_generation.completed", "image_edit.completed"})


@dataclass(frozen=True)
class Preview:
    """A partial image the upstream streamed, as it sent it (passed through unchanged)."""

    event: dict[str, Any]


@dataclass(frozen=True)
class Made:
    """An image the upstream finished: a data URI, or its URL (a non-streamed answer)."""

    ref: str


class _Datum(BaseModel):
    model_config = ConfigDict(defer_build=True)

    url: str | None = None
    b64_json: str | None = None


class _Images(BaseModel):
    model_config = ConfigDict(defer_build=True)

    data: list[_Datum]


def catalog_of(settings: Settings) -> tuple[ModelInfo, ...]:
    """OPENAI_IMAGE_MODELS as a catalog: ids containing "edit" are edit models."""
    listed = OpenAISettings.of(settings).openai_image_models
    ids = [model.strip() for model in listed.split(",") if model.strip()]
    return tuple(
        ModelInfo(model, ModelKind.EDIT if "edit" in model.lower() else ModelKind.GENERATE)
        for model in dict.fromkeys(ids)
    )


def _refs(apart: Apart) -> list[str | None]:
    """The images of a JSON answer read by `apart` (`_lead`), in its `data`'s order: each
    item's `b64_json` as a data URI, else its `url`; none when the answer is not such JSON."""
    try:
        items = _Images.model_validate_json(apart.text()).data
    except ValidationError:
        return []
    refs: list[str | None] = []
    for item in items:
        b64 = item.b64_json
        if b64:  # held with its URI's head: that is the URI; else (short, or not plain) made
            refs.append(apart.with_lead(b64) or _data_uri(apart.restored(b64)))
        else:
            refs.append(apart.restored(item.url))
    return refs


#: the base64 alphabet and its padding: what a long string of an answer starts with for it to
#: be held as a data URI (`_lead`)
_BASE64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _lead(first: bytes) -> str:
    """What a long plain string of a JSON answer is held after (`Apart`), given its first
    bytes: the head `_data_uri` gives it when it starts as base64 does (a `b64_json`: held, it
    is its data URI), else nothing (a link: held as it is)."""
    start = first[:64]
    return "" if start.translate(None, _BASE64) else _head(start.decode("ascii"))


def _head(b64: str) -> str:
    """The head of the data URI of a `b64_json` that starts with `b64`: its type is the one
    its first bytes show."""
    try:
        start = base64.b64decode(b64[:64] + "=" * (-len(b64[:64]) % 4))
    except (binascii.Error, ValueError):
        start = b""
    return f"data:{sniff_mime(start) or 'image/png'};base64,"


def _data_uri(b64: str) -> str:
    """A `b64_json` answer as a data URI of the type its bytes show."""
    return _head(b64) + b64


class OpenAICompatible(Provider):
    name = "openai"
    title = "OpenAI-compatible server"
    settings_model = OpenAISettings
    supports_masks = True
    steps_option = "num_inference_steps"

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, fetcher: Fetcher | None = None
    ) -> None:
        super().__init__(settings, client, fetcher)
        self.catalog = catalog_of(settings)

    own_fields = frozenset({*PASSED_ON, "response_format", "true_cfg_scale"})

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits:
        if OPENAI_MODELS.match(model):
            lowered = model.lower()
            choices = next(c for prefix, c in OPENAI_CHOICES if lowered.startswith(prefix))
            return SizeLimits(choices[0][0], choices[-1][0], choices=choices)
        return SizeLimits(*SIDE_RANGE)

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        if OPENAI_MODELS.match(model):  # OpenAI's names only
            return frozenset({"negative_prompt", "seed", "steps", "guidance", "loras"})
        return frozenset({"loras"})

    def takes_named_sizes(self, model: str) -> bool:
        return OPENAI_MODELS.match(model) is not None

    @property
    def chat_base_url(self) -> str:
        return self.base_url

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        # any model edits when given images (/images/edits); an edit model needs one
        check_image_count(model, image_count, 1 if kind is ModelKind.EDIT else 0, MAX_INPUT_IMAGES)
        body: dict[str, Any] = {
            name: as_text(name, fields[name], MAX_TEXT)
            for name in PASSED_ON
            if fields.get(name) is not None
        }
        if fields.get("response_format") in RESPONSE_FORMATS:  # not chat's {"type": ...}
            body["response_format"] = fields["response_format"]
        opts = common_options(fields)
        names = option_names(fields)
        if OPENAI_MODELS.match(model):
            if "size" in opts:
                size = opts["size"]
                body["size"] = size if size == _AUTO else _wxh(names["size"], size)
            return body
        size = self._size(opts, fields, names)
        if size is not None:
            body["size"] = f"{size[0]}x{size[1]}"
            body["width"], body["height"] = size
        if "negative_prompt" in opts:
            body["negative_prompt"] = as_text("negative_prompt", opts["negative_prompt"], MAX_TEXT)
        if "steps" in opts:
            body["num_inference_steps"] = as_int(names["steps"], opts["steps"], 1, MAX_STEPS)
        guidance = _guidance(opts, fields, names)
        if guidance is not None:
            body["true_cfg_scale"] = guidance
        if "seed" in opts:
            body["seed"] = as_int(names["seed"], opts["seed"], 0, MAX_SEED)
        return body

    @staticmethod
    def _size(
        opts: Mapping[str, Any], fields: Mapping[str, Any], names: Mapping[str, str]
    ) -> tuple[int, int] | None:
        """`size` (or `image_size`) and seed 003's `width`/`height`, which must agree."""
        size = parse_size(names["size"], opts["size"], *SIDE_RANGE) if "size" in opts else None
        width, height = fields.get("width"), fields.get("height")
        if width is None and height is None:
            return size
        if width is None or height is None:
            raise InvalidRequestError("Send both 'width' and 'height', or 'size'.", param="width")
        sides = (as_int("width", width, *SIDE_RANGE), as_int("height", height, *SIDE_RANGE))
        if size is not None and size != sides:
            raise InvalidRequestError(
                f"'{names['size']}' and 'width'/'height' give different sizes; send one of them.",
                param=names["size"],
            )
        return sides

    async def _image_bytes(self, image: InputImage, index: int) -> ImageBytes:
        """The bytes of an input image: known when uploaded, else downloaded from its URL by
        the guarded fetcher. Every failure of a client's URL is the same 400 (the reason is
        logged), so the answer tells nothing about what the gateway can reach."""
        from imagegw.infra.fetcher import FetchError

        if image.image is not None:
            return image.image
        try:
            data = await self.fetcher.fetch(image.url, limit=self.settings.max_image_bytes)
        except FetchError:
            raise InvalidRequestError(
                f"Input image {index} could not be downloaded from its URL.",
                param="messages",
                code="invalid_image",
            ) from None
        return check_image(
            data, max_bytes=self.settings.max_image_bytes, what=f"input image {index}"
        )

    async def _edit_form(
        self, request: GenerationRequest
    ) -> tuple[dict[str, str], list[tuple[str, tuple[str, bytes, str]]]]:
        """Multipart fields and files of an edit: `image` for one image, `image[]` for more."""
        data = {"model": request.model, "prompt": request.prompt}
        data.update({name: str(value) for name, value in request.options.items()})
        field = "image" if len(request.images) == 1 else "image[]"
        files = []
        for index, image in enumerate(request.images, 1):
            picture = await self._image_bytes(image, index)
            name = f"image-{index}.{picture.extension}"
            files.append((field, (name, picture.data, picture.mime)))
        if request.mask is not None:
            mask = await self._image_bytes(request.mask, len(files) + 1)
            files.append(("mask", (f"mask.{mask.extension}", mask.data, mask.mime)))
        return data, files

    async def start(self, request: GenerationRequest) -> Finished:
        headers = {"Authorization": f"Bearer {request.api_key.get_secret_value()}"}
        # the answer may hold the images themselves (b64_json)
        call: dict[str, Any] = {
            "title": self.title,
            "deadline": self.settings.generation_timeout,
            "limit": image_answer_limit(self.settings),
            "headers": headers,
            "timeout": work_timeout(self.settings),
        }
        apart = Apart(_lead)  # a 200's body, read into it as it comes
        if request.images:
            data, files = await self._edit_form(request)
            url = f"{self.base_url}/images/edits"
            call.update(data=data, files=files)
        else:
            url = f"{self.base_url}/images/generations"
            call.update(json={"model": request.model, "prompt": request.prompt, **request.options})
        try:
            response = await send(self.client, "POST", url, into=apart.feed, **call)
        except httpx.TransportError as exc:
            raise unreachable(self.title, exc, self.settings) from None
        if response.status_code != 200:
            raise error_for(
                self.title, response, key=request.api_key, model=request.model, known=self.known_ids
            )
        return Finished(self._images(_refs(apart)))

    def _images(self, refs: list[str | None]) -> tuple[str, ...]:
        """The images of a JSON answer's `data` (`_refs`): `b64_json` first, as a data URI (the
        answer holds the bytes), else the `url` (fetched, and stored, by `core.deliver`)."""
        found = tuple(ref for ref in refs if ref)
        if not found:
            raise ProviderError(f"The {self.title} answered without an image.", code="no_image")
        return found

    def streams(self, model: str) -> bool:
        """Whether `model` may be asked for a streamed answer with previews."""
        return NO_STREAM.match(model) is None

    async def stream_images(
        self, request: GenerationRequest, partial_images: int
    ) -> AsyncIterator[Preview | Made]:
        """The upstream's answer to `stream: true` with `partial_images`: its previews passed
        through and its images, as they come. An upstream that does not stream (seed 003's
        server ignores `stream`) answers JSON: its images, and no preview. Raises GatewayError
        (an `error` event mid-stream too)."""
        headers = {"Authorization": f"Bearer {request.api_key.get_secret_value()}"}
        asked = {"stream": True, "partial_images": partial_images}
        if request.images:
            data, files = await self._edit_form(request)
            data.update({name: str(value).lower() for name, value in asked.items()})
            call = opened(
                self.client,
                "POST",
                f"{self.base_url}/images/edits",
                deadline=self.settings.generation_timeout,
                data=data,
                files=files,
                headers=headers,
                timeout=work_timeout(self.settings),
            )
        else:
            body = {"model": request.model, "prompt": request.prompt, **request.options, **asked}
            call = opened(
                self.client,
                "POST",
                f"{self.base_url}/images/generations",
                deadline=self.settings.generation_timeout,
                json=body,
                headers=headers,
                timeout=work_timeout(self.settings),
            )
        try:
            limit = image_answer_limit(self.settings)
            async with call as response:
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    apart = Apart(_lead)  # as in `start`
                    whole = await read_answer(
                        response, title=self.title, limit=limit, into=apart.feed
                    )
                    if whole.status_code != 200:
                        raise error_for(self.title, whole, key=request.api_key)
                    for ref in self._images(_refs(apart)):
                        yield Made(ref)
                    return
                if response.status_code != 200:
                    whole = await read_answer(response, title=self.title, limit=limit)
                    raise error_for(self.title, whole, key=request.api_key)
                # previews and images, base64 each: bounded by what they may hold
                bound = limit * request.n * (1 + partial_images)
                async for item in self._events(lines(response, title=self.title, limit=bound)):
                    yield item
        except httpx.TransportError as exc:
            raise unreachable(self.title, exc, self.settings) from None

    async def _events(self, answer: AsyncIterator[str]) -> AsyncIterator[Preview | Made]:
        made = 0
        data: list[str] = []
        async for line in answer:
            if line:
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                continue
            text, data = "\n".join(data), []
            if not text or text == "[DONE]":
                continue
            try:
                event = json.loads(text)
            except ValueError:
                raise ProviderError(
                    f"The {self.title} streamed an unreadable event.", code="bad_upstream"
                ) from None
            if not isinstance(event, dict):
                continue
            kind = event.get("type")
            if isinstance(event.get("error"), dict) or kind == "error":
                error = event.get("error") if isinstance(event.get("error"), dict) else event
                message = str(error.get("message") or "an error")  # type: ignore[union-attr]
                raise ProviderError(f"The {self.title} failed: {message}", code="provider_error")
            if kind in PREVIEW_TYPES and isinstance(event.get("b64_json"), str):
                yield Preview(event)
            elif kind in DONE_TYPES and isinstance(event.get("b64_json"), str):
                made += 1
                yield Made(_data_uri(event["b64_json"]))
        if not made:
            raise ProviderError(f"The {self.title} answered without an image.", code="no_image")


def _wxh(name: str, value: Any) -> str:
    width, height = parse_size(name, value, 1, 99_999)
    return f"{width}x{height}"


def _guidance(
    opts: Mapping[str, Any], fields: Mapping[str, Any], names: Mapping[str, str]
) -> float | None:
    """`guidance` (or an alias) and seed 003's own `true_cfg_scale`, which must agree."""
    given = [
        (name, as_float(name, value, 0.0, 20.0))
        for name, value in (
            (names.get("guidance"), opts.get("guidance")),
            ("true_cfg_scale", fields.get("true_cfg_scale")),
        )
        if name is not None and value is not None
    ]
    if len({value for _, value in given}) > 1:
        raise InvalidRequestError(
            f"'{given[0][0]}' and 'true_cfg_scale' give different values; send one of them.",
            param="true_cfg_scale",
        )
    return given[0][1] if given else None
