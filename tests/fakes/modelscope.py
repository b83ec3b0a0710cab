"""A fake ModelScope API-Inference service, faithful to the wire facts in provider-wire.md.

Upstream docs: https://modelscope.cn/docs/model-service/API-Inference/intro

Serve it with :class:`tests.fakes.server.ServerThread`; its base URL is then ``{server.url}/v1``
like the real ``https://api-inference.modelscope.cn/v1``. Image generation is asynchronous: a
submit (``POST /v1/images/generations`` with ``X-ModelScope-Async-Mode: true``) answers a
``task_id``, and polls (``GET /v1/tasks/{id}`` with ``X-ModelScope-Task-Type: image_generation``)
walk through ``PENDING`` and ``RUNNING`` to ``SUCCEED`` (with ``output_images``) or ``FAILED``,
on wall time. Output images are served under ``/files/``. ``POST /v1/chat/completions`` is the
OpenAI-compatible chat, streaming or not. Tests steer the fake through plain attributes.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.png import make_png, sniff_image

ASYNC_MODE_HEADER: Final = "X-ModelScope-Async-Mode"
TASK_TYPE_HEADER: Final = "X-ModelScope-Task-Type"
TASK_TYPE_IMAGE: Final = "image_generation"

DEFAULT_TOKENS: Final = frozenset({"ms-test-token"})
DEFAULT_IMAGE_MODELS: Final = frozenset(
    {
        "Qwen/Qwen-Image",
        "Tongyi-MAI/Z-Image-Turbo",
        "Qwen/Qwen-Image-Edit",
        "Qwen/Qwen-Image-Edit-2509",
        "Qwen/Qwen-Image-Edit-2511",
        "MAILAND/majicflus_v1",
    }
)
DEFAULT_CHAT_MODELS: Final = frozenset(
    {"Qwen/Qwen3-VL-30B-A3B-Instruct", "Qwen/Qwen3-VL-235B-A22B-Instruct"}
)

AUTH_FAILED: Final = (
    "Authentication failed, please make sure that a valid ModelScope token is supplied."
)
SYNC_NOT_SUPPORTED: Final = (
    "image-gen task currently does not support synchronous calls. "
    f"Please set the header '{ASYNC_MODE_HEADER}: true' to submit an asynchronous task."
)
TASK_NOT_FOUND: Final = "task not found"
DOWNLOAD_FAILED: Final = "Failed to download image from image_url"
RATE_LIMITED: Final = "Rate limit exceeded"

DEFAULT_SIZE: Final = (1024, 1024)
MAX_SIDE: Final = 4096
_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")

Duration: TypeAlias = float | Callable[[dict[str, Any]], float]


def _request_id() -> str:
    return str(uuid.uuid4())


def _errors(status: int, message: str, **extra: Any) -> JSONResponse:
    """An image-endpoint error: ``{"errors": {"message": ...}, "request_id": ...}``."""
    return JSONResponse(
        {"errors": {"message": message, **extra}, "request_id": _request_id()}, status_code=status
    )


def model_quota_answer(model: str, limit: int = 500) -> tuple[int, Any, dict[str, str]]:
    """A 429 for a spent per-model daily quota: ModelScope's per-model quota headers at 0 (the
    per-user ones not; provider-wire.md), the body's text *unconfirmed* (a plausible one)."""
    return (
        429,
        {
            "errors": {"message": f"Request limit exceeded for model {model} today."},
            "request_id": _request_id(),
        },
        {
            "modelscope-ratelimit-requests-limit": "2000",
            "modelscope-ratelimit-requests-remaining": "1500",
            "modelscope-ratelimit-model-requests-limit": str(limit),
            "modelscope-ratelimit-model-requests-remaining": "0",
        },
    )


def model_forbidden_answer(model: str) -> tuple[int, Any, dict[str, str]]:
    """A 403 for one model the token may not use (its text *unconfirmed*)."""
    return (
        403,
        {"errors": {"message": f"You have no access to the model {model}."}},
        {},
    )


