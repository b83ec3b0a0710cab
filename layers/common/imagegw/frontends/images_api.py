"""The OpenAI Images API: request fields -> one image job -> `{"created", "data"}`.

`POST /v1/images/generations` takes JSON; `POST /v1/images/edits` takes multipart/form-data
with the pictures as `image` (one file, or repeated), `image[]` (as the OpenAI SDKs send a
list) or `image[0]`, `image[1]`, ...; a text field in their place may hold an http(s) URL or a
data URI. The fields this front end reads are typed (`schemas.ImagesRequest`,
`schemas.ImagesEditRequest`); everything else works as in chat: the provider's options under
the gateway's common names or the provider's own (`n`, `size`, `seed`, `steps`, ...), numbers
also as strings.
OpenAI-only fields (`quality`, `style`, `background`, ...) reach the provider too, which ignores
what it cannot honour. The answer comes when the images are done, with only `url` items or
only `b64_json` items, as `response_format` asks; with `stream: true` it is OpenAI's image
event stream instead (`imagegw.frontends.image_stream`). `webhook_url` is for durable jobs
(`Prefer: respond-async`): the job POSTs a signed event there when it ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from pydantic import SecretStr

from imagegw.core.deliver import LinkMode
from imagegw.core.plan import Ask, plan
from imagegw.errors import GatewayError, InvalidRequestError
from imagegw.frontends.schemas import (
    ImagesAnswer,
    ImagesEditRequest,
    ImagesRequest,
    ResponseFormat,
    read,
)
from imagegw.frontends.streaming import collect
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes, check_image, decode_data_uri, is_data_uri, is_http_url
from imagegw.providers.base import GenerationRequest, ModelKind, Provider
from imagegw.providers.refusals import images_api_words
from imagegw.runners import pipeline
from imagegw.runners.gateway import Gateway
from imagegw.runners.pipeline import Event

_IMAGE_FIELD: Final = re.compile(r"^image(?:\[\d*\])?$")
_NESTED_FIELD: Final = re.compile(r"^([A-Za-z_]\w*)\[([^\[\]]+)\]$")

Input = str | ImageBytes
#: sees a run's events on their way to the answer (`imagegw.frontends.replays.Attempt.watch`)
Tap = Callable[[AsyncIterator[Event]], AsyncIterator[Event]]


@dataclass(frozen=True)
class ImagesCall:
    """One Images API request, read and checked as far as no provider is needed."""

    prompt: str
    #: None: the provider's first listed model of the kind the endpoint makes
    model: str | None
    response_format: ResponseFormat
    #: everything else, for `provider.prepare` (`n` included)
    fields: dict[str, Any]
    edit: bool = False
    #: checked images, or http(s) URLs the provider fetches itself
    images: tuple[Input, ...] = ()
    #: the mask as sent (a file's bytes or a text field); checked only if the provider has masks
    mask: str | bytes | None = None
    #: `stream: true`: OpenAI's image events (SSE) instead of one JSON answer
    stream: bool = False
    #: `partial_images` as asked (0-3), None when not sent
    partial_images: int | None = None
    #: where a durable job's end is POSTed (checked where a job starts: `imagegw.core.webhooks`)
    webhook_url: str | None = None


def generation_call(body: Mapping[str, Any]) -> ImagesCall:
    """A `POST /v1/images/generations` JSON body."""
    return _call(read(ImagesRequest, body))


def edit_call(items: Sequence[tuple[str, str | bytes]], *, max_image_bytes: int) -> ImagesCall:
    """A `POST /v1/images/edits` multipart body, as (name, value) pairs in order: text fields
    as strings, files as bytes. Empty text fields count as absent; `name[key]` fields are
    gathered into an object `name` (how SDKs send objects); `loras` may be JSON text."""
    fields: dict[str, Any] = {}
    pictures: list[str | bytes] = []
    masks: list[str | bytes] = []
    for name, value in items:
        if isinstance(value, str) and not value.strip():
            continue
        if _IMAGE_FIELD.match(name):
            pictures.append(value)
        elif name == "mask":
            masks.append(value)
        elif isinstance(value, bytes):
            raise InvalidRequestError(f"'{name}' must be a text field, not a file.", param=name)
        elif nested := _NESTED_FIELD.match(name):
            outer = fields.setdefault(nested.group(1), {})
            if not isinstance(outer, dict):
                raise InvalidRequestError(
                    f"'{nested.group(1)}' is sent both as a value and as an object.",
                    param=nested.group(1),
                )
            outer[nested.group(2)] = value
        else:
            fields[name] = value
    loras = fields.get("loras")
    if isinstance(loras, str) and loras.lstrip().startswith("{"):
        try:
            fields["loras"] = json.loads(loras)
        except ValueError:
            raise InvalidRequestError("'loras' is not valid JSON.", param="loras") from None
    if not pictures:
        raise InvalidRequestError(
            "'image' is required: send the picture to edit as a file named 'image' "
            "(several as 'image[]' or a repeated 'image').",
            param="image",
            code="image_required",
        )
    if len(masks) > 1:
        raise InvalidRequestError("Send at most one 'mask'.", param="mask")
    many = len(pictures) > 1
    images = tuple(
        read_image(picture, max_bytes=max_image_bytes, what=f"image {i}" if many else "image")
        for i, picture in enumerate(pictures, 1)
    )
    request = read(ImagesEditRequest, fields)
    return _call(request, images=images, mask=masks[0] if masks else None)


def read_image(value: str | bytes, *, max_bytes: int, what: str, param: str = "image") -> Input:
    """A file's bytes checked as an image; a text value as a data URI (decoded and checked)
    or an http(s) URL (kept: the provider fetches it)."""
    ref = value.strip() if isinstance(value, str) else ""
    if ref and not is_data_uri(ref):
        if is_http_url(ref):
            return ref
        raise InvalidRequestError(
            f"The {what} must be a file, an http(s) URL or a data URI.",
            param=param,
            code="invalid_image",
        )
    try:
        if isinstance(value, bytes):
            return check_image(value, max_bytes=max_bytes, what=what)
        return decode_data_uri(ref, max_bytes=max_bytes, what=what)
    except GatewayError as exc:
        exc.param = exc.param or param
        raise


def _call(
    request: ImagesRequest,
    *,
    images: tuple[Input, ...] = (),
    mask: str | bytes | None = None,
) -> ImagesCall:
    return ImagesCall(
        prompt=request.prompt,
        model=request.model,
        response_format=request.response_format,
        fields=request.options,
        edit=isinstance(request, ImagesEditRequest),
        images=images,
        mask=mask,
        stream=request.stream,
        partial_images=request.partial_images,
        webhook_url=request.webhook_url,
    )


def default_model(provider: Provider, kind: ModelKind) -> str:
    """The provider's first listed model of `kind` (OpenAI lets clients leave `model` out)."""
    for info in provider.catalog:
        if info.kind is kind:
            return info.id
    raise InvalidRequestError(
        f"'model' is required: {provider.title} has no default {kind} model.", param="model"
    )


