"""What crosses the state machine (`statemachine/image_job.asl.json`), as pydantic models.

The execution input is `JobInput`: the job (`JobSpec`, no secret in it), the provider key
sealed with KMS, and the loop's pace. Each task gets part of the state and returns JSON that the
state machine keeps at `$.progress` (`JobProgress`) or, at the end, as the execution's output
(`JobOutput`). Images rarely travel through the state (256 KiB limit): inputs are keys in the
bucket or URLs, results are provider URLs or names of copies under images/; only a small image a
provider answered inline, which the bucket failed to take, is kept as a data URI (`ImageRef`).

A job that fails carries the gateway's error as a Step Functions error name (the error class,
e.g. `ProviderError`) and cause (its OpenAI-shaped body as JSON), so the status endpoint gives
the provider's reason in the gateway's error shape (`error_body`). A step that raises
`TransientJobError` (retried by the state machine) gives the same body as its message, so a job
whose retries ran out fails with the gateway's error (a rate limit stays a `rate_limit_error`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imagegw import errors
from imagegw.core.deliver import Ref, Stored
from imagegw.core.lifecycle import Book, Task
from imagegw.core.schedule import Timing
from imagegw.errors import (
    DeadlineExceededError,
    GatewayError,
    ProviderError,
    TransientJobError,
)
from imagegw.infra.media import is_data_uri
from imagegw.providers.base import ModelKind

#: job ids are execution names: `job-` and 32 hex digits (random, or derived from the caller's
#: Idempotency-Key)
JOB_ID: Final = re.compile(r"^job-[0-9a-f]{32}$")
#: Step Functions' limit on the data of one state (and of the execution input)
STATE_LIMIT: Final = 256 * 1024

JobStatus = Literal["queued", "in_progress", "succeeded", "failed"]
ResponseFormat = Literal["url", "b64_json"]
#: the front end a job answers: the Images API (`data`) or chat (a `chat.completion`)
Front = Literal["images", "chat"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class InputRef(_Model):
    """An input image: a key in the bucket (uploads/, or a stored result), or a URL the provider
    fetches itself."""

    key: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _one(self) -> InputRef:
        if (self.key is None) == (self.url is None):
            raise ValueError("an input image has a key or a url")
        return self


class ImageRef(_Model):
    """A result image: the name of a copy under images/ (a lasting /v1/files link), or the
    provider's URL (until it is copied, or when it could not be), or the image itself as a data
    URI (a small image a provider answered inline while the bucket failed)."""

    name: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ImageRef:
        if (self.name is None) == (self.url is None):
            raise ValueError("a result image has a name or a url")
        return self

    @classmethod
    def of(cls, ref: Ref) -> ImageRef:
        return cls(name=ref.name) if isinstance(ref, Stored) else cls(url=ref)

    @property
    def ref(self) -> Ref:
        """As the core delivers it (`imagegw.core.deliver`)."""
        return Stored(self.name) if self.name is not None else str(self.url)

    @property
    def inline(self) -> bool:
        """Whether the image itself travels in the state (a data URI)."""
        return self.url is not None and is_data_uri(self.url)


class JobQuota(_Model):
    """The reservation a gateway key's job holds on the key's daily quota, to settle when the
    job ends (`imagegw.access.gate.Access.settle_job`): the key's keyed hash (the table's
    key, no secret) and when the images were reserved (the day they count on)."""

    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    at: float


class JobSpec(_Model):
    """The job as the client asked for it, checked; no secret in it."""

    id: str = Field(pattern=JOB_ID.pattern)
    #: a hash of the caller's bearer token: who may read the job (never the token)
    owner: str
    #: a hash of what was asked, to tell a retried submission from a different one
    fingerprint: str
    #: Unix time of the submission
    created: int
    provider: str
    model: str
    kind: ModelKind
    prompt: str
    options: dict[str, Any] = Field(default_factory=dict)
    n: int = Field(default=1, ge=1)
    images: tuple[InputRef, ...] = ()
    response_format: ResponseFormat = "url"
    #: which front end submitted the job, so its status answers in that API's shape
    api: Front = "images"
    #: a gateway key's reservation on its quota (None: a client's own token, no quota)
    quota: JobQuota | None = None
    #: where the job's end is POSTed, signed (README "Webhooks"); checked before it started
    webhook: str | None = None


class JobInput(_Model):
    """The execution input."""

    job: JobSpec
    #: the provider key, sealed with KMS for this job id (`imagegw.infra.sealer`)
    key: str
    #: seconds between polls (the Wait state's `SecondsPath`)
    wait_seconds: int = Field(ge=0)
    #: poll intervals before the job fails as timed out: the job's deadline (`JobProgress.polls`)
    max_polls: int = Field(ge=1)


class ErrorInfo(_Model):
    """A gateway error as it travels in the state: its class name, OpenAI-shaped body, and
    whether it forbids a retry (the final-error rule reads it: `lifecycle.final_error`)."""

    name: str
    body: dict[str, Any]
    #: the error's `retryable` (None: decided by its status, `errors.render`)
    retryable: bool | None = None

    @classmethod
    def of(cls, exc: GatewayError) -> ErrorInfo:
        return cls(name=type(exc).__name__, body=exc.body(), retryable=exc.retryable)

    @property
    def message(self) -> str:
        return str(self.body.get("error", {}).get("message", ""))

    def error(self) -> GatewayError:
        """The gateway error again (its class by name; `GatewayError` for an unknown one)."""
        cls = getattr(errors, self.name, None)
        if not (isinstance(cls, type) and issubclass(cls, GatewayError)):
            cls = GatewayError
        inner = self.body.get("error", {})
        exc = cls.__new__(cls)
        GatewayError.__init__(
            exc,
            self.message,
            param=inner.get("param"),
            code=inner.get("code"),
            retryable=self.retryable,
        )
        return exc


class Clocked(_Model):
    """`imagegw.core.schedule.Timing` as it travels in the state (epoch seconds)."""

    submitted: float
    polls: int = 0
    queued_seen: float | None = None
    running_seen: float | None = None
    last_running: float | None = None

    @classmethod
    def of(cls, timing: Timing) -> Clocked:
        return cls(**asdict(timing))

    def timing(self) -> Timing:
        return Timing(**self.model_dump())


class TaskProgress(_Model):
    """One provider call (`Provider.split`): its task while it runs, then its images or why it
    failed. While it runs, `failures` counts the polls in a row that got no usable answer (a
    5xx, an unreadable answer, no connection) and `last_error` holds the latest: the paid task
    may still finish, so such polls are tried again until the job's deadline."""

    task_id: str | None = None
    state: str = "SUBMITTED"
    images: tuple[ImageRef, ...] = ()
    error: ErrorInfo | None = None
    failures: int = Field(default=0, ge=0)
    last_error: ErrorInfo | None = None
    #: what the polls saw of its run (epoch seconds; `imagegw.core.schedule.Timing`)
    timing: Clocked | None = None

    @property
    def ended(self) -> bool:
        return bool(self.images) or self.error is not None

    def task(self) -> Task[ImageRef]:
        """As the lifecycle keeps it (`imagegw.core.lifecycle.Task`)."""
        return Task(
            task_id=self.task_id,
            state=self.state,
            images=self.images,
            error=None if self.error is None else self.error.error(),
            failures=self.failures,
            last_error=None if self.last_error is None else self.last_error.error(),
            timing=None if self.timing is None else self.timing.timing(),
        )

    @classmethod
    def of(cls, task: Task[ImageRef]) -> TaskProgress:
        return cls(
            task_id=task.task_id,
            state=task.state,
            images=task.images,
            error=None if task.error is None else ErrorInfo.of(task.error),
            failures=task.failures,
            last_error=None if task.last_error is None else ErrorInfo.of(task.last_error),
            timing=None if task.timing is None else Clocked.of(task.timing),
        )