def _chat_error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """A chat-endpoint error: chat uses ``error``, not ``errors``."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}, "request_id": _request_id()},
        status_code=status,
    )


def _parse_size(value: object) -> tuple[int, int]:
    """``"WxH"`` as a pair of ints clamped to 1..4096; the default 1024x1024 otherwise."""
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
        width, height = int(m.group(1)), int(m.group(2))
        return max(1, min(width, MAX_SIDE)), max(1, min(height, MAX_SIDE))
    return DEFAULT_SIZE


def _headers_without_auth(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"}


@dataclass
class FakeTask:
    """One image-generation task as the fake remembers it."""

    task_id: str
    model: str
    prompt: str
    body: dict[str, Any]
    created: float  # time.monotonic() at submit
    pending_until: float  # PENDING before this, then RUNNING (or the configured name)
    finishes_at: float  # SUCCEED or FAILED from this monotonic time on
    fail_reason: (
        str | None
    )  # captured at submit: a failed input fetch or FakeModelScope.fail_reason
    inputs: list[bytes] = field(default_factory=list)  # bytes fetched from image_url(s)
    image_urls: list[str] = field(default_factory=list)
    size: tuple[int, int] = DEFAULT_SIZE
    rgb: tuple[int, int, int] = (200, 80, 40)

    def status(self, now: float, running_name: str = "RUNNING") -> str:
        """The status a poll at monotonic time ``now`` sees."""
        if now < self.pending_until:
            return "PENDING"
        if now < self.finishes_at:
            return running_name
        return "FAILED" if self.fail_reason is not None else "SUCCEED"

    @property
    def output_names(self) -> list[str]:
        """File names of the task's output images (one per task, like the real service)."""
        return [f"{self.task_id}-0.png"]


