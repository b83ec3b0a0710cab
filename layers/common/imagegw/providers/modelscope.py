"""ModelScope API-Inference image generation.

Upstream docs: https://modelscope.cn/docs/model-service/API-Inference/intro
Protocol (see shared/docs/provider-wire.md): `POST /images/generations` with
`X-ModelScope-Async-Mode: true` answers a `task_id`; `GET /tasks/{id}` with
`X-ModelScope-Task-Type: image_generation` answers PENDING/RUNNING/... then SUCCEED with
`output_images` or FAILED with `errors.message`. Edits are the same call with `image_url`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from imagegw.errors import (
    InvalidRequestError,
    ProviderError,
    TransientProviderError,
)
from imagegw.infra.config import BaseUrl, ProviderSettings, Settings
from imagegw.infra.lazy import httpx
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Provider,
    Running,
    Started,
    TaskStatus,
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
    KeptPolls,
    Repeated,
    as_response,
    error_for,
    exchange,
    repeated_get,
    resend,
    unreachable,
)

if TYPE_CHECKING:
    from imagegw.infra.fetcher import Fetcher

ASYNC_MODE_HEADER: Final = "X-ModelScope-Async-Mode"
TASK_TYPE_HEADER: Final = "X-ModelScope-Task-Type"
TASK_TYPE: Final = "image_generation"
SUCCEED: Final = "SUCCEED"
FAILED: Final = "FAILED"
MAX_TEXT: Final = 2000
MAX_SEED: Final = 2**31 - 1
MAX_LORAS: Final = 6
#: input images an edit takes: Qwen-Image-Edit-2509/2511 take 1 to 3; the service's own maximum
#: is undocumented, so this bounds what one request can upload (docs/security.md)
MAX_INPUT_IMAGES: Final = 3

# size ranges by model family, first match wins (seed 002's parameter table)
SIZE_RANGES: Final[tuple[tuple[str, int, int], ...]] = (
    ("z-image", 512, 2048),
    ("qwen-image", 64, 1664),
    ("flux", 64, 1024),
    ("majicflus", 64, 1024),  # a FLUX model without "flux" in its id
    ("", 64, 2048),  # SD family and anything else
)


class _Submitted(BaseModel):
    model_config = ConfigDict(defer_build=True)

    task_id: str


class _Task(BaseModel):
    model_config = ConfigDict(defer_build=True)

    task_status: str
    output_images: list[str] | None = None
    errors: dict[str, Any] | None = None


def size_range(model: str) -> tuple[int, int]:
    lowered = model.lower()
    return next((lo, hi) for key, lo, hi in SIZE_RANGES if key in lowered)


def _loras(value: Any) -> str | dict[str, float]:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict) and 1 <= len(value) <= MAX_LORAS:
        weights = {str(k): as_float(f"loras.{k}", v, 0.0, 1.0) for k, v in value.items()}
        if abs(sum(weights.values()) - 1.0) > 1e-6:
            raise InvalidRequestError(
                f"'loras' weights must sum to 1.0; they sum to {sum(weights.values()):g}.",
                param="loras",
            )
        return weights
    raise InvalidRequestError(
        "'loras' must be a LoRA repo id, or an object of at most 6 repo ids to weights "
        'summing to 1.0, e.g. {"repo-a": 0.6, "repo-b": 0.4}.',
        param="loras",
    )


class ModelScopeSettings(ProviderSettings):
    """ModelScope's settings: where its API is."""

    modelscope_base_url: BaseUrl = "https://api-inference.modelscope.cn/v1"


