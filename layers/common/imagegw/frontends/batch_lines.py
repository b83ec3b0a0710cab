"""A Batch API input file read and checked line by line, before anything is paid.

Every line must be a JSON object `{custom_id, method: "POST", url, body}`: `custom_id` a
unique non-empty string, `url` the batch's endpoint, and `body` valid for that endpoint and
model by the same checks as a single request (`images_api.build_job` for the Images API, the
chat front end's planning for `/v1/chat/completions`). Each line is planned here, once: a batch
item carries its planned job (`ItemJob`), which the batch's run starts as a durable job.

Input images of a batch line are http(s) URLs (a gateway link from an earlier answer included):
a batch file holds text, and a data URI in it would be staged for each item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from imagegw.access.gate import Caller
from imagegw.core.plan import Ask, plan
from imagegw.errors import GatewayError, InvalidRequestError
from imagegw.frontends import images_api, prompt_options
from imagegw.frontends.messages import parse_messages
from imagegw.frontends.schemas import ChatRequest, ImagesEditRequest, read
from imagegw.infra.media import is_http_url
from imagegw.providers.base import ModelKind, Provider
from imagegw.runners.stepfunctions.schema import Front, ResponseFormat

Endpoint = Literal["/v1/images/generations", "/v1/images/edits", "/v1/chat/completions"]
ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/chat/completions",
)
#: the most line errors a failed batch lists (the first ones, by line)
MAX_ERRORS: Final = 1000
#: the longest custom_id
MAX_CUSTOM_ID: Final = 512


class ItemJob(BaseModel):
    """One line's planned job, as a batch item carries it: no key, no secret."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    provider: str
    model: str
    kind: ModelKind
    prompt: str
    options: dict[str, Any]
    n: int
    #: input images: http(s) URLs
    images: tuple[str, ...] = ()
    response_format: ResponseFormat = "url"
    api: Front = "images"


class Item(BaseModel):
    """A batch item: its position (0-based), the caller's id for it, and its job."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    index: int
    custom_id: str
    job: ItemJob


@dataclass(frozen=True)
class LineError:
    line: int
    message: str
    code: str
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class Checked:
    items: tuple[Item, ...]
    errors: tuple[LineError, ...]


def check_file(
    content: bytes,
    *,
    endpoint: Endpoint,
    provider: Provider,
    max_items: int,
    caller: Caller | None = None,
) -> Checked:
    """Every line of `content` (JSONL) read and planned for `endpoint` on `provider`; blank
    lines are skipped. Errors name their line (1-based). `caller`: a gateway key's models are
    checked too."""
    items: list[Item] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    text = content.decode("utf-8", errors="replace")
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        errors.append(LineError(1, "The input file has no requests.", "empty_file"))
    if len(lines) > max_items:
        errors.append(
            LineError(
                lines[max_items][0],
                f"The input file has {len(lines)} requests; a batch takes at most {max_items}.",
                "too_many_requests",
            )
        )
        lines = lines[:max_items]
    for number, line in lines:
        try:
            custom_id, job = check_line(line, endpoint=endpoint, provider=provider)
            if caller is not None:
                caller.check_model(job.model)
            if custom_id in seen:
                raise InvalidRequestError(
                    f"The custom_id '{custom_id[:80]}' is used by an earlier line: "
                    "each request needs its own.",
                    param="custom_id",
                    code="duplicate_custom_id",
                )
            seen.add(custom_id)
            items.append(Item(index=len(items), custom_id=custom_id, job=job))
        except GatewayError as exc:
            if len(errors) < MAX_ERRORS:
                errors.append(
                    LineError(number, exc.message, exc.code or "invalid_request", exc.param)
                )
    return Checked(tuple(items), tuple(errors))


def check_line(line: str, *, endpoint: Endpoint, provider: Provider) -> tuple[str, ItemJob]:
    """One line's custom_id and planned job; the 400 of its first problem."""
    try:
        request = json.loads(line)
    except ValueError:
        raise InvalidRequestError("The line is not valid JSON.", code="invalid_json_line") from None
    if not isinstance(request, dict):
        raise InvalidRequestError("The line must be a JSON object.", code="invalid_json_line")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        raise InvalidRequestError(
            "'custom_id' is required: a non-empty string naming the request.",
            param="custom_id",
            code="missing_required_parameter",
        )
    if len(custom_id) > MAX_CUSTOM_ID:
        raise InvalidRequestError(
            f"'custom_id' is longer than {MAX_CUSTOM_ID} characters.", param="custom_id"
        )
    if request.get("method") != "POST":
        raise InvalidRequestError("'method' must be 'POST'.", param="method", code="invalid_method")
    if request.get("url") != endpoint:
        raise InvalidRequestError(
            f"'url' must be the batch's endpoint, '{endpoint}'.",
            param="url",
            code="mismatched_url",
        )
    body = request.get("body")
    if not isinstance(body, dict):
        raise InvalidRequestError("'body' must be a JSON object.", param="body")
    return custom_id, plan_body(body, endpoint=endpoint, provider=provider)


