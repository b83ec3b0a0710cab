"""`Jobs`: submit and look up durable image jobs, for the API function.

- A job id is `job-` and 32 hex digits: random, or, with an `Idempotency-Key`, derived from that
  key and the caller's identity (a hash of the bearer token, never the token), so a retried
  submission finds its job instead of starting (and paying for) another. The same key with a
  different request is a 409.
- Input images are in the bucket before the execution starts; the execution input carries keys
  and URLs only, and the provider key sealed with KMS (`imagegw.infra.sealer`).
- Status comes from the execution itself (`JobRunner`); a job is readable only with the bearer
  token that submitted it (anyone else gets the same 404 as for an unknown id).
- A job records the front end that submitted it (`JobSpec.api`): the Images API's jobs are
  `image.job` objects, chat's `chat.completion.job`. While one runs, its status carries the
  provider's progress as the execution's last task left it (when the runner can tell it).
- A finished job's view carries the job's output (its stored copies; an image the bucket did
  not take as the provider's link, or as the image itself, a data URI); the front end renders
  it in the shape of the API that submitted it (`imagegw.frontends.job_answers`).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import anyio.to_thread

from imagegw.errors import (
    ConfigurationError,
    ConflictError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from imagegw.infra.config import Settings
from imagegw.infra.executions import Execution, JobRunner
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.providers.base import GenerationRequest
from imagegw.runners.stepfunctions.delivery import notified
from imagegw.runners.stepfunctions.machine import StateMachineService
from imagegw.runners.stepfunctions.schema import (
    JOB_ID,
    STATE_LIMIT,
    Front,
    InputRef,
    JobInput,
    JobOutput,
    JobProgress,
    JobQuota,
    JobSpec,
    JobStatus,
    ResponseFormat,
    error_body,
    parse_input,
)

#: the job object's `object`, by the front end that submitted it
OBJECTS: Final[dict[Front, str]] = {"images": "image.job", "chat": "chat.completion.job"}
MAX_IDEMPOTENCY_KEY: Final = 255
_OWNER_DOMAIN: Final = b"imagegw-job-owner\0"
_JOB_DOMAIN: Final = "imagegw-job-id\0"


def owner_of(token: str) -> str:
    """Who a job belongs to: a hash of the caller's bearer token (the token is never kept)."""
    return hashlib.sha256(_OWNER_DOMAIN + token.encode()).hexdigest()


def job_id_for(owner: str, idempotency_key: str | None) -> str:
    """A job id: derived from the caller and their Idempotency-Key, else random."""
    if idempotency_key is None:
        return f"job-{secrets.token_hex(16)}"
    digest = hashlib.sha256(f"{_JOB_DOMAIN}{owner}\0{idempotency_key}".encode()).hexdigest()
    return f"job-{digest[:32]}"