def link_mode(call: ImagesCall, configured: LinkMode) -> LinkMode:
    """How the results are delivered: bytes for `b64_json`; for `url`, links as IMAGE_LINKS
    says, except that inline data URIs are no URLs, so those are stored links."""
    if call.response_format == "b64_json":
        return "data"
    return "stored" if configured == "inline" else configured


def ask_of(call: ImagesCall, model: str, kind: ModelKind) -> Ask:
    """What an Images API call asks, for the planner."""
    return Ask(model, kind, call.prompt, call.fields, len(call.images), prompt_param="prompt")


def provider_options(
    provider: Provider, model: str, kind: ModelKind, call: ImagesCall
) -> dict[str, Any]:
    """The call's options checked by the provider, refusals told in this API's terms."""
    job = plan(provider, ask_of(call, model, kind), SecretStr(""), images_api_words(call.edit))
    return dict(job.options)


def build_job(provider: Provider, call: ImagesCall, api_key: SecretStr) -> GenerationRequest:
    """The checked, provider-agnostic job of an Images API call (its mask not yet staged);
    the synchronous answer and durable jobs both start from it."""
    wanted = ModelKind.EDIT if call.edit else ModelKind.GENERATE
    model = call.model or default_model(provider, wanted)
    kind = provider.classify(model)
    if kind is ModelKind.CHAT:  # an id that tells nothing: the endpoint says what is wanted
        kind = wanted
    return plan(provider, ask_of(call, model, kind), api_key, images_api_words(call.edit))