def plan_body(body: dict[str, Any], *, endpoint: Endpoint, provider: Provider) -> ItemJob:
    """A request body planned as a single request to `endpoint` would be."""
    if endpoint == "/v1/chat/completions":
        return _chat_job(body, provider)
    call = _edit_call(body) if endpoint == "/v1/images/edits" else images_api.generation_call(body)
    job = images_api.build_job(provider, call, SecretStr(""))
    return _item_job(
        job,
        images=tuple(str(image) for image in call.images),
        api="images",
        response_format=call.response_format,
    )


def _urls(value: Any, param: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(ref, str) and is_http_url(ref.strip()) for ref in values):
        raise InvalidRequestError(
            f"'{param}' must be an http(s) URL or a list of them in a batch.",
            param=param,
            code="invalid_image",
        )
    return tuple(ref.strip() for ref in values)


def _edit_call(body: dict[str, Any]) -> images_api.ImagesCall:
    fields = dict(body)
    image = fields.pop("image", None)
    if image is None:
        image = fields.pop("image[]", None)
    if image is None:
        raise InvalidRequestError(
            "'image' is required: the URL of the picture to edit (a list for several).",
            param="image",
            code="image_required",
        )
    if fields.pop("mask", None) is not None:
        raise InvalidRequestError(
            "Batch edits take no mask.", param="mask", code="mask_not_supported"
        )
    images = _urls(image, "image")
    request = read(ImagesEditRequest, fields)
    return images_api.ImagesCall(
        prompt=request.prompt,
        model=request.model,
        response_format=request.response_format,
        fields=request.options,
        edit=True,
        images=images,
    )


def _chat_job(body: dict[str, Any], provider: Provider) -> ItemJob:
    chat = read(ChatRequest, body)
    kind = provider.classify(chat.model)
    if kind is ModelKind.CHAT:
        raise InvalidRequestError(
            f"'{chat.model}' is a chat model: batches of /v1/chat/completions make images.",
            param="model",
            code="model_not_supported",
        )
    parsed = parse_messages(chat.messages, edit=kind is ModelKind.EDIT)
    images = _urls(list(parsed.images), "messages") if parsed.images else ()
    written = prompt_options.parse(parsed.prompt)
    fields = prompt_options.merge(chat.fields, written.fields)
    job = plan(provider, Ask(chat.model, kind, written.prompt, fields, len(images)), SecretStr(""))
    return _item_job(job, images=images, api="chat", response_format="url")


def _item_job(
    job: Any, *, images: tuple[str, ...], api: Front, response_format: ResponseFormat
) -> ItemJob:
    return ItemJob(
        provider=job.provider,
        model=job.model,
        kind=job.kind,
        prompt=job.prompt,
        options=dict(job.options),
        n=job.n,
        images=images,
        response_format=response_format,
        api=api,
    )