class FakeModelScope:
    """ASGI app faking ModelScope API-Inference; call the instance or use ``.app``.

    Controls (plain attributes, set them from tests):

    - ``tokens``: accepted bearer tokens; ``models``/``chat_models``: known model ids.
    - ``task_duration``: seconds from submit to the end (a float, or a callable taking the
      submitted body); ``pending_seconds``: how long a task stays ``PENDING`` (at most the
      duration; a float, or a callable of the body: an uneven queue, where some tasks wait
      long before they run); ``running_status_name``: the in-progress name after that
      (``"RUNNING"``).
    - ``clock``: the time tasks run on (``time.monotonic``; tests may simulate it).
    - ``fail_reason``: when set, tasks submitted from now on end ``FAILED`` with this message.
    - ``fail_prompts``: prompt -> message: tasks of that prompt end ``FAILED`` with it (as the
      service fails a task its moderation refuses after accepting it).
    - ``submit_override``: ``(status, json_body, headers)`` answered by the next submit, once.
    - ``token_answers``: token -> ``(status, json_body, headers)`` answered to every submit
      with that token (an exhausted daily quota, a revoked token); ``chat_token_answers``
      the same for chat requests.
    - ``model_answers``: ``(token, model)`` -> ``(status, json_body, headers)`` answered to every
      submit for that model with that token (``None``: any token): a per-model quota 429
      (``model_quota_answer``), a 403 for one model.
    - ``poll_errors``: the next N polls answer HTTP 503.
    - ``rate_limit_headers``: add ``modelscope-ratelimit-*`` headers to accepted submits.
    - ``expire_files``: output image links answer 403 AccessDenied like an expired OSS link.
    - ``chat_chunk_delay``: seconds between streamed chat chunks.
    - ``chat_lockstep``: instead, each streamed chunk after the first content one waits for a
      ``chat_go.release()`` (a test's, once it has received the previous one), so a test knows
      what was sent when a chunk arrived (``chat_sent``) whatever the machine's load; a wait
      longer than 10 s sets ``chat_stalled`` and sends the rest at once.
    - ``public_url``: base of output image links; by default the URL the request came in on.
    - ``next_task_ids``: ids the next accepted submissions get, in order (a sample event's task
      id, say); once used up, fresh random ids.

    Records: ``submissions``, ``tasks``, ``polls``, ``fetched_urls``, ``file_requests``,
    ``chat_requests``, ``poll_tokens`` (the bearer token of each poll, in order).
    """

    def __init__(
        self,
        *,
        tokens: set[str] | None = None,
        models: set[str] | None = None,
        chat_models: set[str] | None = None,
        task_duration: Duration = 0.3,
        pending_seconds: Duration = 0.1,
    ) -> None:
        self.tokens: set[str] = set(DEFAULT_TOKENS if tokens is None else tokens)
        self.models: set[str] = set(DEFAULT_IMAGE_MODELS if models is None else models)
        self.chat_models: set[str] = set(
            DEFAULT_CHAT_MODELS if chat_models is None else chat_models
        )
        self.task_duration: Duration = task_duration
        self.pending_seconds: Duration = pending_seconds
        self.running_status_name: str = "RUNNING"
        #: the clock tasks run on (`time.monotonic`; a test may run them on simulated time)
        self.clock: Callable[[], float] = time.monotonic
        self.fail_reason: str | None = None
        self.fail_prompts: dict[str, str] = {}
        self.submit_override: tuple[int, Any, dict[str, str]] | None = None
        self.token_answers: dict[str, tuple[int, Any, dict[str, str]]] = {}
        self.chat_token_answers: dict[str, tuple[int, Any, dict[str, str]]] = {}
        self.model_answers: dict[tuple[str | None, str], tuple[int, Any, dict[str, str]]] = {}
        self.poll_errors: int = 0
        self.rate_limit_headers: bool = False
        self.rate_limit_requests: int = 2000
        self.rate_limit_model_requests: int = 500
        self.expire_files: bool = False
        self.chat_chunk_delay: float = 0.05
        self.chat_lockstep: bool = False
        self.chat_go = threading.Semaphore(0)
        self.chat_sent: int = 0  # content chunks streamed so far
        self.chat_stalled: bool = False
        self.fetch_timeout: float = 10.0
        self.public_url: str | None = None
        self.next_task_ids: list[str] = []

        self.submissions: list[dict[str, Any]] = []
        self.tasks: dict[str, FakeTask] = {}
        self.polls: list[tuple[str, float, str]] = []
        self.poll_tokens: list[str] = []
        self.fetched_urls: list[str] = []
        self.file_requests: list[dict[str, Any]] = []
        self.chat_requests: list[dict[str, Any]] = []
        self.files: dict[str, tuple[bytes, str]] = {}

        self.lock = threading.Lock()
        self._accepted_by_model: dict[str, int] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/images/generations", self._submit, methods=["POST"]),
                Route("/v1/tasks/{task_id}", self._poll, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # ----------------------------------------------------------------- helpers for tests

    def add_file(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        """Serve ``data`` at ``/files/{name}`` (an input for ``image_url``); returns the path."""
        with self.lock:
            self.files[name] = (data, content_type)
        return f"/files/{name}"

    def task_status(self, task_id: str) -> str:
        """The status a poll would see right now (without recording a poll)."""
        with self.lock:
            task = self.tasks[task_id]
        return task.status(self.clock(), self.running_status_name)

    # ----------------------------------------------------------------- auth

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() in self.tokens

    def _base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    # ----------------------------------------------------------------- submit

    async def _submit(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record: dict[str, Any] = {
            "body": body,
            "headers": _headers_without_auth(request.headers),
            "time": time.monotonic(),
        }
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        #: which of the accepted tokens was used (tests of server-held token pools)
        record["token"] = token if token in self.tokens or token in self.token_answers else None
        with self.lock:
            override, self.submit_override = self.submit_override, None
        model = body.get("model") if isinstance(body, dict) else None
        if override is None and isinstance(model, str):
            override = self.model_answers.get((token, model)) or self.model_answers.get(
                (None, model)
            )
        override = override or self.token_answers.get(token)
        if override is not None:
            status, payload, headers = override
            response: Response = JSONResponse(payload, status_code=status, headers=headers)
        else:
            response = await self._submit_checked(request, body, record)
        record["status"] = response.status_code
        with self.lock:
            self.submissions.append(record)
        return response

    async def _submit_checked(
        self, request: Request, body: Any, record: dict[str, Any]
    ) -> Response:
        if not self._authorized(request):
            return _errors(401, AUTH_FAILED)
        if request.headers.get(ASYNC_MODE_HEADER, "").strip().lower() != "true":
            return _errors(400, SYNC_NOT_SUPPORTED)
        if not isinstance(body, dict):
            return _errors(400, "Invalid request body: a JSON object is required.")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            return _errors(400, f"Invalid model id: {model}")
        if model not in self.models:
            return _errors(404, f"The model '{model}' does not exist.")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return _errors(400, "Invalid parameter: prompt is required.")
        image_url = body.get("image_url")
        if image_url is None:
            urls: list[str] = []
        elif isinstance(image_url, str):
            urls = [image_url]
        elif isinstance(image_url, list) and all(isinstance(u, str) for u in image_url):
            urls = list(image_url)
        else:
            return _errors(
                400, "Invalid parameter: image_url must be a string or a list of strings."
            )

        inputs, fetch_error = await self._fetch_inputs(urls)

        duration = self.task_duration(body) if callable(self.task_duration) else self.task_duration
        duration = max(0.0, float(duration))
        queued = self.pending_seconds
        queued = max(0.0, float(queued(body) if callable(queued) else queued))
        created = self.clock()
        with self.lock:
            task_id = self.next_task_ids.pop(0) if self.next_task_ids else uuid.uuid4().hex
        task = FakeTask(
            task_id=task_id,
            model=model,
            prompt=prompt,
            body=body,
            created=created,
            pending_until=created + min(queued, duration),
            finishes_at=created + duration,
            fail_reason=fetch_error
            if fetch_error is not None
            else self.fail_prompts.get(prompt, self.fail_reason),
            inputs=inputs,
            image_urls=urls,
            size=_parse_size(body.get("size")),
            rgb=(int(task_id[0:2], 16), int(task_id[2:4], 16), int(task_id[4:6], 16)),
        )
        with self.lock:
            self.tasks[task_id] = task
            by_model = self._accepted_by_model.get(model, 0) + 1
            self._accepted_by_model[model] = by_model
            total = sum(self._accepted_by_model.values())
        record["task_id"] = task_id
        headers: dict[str, str] = {}
        if self.rate_limit_headers:
            headers = {
                "modelscope-ratelimit-requests-limit": str(self.rate_limit_requests),
                "modelscope-ratelimit-requests-remaining": str(
                    max(0, self.rate_limit_requests - total)
                ),
                "modelscope-ratelimit-model-requests-limit": str(self.rate_limit_model_requests),
                "modelscope-ratelimit-model-requests-remaining": str(
                    max(0, self.rate_limit_model_requests - by_model)
                ),
            }
        return JSONResponse({"task_id": task_id, "request_id": _request_id()}, headers=headers)

    async def _fetch_inputs(self, urls: list[str]) -> tuple[list[bytes], str | None]:
        """GET every input URL like the real service does; the first failure's reason, if any."""
        inputs: list[bytes] = []
        error: str | None = None
        if not urls:
            return inputs, error
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.fetch_timeout), follow_redirects=True, trust_env=False
        ) as client:
            for url in urls:
                with self.lock:
                    self.fetched_urls.append(url)
                try:
                    response = await client.get(url)
                except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                    error = error or f"{DOWNLOAD_FAILED}: {url} ({type(exc).__name__})"
                    continue
                if response.status_code != 200:
                    error = error or f"{DOWNLOAD_FAILED}: {url} (HTTP {response.status_code})"
                    continue
                if sniff_image(response.content) is None:
                    error = error or f"{DOWNLOAD_FAILED}: {url} (not an image)"
                    continue
                inputs.append(response.content)
        return inputs, error

    # ----------------------------------------------------------------- poll

    async def _poll(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        now = self.clock()
        with self.lock:
            transient = self.poll_errors > 0
            if transient:
                self.poll_errors -= 1
        response, answered = self._poll_answer(request, task_id, now, transient)
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        with self.lock:
            self.polls.append((task_id, now, answered))
            self.poll_tokens.append(token)
        return response

    def _poll_answer(
        self, request: Request, task_id: str, now: float, transient: bool
    ) -> tuple[Response, str]:
        if transient:
            return _errors(503, "Service temporarily unavailable, please retry later."), "HTTP 503"
        if not self._authorized(request):
            return _errors(401, AUTH_FAILED), "HTTP 401"
        not_found = JSONResponse(
            {"task_status": "FAILED", "errors": {"code": 500, "message": TASK_NOT_FOUND}}
        )
        if request.headers.get(TASK_TYPE_HEADER, "").strip() != TASK_TYPE_IMAGE:
            return not_found, "FAILED"
        with self.lock:
            task = self.tasks.get(task_id)
        if task is None:
            return not_found, "FAILED"
        status = task.status(now, self.running_status_name)
        if status == "SUCCEED":
            base = self._base_url(request)
            payload: dict[str, Any] = {
                "task_status": status,
                "output_images": [f"{base}/files/{name}" for name in task.output_names],
                "request_id": _request_id(),
            }
        elif status == "FAILED":
            payload = {
                "task_status": status,
                "errors": {"message": task.fail_reason},
                "request_id": _request_id(),
            }
        else:
            payload = {"task_status": status}
        return JSONResponse(payload), status

    # ----------------------------------------------------------------- files

    async def _file(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        with self.lock:
            self.file_requests.append(
                {
                    "name": name,
                    "time": time.monotonic(),
                    "headers": _headers_without_auth(request.headers),
                    "had_authorization": "authorization" in request.headers,
                }
            )
            static = self.files.get(name)
        if static is not None:
            return Response(static[0], media_type=static[1])
        task_id, _, _index = name.rpartition("-")
        with self.lock:
            task = self.tasks.get(task_id)
        if (
            task is None
            or name not in task.output_names
            or task.status(self.clock(), self.running_status_name) != "SUCCEED"
        ):
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        if self.expire_files:
            return _oss_error(403, "AccessDenied", "Request has expired.")
        width, height = task.size
        data = await asyncio.to_thread(make_png, width, height, task.rgb)
        return Response(data, media_type="image/png")

    # ----------------------------------------------------------------- chat

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        with self.lock:
            self.chat_requests.append(
                {
                    "body": body,
                    "headers": _headers_without_auth(request.headers),
                    #: which of the accepted tokens was used (tests of token pools)
                    "token": token if token in self.tokens else None,
                }
            )
        if token in self.chat_token_answers:
            status, payload, headers = self.chat_token_answers[token]
            return JSONResponse(payload, status_code=status, headers=headers)
        if not self._authorized(request):
            return _chat_error(401, AUTH_FAILED, "authentication_error")
        if not isinstance(body, dict):
            return _chat_error(400, "Invalid request body: a JSON object is required.")
        model = body.get("model")
        if not isinstance(model, str) or model not in self.chat_models:
            return _chat_error(404, f"The model '{model}' does not exist.", "not_found_error")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _chat_error(400, "Invalid parameter: messages must be a non-empty list.")
        images = _count_last_user_images(messages)
        reply = f"I see {images} image(s). This is the fake ModelScope vision model."
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {"prompt_tokens": 10, "completion_tokens": len(reply.split()), "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return StreamingResponse(
                self._chat_stream(completion_id, created, model, reply, usage, include_usage),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def _chat_stream(
        self,
        completion_id: str,
        created: int,
        model: str,
        reply: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""}, None)
        for index, piece in enumerate(re.findall(r"\S+\s*", reply)):
            await self._chat_pace(first=index == 0)
            self.chat_sent = index + 1
            yield chunk({"content": piece}, None)
        await self._chat_pace(first=False)
        yield chunk({}, "stop")
        if include_usage:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(payload)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def _chat_pace(self, *, first: bool) -> None:
        """Wait before a streamed chunk: chat_chunk_delay, or in lockstep the test's go."""
        if not self.chat_lockstep:
            await asyncio.sleep(self.chat_chunk_delay)
        elif not first and not self.chat_stalled:
            released = await asyncio.to_thread(self.chat_go.acquire, True, 10.0)
            self.chat_stalled = not released

    # ----------------------------------------------------------------- other paths

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
        return _errors(status, f"{detail}: {request.method} {request.url.path}")


def _count_last_user_images(messages: list[Any]) -> int:
    """How many ``image_url`` parts the last user message carries."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if not isinstance(content, list):
                return 0
            return sum(
                1 for part in content if isinstance(part, dict) and part.get("type") == "image_url"
            )
    return 0


def _oss_error(status: int, code: str, message: str) -> Response:
    """An object-storage error body, XML like OSS and S3 answer."""
    request_id = uuid.uuid4().hex.upper()[:24]
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error>\n"
        f"  <Code>{code}</Code>\n"
        f"  <Message>{message}</Message>\n"
        f"  <RequestId>{request_id}</RequestId>\n"
        "  <HostId>modelscope-fake.oss-cn-hangzhou.aliyuncs.com</HostId>\n"
        "</Error>\n"
    )
    return Response(xml, status_code=status, media_type="application/xml")