async def prepare(
    gateway: Gateway,
    provider: Provider,
    call: ImagesCall,
    api_key: SecretStr,
    *,
    staged: bool = True,
) -> GenerationRequest:
    """The job of `call`, checked, its mask (if any) staged in the bucket (not when `staged` is
    false: its tasks already started, `answer(resume=...)`). Raises GatewayError."""
    settings = gateway.settings
    if call.mask is not None and not provider.supports_masks:
        raise InvalidRequestError(
            f"{provider.title} edits take no mask: leave 'mask' out and say in the prompt "
            "what to change.",
            param="mask",
            code="mask_not_supported",
        )
    job = build_job(provider, call, api_key)
    if call.mask is not None and staged:
        checked = read_image(
            call.mask, max_bytes=settings.max_image_bytes, what="mask", param="mask"
        )
        (mask,) = await gateway.store.stage([checked])
        job = replace(job, mask=mask)
    logger.info(
        "images generation",
        extra={
            "provider": provider.name,
            "model": job.model,
            "kind": str(job.kind),
            "images": len(call.images),
            "n": job.n,
            "response_format": call.response_format,
            "stream": call.stream,
        },
    )
    return job


def relays_previews(provider: Provider, call: ImagesCall) -> bool:
    """Whether a streamed `call` is relayed from an upstream that may stream previews (an
    OpenAI-compatible server, `partial_images` asked, a model that streams): its partial
    images are passed through as they come."""
    streams = getattr(provider, "streams", None)
    if not (call.stream and call.partial_images and callable(streams)):
        return False
    wanted = ModelKind.EDIT if call.edit else ModelKind.GENERATE
    return bool(streams(call.model or default_model(provider, wanted)))


def ignored(provider: Provider, call: ImagesCall) -> list[str]:
    """The fields of `call` this gateway reads and does nothing with: `partial_images`, except
    where an upstream that streams previews gets it (no preview is ever made up)."""
    if call.partial_images is None or relays_previews(provider, call):
        return []
    return ["partial_images"]


async def answer(
    gateway: Gateway,
    provider: Provider,
    call: ImagesCall,
    api_key: SecretStr,
    base_url: str,
    budget: float | None = None,
    resume: Sequence[str] = (),
    tap: Tap | None = None,
) -> ImagesAnswer:
    """Run the job and answer in the Images API's shape (within `budget` seconds when the
    client said how long it waits); with `resume`, by polling the tasks an earlier request
    started for it (`pipeline.events`). `tap` sees the run's events on their way. Raises
    GatewayError."""
    job = await prepare(gateway, provider, call, api_key, staged=not resume)
    n = job.n
    mode = link_mode(call, gateway.settings.image_links)
    events: AsyncIterator[Event] = pipeline.events(
        gateway, provider, job, call.images, base_url, mode, budget=budget, resume=resume
    )
    result = await collect(tap(events) if tap is not None else events)
    if result.failures:
        logger.warning("some images failed", extra={"failures": list(result.failures), "n": n})
    # n images as n items, whatever the provider's batching; fewer only when some task failed
    return ImagesAnswer(result.images[:n], call.response_format)