class JobProgress(_Model):
    """Where the job stands, kept at `$.progress`. `error` and `cause` are set when it failed:
    the Fail state's `ErrorPath` and `CausePath`.

    `polls` counts poll intervals used (JOB_POLL_INTERVAL, at least 1 s each): one a poll, and a
    longer wait after failed polls counts the intervals it lasted, so the Choice state's limit
    (`max_polls`) stays the job's deadline. `backoff` is the wait before the next poll after
    failed polls (the Backoff state's `SecondsPath`); 0: the usual pace (the Wait state)."""

    status: Literal["running", "succeeded", "failed"]
    polls: int = 0
    tasks: tuple[TaskProgress, ...]
    error: str | None = None
    cause: str | None = None
    backoff: int = Field(default=0, ge=0)
    #: the wait before the next poll predicted from the model's run time (the Predicted
    #: state's `SecondsPath`); 0: none predicted (the usual pace, or Backoff)
    wait: int = Field(default=0, ge=0)
    #: a gateway key's job: the server-held token its tasks were submitted with (a reference,
    #: `pool:<provider>:<token id>`, never the token), which Poll uses in preference to the
    #: execution's `key` (Submit may have failed over to the pool's next token)
    key: str | None = Field(default=None, pattern=r"^pool:")

    @classmethod
    def of(
        cls,
        tasks: Sequence[TaskProgress],
        polls: int = 0,
        backoff: int = 0,
        wait: int = 0,
        key: str | None = None,
    ) -> JobProgress:
        """Running until every task ended; then succeeded when any made an image, else failed
        with the job's one error (`imagegw.core.lifecycle.final_error`)."""
        return cls.of_book(Book(tuple(task.task() for task in tasks)), polls, backoff, wait, key)

    @classmethod
    def of_book(
        cls,
        book: Book[ImageRef],
        polls: int = 0,
        backoff: int = 0,
        wait: int = 0,
        key: str | None = None,
    ) -> JobProgress:
        """`of`, from the lifecycle's task book."""
        tasks = tuple(TaskProgress.of(task) for task in book.tasks)
        status = book.status()
        if status == "running":
            return cls(
                status="running",
                polls=polls,
                tasks=tasks,
                backoff=backoff,
                wait=0 if backoff else wait,
                key=key,
            )
        if status == "succeeded":
            return cls(status="succeeded", polls=polls, tasks=tasks, key=key)
        final = ErrorInfo.of(book.final_error())
        return cls(
            status="failed",
            polls=polls,
            tasks=tasks,
            error=final.name,
            cause=json.dumps(final.body, separators=(",", ":")),
            key=key,
        )

    def book(self) -> Book[ImageRef]:
        """The tasks as the lifecycle keeps them."""
        return Book(tuple(task.task() for task in self.tasks))

    @property
    def made(self) -> int:
        """Images the tasks made so far."""
        return sum(len(task.images) for task in self.tasks)


