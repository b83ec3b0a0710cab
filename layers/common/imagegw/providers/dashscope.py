"""Alibaba DashScope (Model Studio) Wan image synthesis (asynchronous tasks).

Upstream docs: https://help.aliyun.com/en/model-studio/text-to-image-v2-api-reference
Protocol (see shared/docs/provider-wire.md): `POST /services/aigc/text2image/image-synthesis`
with `X-DashScope-Async: enable` and `{model, input:{prompt, negative_prompt},
parameters:{size:"1024*1024", n, seed, prompt_extend, watermark}}` answers
`{output:{task_id, task_status:"PENDING"}, request_id}`; `GET /tasks/{id}` answers
`output.task_status` PENDING | RUNNING | SUCCEEDED | FAILED | CANCELED | UNKNOWN, on success
`output.results[].url` (links live about 24 h), on failure `output.code`/`output.message`.
Edits (wanx2.1-imageedit) are `POST /services/aigc/image2image/image-synthesis` with
`input.function` and `input.base_image_url`. Errors are `{code, message, request_id}`; a
moderation refusal is `DataInspectionFailed` (submission or task), answered here as a 400.
International accounts use `https://dashscope-intl.aliyuncs.com/api/v1`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from imagegw.errors import InvalidRequestError, ProviderError
from imagegw.infra.log import logger
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Running,
    Started,
    TaskStatus,
    check_image_count,
)
from imagegw.providers.options import as_int, as_text, common_options, option_names, parse_size
from imagegw.providers.sizes import SizeLimits
from imagegw.providers.tasks import TaskProvider, batches, json_of, moderated, submit, task_settings

ASYNC_HEADER: Final = "X-DashScope-Async"
GENERATE_PATH: Final = "/services/aigc/text2image/image-synthesis"
EDIT_PATH: Final = "/services/aigc/image2image/image-synthesis"
#: sides of the Wan 2.x text-to-image models (wan2.5 takes more; this range suits them all)
SIDE_RANGE: Final = (512, 1440)
MAX_BATCH: Final = 4
MAX_SEED: Final = 2_147_483_647
MAX_PROMPT: Final = 800
MAX_NEGATIVE: Final = 500
#: the refusal codes of DashScope's content inspection
MODERATION_CODES: Final = frozenset({"DataInspectionFailed", "IPInfringementSuspect"})
#: wanx2.1-imageedit's functions; `description_edit` (edit by instruction) unless given
EDIT_FUNCTIONS: Final = frozenset(
    {
        "stylization_all",
        "stylization_local",
        "description_edit",
        "description_edit_with_mask",
        "remove_watermark",
        "expand",
        "super_resolution",
        "colorization",
        "doodle",
        "control_cartoon_feature",
    }
)
SUCCEEDED: Final = "SUCCEEDED"
ENDED_BADLY: Final = frozenset({"FAILED", "CANCELED", "UNKNOWN"})


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidRequestError(f"'{name}' must be true or false; got {value!r}.", param=name)


class DashScope(TaskProvider):
    name = "dashscope"
    title = "DashScope"
    settings_model = task_settings("dashscope", "https://dashscope.aliyuncs.com/api/v1")
    max_prompt_chars = MAX_PROMPT
    catalog = (
        ModelInfo("wan2.5-t2i-preview", ModelKind.GENERATE, seconds=30.0),
        ModelInfo("wan2.2-t2i-flash", ModelKind.GENERATE, seconds=10.0),
        ModelInfo("wan2.2-t2i-plus", ModelKind.GENERATE, seconds=25.0),
        ModelInfo("wanx2.1-t2i-turbo", ModelKind.GENERATE, seconds=15.0),
        ModelInfo("wanx2.1-t2i-plus", ModelKind.GENERATE, seconds=30.0),
        ModelInfo("wanx2.1-imageedit", ModelKind.EDIT, seconds=20.0),
    )
    own_fields = frozenset({"prompt_extend", "watermark", "function"})

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits | None:
        if kind is ModelKind.EDIT:
            return None  # the edit keeps the input's size
        return SizeLimits(*SIDE_RANGE, default=(1024, 1024))

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        unused = {"steps", "guidance", "loras"}
        if kind is ModelKind.EDIT:
            unused |= {"size", "negative_prompt"}
        return frozenset(unused)

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        edit = kind is ModelKind.EDIT
        check_image_count(model, image_count, 1 if edit else 0, 1 if edit else 0)
        opts = common_options(fields)
        names = option_names(fields)
        options: dict[str, Any] = {}
        if "size" in opts:
            width, height = parse_size(names["size"], opts["size"], *SIDE_RANGE)
            if not edit:
                options["size"] = f"{width}*{height}"
        if "negative_prompt" in opts and not edit:
            options["negative_prompt"] = as_text(
                "negative_prompt", opts["negative_prompt"], MAX_NEGATIVE
            )
        if "seed" in opts:
            options["seed"] = as_int(names["seed"], opts["seed"], 0, MAX_SEED)
        for flag in ("prompt_extend", "watermark"):
            if fields.get(flag) is not None:
                options[flag] = _flag(flag, fields[flag])
        if edit:
            function = fields.get("function") or "description_edit"
            if function not in EDIT_FUNCTIONS:
                raise InvalidRequestError(
                    f"'function' must be one of {', '.join(sorted(EDIT_FUNCTIONS))}.",
                    param="function",
                )
            options["function"] = function
        return options

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        """Up to 4 images a task (`parameters.n`)."""
        return batches(request, MAX_BATCH)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The submission's body: `input` and `parameters` as DashScope names them."""
        options = dict(request.options)
        task_input: dict[str, Any] = {"prompt": request.prompt}
        if "negative_prompt" in options:
            task_input["negative_prompt"] = options.pop("negative_prompt")
        if request.images:
            task_input["function"] = options.pop("function", "description_edit")
            task_input["base_image_url"] = request.images[0].url  # a URL DashScope fetches
        else:
            options.pop("function", None)
        return {
            "model": request.model,
            "input": task_input,
            "parameters": {**options, "n": request.n},
        }

    async def start(self, request: GenerationRequest) -> Started:
        path = EDIT_PATH if request.images else GENERATE_PATH
        headers = {**self._headers(request), ASYNC_HEADER: "enable"}
        response = await submit(
            self,
            f"{self.base_url}{path}",
            self.body(request),
            headers,
            request.api_key,
            moderation=MODERATION_CODES.__contains__,
        )
        output = (json_of(self, response, "submission").get("output")) or {}
        task_id = output.get("task_id") if isinstance(output, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError(
                "DashScope answered the submission without a task id.", code="provider_error"
            )
        return Started(task_id)

    async def status(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        output = (await self.poll(request, task_id, f"{self.base_url}/tasks/{task_id}")).get(
            "output"
        )
        if not isinstance(output, dict):
            output = {}
        status = str(output.get("task_status") or "UNKNOWN").upper()
        if status == SUCCEEDED:
            results = output.get("results") or []
            urls = tuple(
                r["url"] for r in results if isinstance(r, dict) and isinstance(r.get("url"), str)
            )
            if not urls:
                return Failed(_reason(output, "the task succeeded but returned no image"))
            if len(urls) < request.n:  # some of the batch failed (`results[]` with a `code`)
                logger.warning(
                    "dashscope made fewer images than asked",
                    extra={"task_id": task_id, "asked": request.n, "made": len(urls)},
                )
            return Finished(urls, state=SUCCEEDED)
        if status in ENDED_BADLY:
            if output.get("code") in MODERATION_CODES:
                raise moderated(self.title, _reason(output, "content inspection failed"))
            if status == "FAILED":
                return Failed(_reason(output, "no reason given"), state=status)
            return Failed(f"the task ended {status}", state=status)
        return Running(status)  # PENDING, RUNNING


def _reason(output: Mapping[str, Any], default: str) -> str:
    code, message = output.get("code"), output.get("message")
    if code and message:
        return f"{message} ({code})"
    return str(message or code or default)