def check_idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header's value, checked; None when absent."""
    if value is None:
        return None
    key = value.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequestError(
            f"'Idempotency-Key' must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return key


def fingerprint(
    request: GenerationRequest,
    inputs: Sequence[str | ImageBytes],
    response_format: ResponseFormat,
    api: Front = "images",
) -> str:
    """A hash of what was asked (not of who asked, nor of the key), the front end included:
    the same Idempotency-Key sent to the Images API and to chat is two requests (a 409)."""
    asked = {
        "api": api,
        "provider": request.provider,
        "model": request.model,
        "kind": str(request.kind),
        "prompt": request.prompt,
        "options": dict(request.options),
        "n": request.n,
        "response_format": response_format,
        "images": [
            item if isinstance(item, str) else hashlib.sha256(item.data).hexdigest()
            for item in inputs
        ],
    }
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: what Submit adds to the job's state at most (the tasks' progress and errors; images kept
#: inline are budgeted apart, `steps.BUDGET_INLINE`): an input over STATE_LIMIT less this would
#: fail at Submit with States.DataLimitExceeded, which no Catch takes (the quota never given
#: back), so it is refused at submission
SUBMIT_HEADROOM: Final = 32 * 1024
INPUT_LIMIT: Final = STATE_LIMIT - SUBMIT_HEADROOM


#: the most polls of one job: the loop writes about 9 history events a poll (Check, a Wait,
#: the Poll task), and an execution's history holds 25,000 events; the rest is headroom for
#: Submit, Store and retried tasks (`tests/unit/test_template.py` counts them)
MAX_POLLS: Final = 2400


def poll_wait(settings: Settings) -> int:
    """Seconds between a job's polls: JOB_POLL_INTERVAL, or longer when JOB_TIMEOUT would
    take more than MAX_POLLS of them (0 stays 0: the local run's and tests' pace; the template
    takes 1 s at least)."""
    if settings.job_poll_interval == 0:
        return 0
    return max(settings.job_poll_interval, math.ceil(settings.job_timeout / MAX_POLLS))


def max_polls(settings: Settings) -> int:
    """How many poll intervals JOB_TIMEOUT allows at `poll_wait` (at least one, at most
    MAX_POLLS): the job's deadline (waits after failed polls count the intervals they last)."""
    return min(MAX_POLLS, max(1, math.ceil(settings.job_timeout / max(1, poll_wait(settings)))))


@dataclass(frozen=True)
class Hold:
    """Images reserved on a gateway key's quota for a job about to start: what the job carries
    to settle it (`quota`), and how to give them back when the job does not start."""

    quota: JobQuota
    release: Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it."""

    id: str
    status: JobStatus
    created: int
    model: str
    response_format: ResponseFormat = "url"
    n: int = 1
    output: JobOutput | None = None
    #: the OpenAI-shaped error body when failed
    error: dict[str, Any] | None = None
    #: the front end that submitted it: the shape of its answer
    api: Front = "images"
    #: while it runs, the provider's progress as its last poll saw it (`progress_of`)
    progress: dict[str, Any] | None = None
    #: a job with a `webhook_url`: its delivery, `{status, attempts, last_status_code}`
    webhook: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": OBJECTS[self.api],
            "status": self.status,
            "created": self.created,
        }


def progress_of(progress: JobProgress) -> dict[str, Any]:
    """A running job's progress as the status endpoint shows it: the lifecycle's summary
    (`imagegw.core.lifecycle.Summary`, as the streamed chat answer reports it): the provider's
    state of the tasks still running, how many of the provider calls ended, of how many, and
    the provider's task ids."""
    summary = progress.book().summary()
    return {
        "state": summary.state,
        "done": summary.done,
        "total": summary.total,
        "task_ids": list(summary.task_ids),
    }


class Jobs(StateMachineService):
    """Durable jobs over a `JobRunner` (Step Functions unless one is given)."""

    ARN_SETTING = "job_state_machine_arn"
    DISABLED = "Durable jobs"
    DISABLED_CODE = "jobs_disabled"

    def __init__(
        self,
        settings: Settings,
        store: ImageStore,
        *,
        runner: JobRunner | None = None,
        sealer: KeySealer | None = None,
    ) -> None:
        super().__init__(settings, runner=runner, sealer=sealer)
        self.store = store

    async def _call(self, what: str, function: Any, *args: Any) -> Any:
        """A runner call in a worker thread; AWS failures become a 5xx that names no secret."""
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except GatewayError:
            raise
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            logger.warning("job runner call failed", extra={"call": what, "error": repr(exc)})
            # nothing started: a failed StartExecution started no execution, and one retried
            # with the same name and input is the same execution (Step Functions' idempotency)
            raise ServiceUnavailableError(
                f"The job service failed ({what}: {code or type(exc).__name__}); nothing was "
                "started, so trying again is safe.",
                code="jobs_unavailable",
                retryable=True,
            ) from None

    async def submit(
        self,
        request: GenerationRequest,
        *,
        inputs: Sequence[str | ImageBytes] = (),
        response_format: ResponseFormat = "url",
        idempotency_key: str | None = None,
        api: Front = "images",
        owner: str | None = None,
        key_ref: str | None = None,
        reserve: Callable[[], Awaitable[Hold | None]] | None = None,
        webhook: str | None = None,
    ) -> JobView:
        """Start a job for `request` (its images given as `inputs`), answering front end `api`,
        or find the one this caller started with the same Idempotency-Key.

        `owner`: who may read it (`owner_of` the caller's bearer token; default: of the
        request's key, the client's own token). `key_ref`: a reference to a server-held token
        (`pool:<provider>:<token id>`, a gateway key's job) carried in place of the sealed key:
        the job steps read the token from the access secret.

        `reserve`: counts the job on a gateway key's quota (raising its 429 when over), called
        only when a new execution is to start: a replayed submission counts nothing. It is
        called before anything is staged in the bucket, and what it reserved is given back
        when the execution does not start (a failure, or another submission won the race)."""
        runner = self.runner
        owner = owner or owner_of(request.api_key.get_secret_value())
        asked = fingerprint(request, inputs, response_format, api)
        job_id = job_id_for(owner, idempotency_key)
        logger.thread_safe_append_keys(job_id=job_id)  # on the request's lines from here on
        if idempotency_key is not None:
            existing = await self._call("describe", runner.describe, job_id)
            if existing is not None:
                return await self._replay(existing, asked)
        hold = await reserve() if reserve is not None else None
        try:
            started = await self._start(
                job_id, owner, asked, request, inputs, response_format, api, key_ref, hold, webhook
            )
        except BaseException:
            if hold is not None:
                await hold.release()
            raise
        if started is None:  # another submission with this Idempotency-Key started it
            if hold is not None:
                await hold.release()
            existing = await self._call("describe", runner.describe, job_id)
            if existing is None:
                raise GatewayError(
                    "The job could not be started; try again.", code="jobs_unavailable"
                )
            return await self._replay(existing, asked)
        return started

    async def _start(
        self,
        job_id: str,
        owner: str,
        asked: str,
        request: GenerationRequest,
        inputs: Sequence[str | ImageBytes],
        response_format: ResponseFormat,
        api: Front,
        key_ref: str | None,
        hold: Hold | None,
        webhook: str | None = None,
    ) -> JobView | None:
        """Stage the inputs and start the execution; None when one of that name exists."""
        spec = JobSpec(
            id=job_id,
            owner=owner,
            fingerprint=asked,
            created=int(time.time()),
            provider=request.provider,
            model=request.model,
            kind=request.kind,
            prompt=request.prompt,
            options=dict(request.options),
            n=request.n,
            images=await self._stage(inputs),
            response_format=response_format,
            api=api,
            quota=hold.quota if hold is not None else None,
            webhook=webhook,
        )
        if key_ref is not None:
            sealed = key_ref
        else:
            sealed = await anyio.to_thread.run_sync(self.sealer.seal, request.api_key, job_id)
        payload = JobInput(
            job=spec,
            key=sealed,
            wait_seconds=poll_wait(self.settings),
            max_polls=max_polls(self.settings),
        ).model_dump_json()
        if len(payload.encode()) > INPUT_LIMIT:
            raise InvalidRequestError(
                f"The job is too large to run asynchronously: Step Functions takes 256 KiB "
                f"of state, and the job's steps add their progress to it (at most "
                f"{INPUT_LIMIT // 1024} KiB here).",
                code="job_too_large",
            )
        if not await self._call("start", self.runner.start, job_id, payload):
            return None
        logger.info(
            "job started",
            extra={
                "job_id": job_id,
                "api": api,
                "provider": spec.provider,
                "model": spec.model,
                "n": spec.n,
                "images": len(spec.images),
            },
        )
        return JobView(
            id=job_id,
            status="queued",
            created=spec.created,
            model=spec.model,
            response_format=response_format,
            n=spec.n,
            api=api,
        )

    async def _stage(self, inputs: Sequence[str | ImageBytes]) -> tuple[InputRef, ...]:
        """Input images into the bucket before the execution starts (`ImageStore.place`):
        uploads and this gateway's own lasting links as keys, other URLs as they are."""
        return tuple(
            InputRef(key=placed.key, url=placed.url)
            for placed in await self.store.place_all(inputs)
        )

    async def _replay(self, existing: Execution, asked: str) -> JobView:
        """The job a retried submission (same caller, same Idempotency-Key) already started."""
        data = parse_input(existing.input)
        if data is None or data.job.fingerprint != asked:
            raise ConflictError(
                "This Idempotency-Key was used for a different request. "
                "Use a new key for a new job.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return await self._view(existing, data)

    async def status(self, job_id: str, token: str) -> JobView:
        """The job `job_id` if the caller (by bearer token) submitted it; else a 404."""
        missing = NotFoundError(f"No job '{job_id[:80]}'.", param="id", code="job_not_found")
        runner = self.runner
        if not JOB_ID.match(job_id):
            raise missing
        logger.thread_safe_append_keys(job_id=job_id)  # on the request's lines from here on
        existing = await self._call("describe", runner.describe, job_id)
        data = parse_input(existing.input) if existing is not None else None
        if existing is None or data is None or data.job.owner != owner_of(token):
            raise missing
        return await self._view(existing, data)

    async def _view(self, execution: Execution, data: JobInput) -> JobView:
        view = await self._outcome(execution, data)
        if data.job.webhook is None:
            return view
        return await notified(view, execution, self.runner, self._call)

    async def _outcome(self, execution: Execution, data: JobInput) -> JobView:
        spec = data.job
        view = JobView(
            id=spec.id,
            status="in_progress",
            created=spec.created,
            model=spec.model,
            response_format=spec.response_format,
            n=spec.n,
            api=spec.api,
        )
        status = execution.status
        if status in ("RUNNING", "PENDING_REDRIVE"):
            # a task that left its progress has the provider's answer: Submit is over
            progress = await self._progress(spec.id)
            if progress is not None:
                return replace(view, progress=progress)
            submitted = await self._call("history", self.runner.submitted, spec.id)
            return view if submitted else replace(view, status="queued")
        if status == "SUCCEEDED":
            try:
                output = JobOutput.model_validate_json(execution.output or "")
            except ValueError:
                raise ConfigurationError(
                    "The job's output cannot be read.", code="job_output_unreadable"
                ) from None
            return replace(view, status="succeeded", output=output)
        if status == "TIMED_OUT":
            error = error_body("States.Timeout", None)
        elif status == "ABORTED":
            error = GatewayError("The job was stopped.", code="job_aborted").body()
        else:
            error = error_body(execution.error, execution.cause)
        return replace(view, status="failed", error=error)

    async def _progress(self, job_id: str) -> dict[str, Any] | None:
        """The running job's progress, when the runner can tell it (Step Functions can); a
        history that cannot be read leaves it out (the status stands without it)."""
        read = getattr(self.runner, "progress", None)
        if read is None:
            return None
        try:
            text = await self._call("history", read, job_id)
            return None if text is None else progress_of(JobProgress.model_validate_json(text))
        except (GatewayError, ValueError):
            return None