class SubmitEvent(_Model):
    job: JobSpec
    key: str
    #: the job's pace (`JobInput`); absent in events of older state machines
    wait_seconds: int = Field(default=0, ge=0)


class PollEvent(_Model):
    job: JobSpec
    key: str
    progress: JobProgress
    #: the job's pace and deadline (`JobInput`); absent in events of older state machines
    wait_seconds: int = Field(default=0, ge=0)
    max_polls: int | None = Field(default=None, ge=1)


class StoreEvent(_Model):
    job: JobSpec
    progress: JobProgress


class ReleaseEvent(_Model):
    """The Release state's event (the Store function's other shape): Submit's retries ran out
    with nothing started, so the job's quota reservation is given back whole."""

    job: JobSpec
    release: Literal[True]


class JobOutput(_Model):
    """The execution's output: the images in order, and why the calls that made none failed."""

    images: tuple[ImageRef, ...]
    failures: tuple[str, ...] = ()
    task_ids: tuple[str, ...] = ()


def _gateway_body(text: str) -> dict[str, Any] | None:
    """`text` when it is a gateway error body as JSON (`{"error": {"message": ...}}`)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    inner = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        return {"error": inner}
    return None


def error_body(error: str | None, cause: str | None) -> dict[str, Any]:
    """The OpenAI-shaped error of a failed execution, from its Step Functions error and cause.

    The gateway's own failures carry their body as the cause. A task that kept failing
    transiently carries Lambda's error document, whose message is the gateway error's body (or,
    from KMS and older tasks, a plain message of ours; neither holds a secret). Anything else
    (a crash, a Step Functions error) is not shown as it is.
    """
    if cause:
        body = _gateway_body(cause)
        if body is not None:
            return body
        try:
            parsed = json.loads(cause)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and error == TransientJobError.__name__:
            message = parsed.get("errorMessage")
            if isinstance(message, str):
                body = _gateway_body(message)
                if body is not None:
                    return body
                return ProviderError(message, code="provider_unavailable").body()
    if error == DeadlineExceededError.__name__ or error == "States.Timeout":
        return DeadlineExceededError(
            cause or "The job ran past its time limit.", code="deadline_exceeded"
        ).body()
    return GatewayError(
        f"The job failed unexpectedly ({error or 'no error name'}). See the gateway's logs.",
        code="job_failed",
    ).body()


def parse_input(text: str | None) -> JobInput | None:
    """An execution's input, or None when it is not a job's."""
    if not text:
        return None
    try:
        return JobInput.model_validate_json(text)
    except ValidationError:
        return None