class ModelScope(Provider):
    name = "modelscope"
    title = "ModelScope"
    settings_model = ModelScopeSettings
    max_prompt_chars = MAX_TEXT
    daily_reset_utc_hour = 16  # its daily free quota resets at 00:00 Beijing time
    catalog = (
        # priors (seconds of RUNNING): rough figures, replaced by what the gateway learns
        ModelInfo("Qwen/Qwen-Image", ModelKind.GENERATE, seconds=15.0),
        ModelInfo("Tongyi-MAI/Z-Image-Turbo", ModelKind.GENERATE, seconds=4.0),
        ModelInfo("Qwen/Qwen-Image-Edit", ModelKind.EDIT, seconds=20.0),
        ModelInfo("Qwen/Qwen-Image-Edit-2509", ModelKind.EDIT, seconds=20.0),
        ModelInfo("Qwen/Qwen-Image-Edit-2511", ModelKind.EDIT, seconds=20.0),
    )

    own_fields = frozenset({"loras"})

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, fetcher: Fetcher | None = None
    ) -> None:
        super().__init__(settings, client, fetcher)
        #: each task's status request, re-sent by each poll
        self._polls = KeptPolls()

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits:
        lo, hi = size_range(model)
        side = 1328 if "qwen-image" in model.lower() else 1024  # Qwen-Image's native square
        return SizeLimits(lo, hi, default=(min(hi, max(lo, side)),) * 2)

    @property
    def chat_base_url(self) -> str:
        return self.base_url  # seed 004: OpenAI-compatible chat on the same base URL

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        check_image_count(
            model,
            image_count,
            1 if kind is ModelKind.EDIT else 0,
            0 if kind is ModelKind.GENERATE else MAX_INPUT_IMAGES,
        )
        opts = common_options(fields)
        names = option_names(fields)  # errors name the field as the client sent it
        body: dict[str, Any] = {}
        if "negative_prompt" in opts:
            body["negative_prompt"] = as_text("negative_prompt", opts["negative_prompt"], MAX_TEXT)
        if "size" in opts:
            width, height = parse_size(names["size"], opts["size"], *size_range(model))
            body["size"] = f"{width}x{height}"
        if "seed" in opts:
            body["seed"] = as_int("seed", opts["seed"], 0, MAX_SEED)
        if "steps" in opts:
            body["steps"] = as_int(names["steps"], opts["steps"], 1, 100)
        if "guidance" in opts:
            body["guidance"] = as_float(names["guidance"], opts["guidance"], 1.5, 20.0)
        if "loras" in opts:
            body["loras"] = _loras(opts["loras"])
        return body

    def _headers(self, request: GenerationRequest) -> dict[str, str]:
        return {"Authorization": f"Bearer {request.api_key.get_secret_value()}"}

    def _poll_request(self, request: GenerationRequest, task_id: str) -> Repeated:
        """The GET of a task's status, made once per task (and key) and re-sent by every poll
        of it (`imagegw.providers.upstream.KeptPolls`)."""
        built = self._polls.get(task_id, request.api_key)
        if built is None:
            made = repeated_get(
                self.client,
                f"{self.base_url}/tasks/{task_id}",
                headers={**self._headers(request), TASK_TYPE_HEADER: TASK_TYPE},
                timeout=self.timeout,
            )
            built = self._polls.keep(task_id, request.api_key, made)
        return built

    async def start(self, request: GenerationRequest) -> Started:
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        body.update(request.options)
        if request.images:
            body["image_url"] = [image.url for image in request.images]
        try:
            answer = await exchange(
                self.client,
                "POST",
                f"{self.base_url}/images/generations",
                title=self.title,
                deadline=self.settings.provider_timeout,
                json=body,
                headers={**self._headers(request), ASYNC_MODE_HEADER: "true"},
                timeout=self.timeout,
            )
        except httpx.TransportError as exc:
            # unreachable (retry is safe) or dropped after sending (a task may have started)
            raise unreachable(
                self.title, exc, self.settings, waited=self.settings.provider_timeout
            ) from None
        if answer.status_code != 200:
            raise error_for(
                self.title,
                as_response(answer),
                key=request.api_key,
                model=request.model,
                known=self.known_ids,
            )
        try:
            return Started(_Submitted.model_validate_json(answer.content).task_id)
        except ValidationError:
            raise ProviderError(
                "ModelScope answered the submission without a task id.", code="provider_error"
            ) from None

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        try:
            answer = await resend(
                self._poll_request(request, task_id),
                title=self.title,
                deadline=self.settings.provider_timeout,
            )
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.TimeoutException):
                reason = f"no answer within {self.settings.provider_timeout:g} s"
            else:
                reason = f"no connection ({type(exc).__name__})"
            raise TransientProviderError(
                f"ModelScope could not be reached while polling task {task_id}: {reason}.",
                reason=reason,
                code="provider_unreachable",
            ) from None
        status_code = answer.status_code
        if status_code >= 500 or status_code == 429:
            raise TransientProviderError(
                f"ModelScope answered {status_code} while polling task {task_id}.",
                reason=f"answered {status_code}",
                code="provider_unavailable",
            )
        if status_code != 200:
            raise error_for(self.title, as_response(answer), key=request.api_key)
        try:
            task = _Task.model_validate_json(answer.content)
        except ValidationError:
            raise TransientProviderError(
                f"ModelScope answered an unreadable status for task {task_id}.",
                reason="answered an unreadable status",
                code="provider_error",
            ) from None
        status = task.task_status.upper()
        if status in (SUCCEED, FAILED):
            self._polls.drop(task_id, request.api_key)
        if status == SUCCEED:
            if not task.output_images:
                return Failed("the task succeeded but returned no image")
            return Finished(tuple(task.output_images))
        if status == FAILED:
            reason = (task.errors or {}).get("message") or "no reason given"
            return Failed(str(reason))
        return Running(status)  # PENDING, RUNNING, PROCESSING, or any name to come
