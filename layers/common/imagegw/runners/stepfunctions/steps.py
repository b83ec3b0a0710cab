"""The work of the state machine's task functions (`functions/job_submit|job_poll|job_store`).

Each step takes the state the ASL file hands it and returns JSON for the state. The provider is
driven through the same two calls as the interactive loop (`Provider.split`, `start`, `check`):

- `submit` opens the sealed key and starts one provider call per part of the job; a synchronous
  provider finishes here (its images go straight to Store);
- `poll` asks about the tasks still running;
- `store` copies the result images into the bucket under images/ and outputs their names.

A submission is paid, so it is retried (by the state machine, `TransientJobError`) only when
nothing started: every call refused for rate, the provider unreachable before anything was sent,
the bucket failing while input images are read. The error carries the gateway's error body, so
a job whose retries ran out fails with it (`schema.error_body`).

A paid task is never given up on early: a poll that gets no usable answer (a 5xx, an unreadable
answer, no connection) is recorded in the task's progress and polled again after a growing wait
(`Progress.backoff`), until the job's deadline; the job then fails naming the last error.

A paid result is never lost to the bucket: a result that cannot be copied keeps the provider's
link (Store). Images a provider answered inline (data URIs) are copied into the bucket at once,
with bounded retries in the step (running the step again would pay for the generation again);
when the bucket still fails, a small image stays inline in the state (well under its 256 KiB
limit) and Store tries again, and a larger one fails its task with `storage_unavailable`.
Nothing here logs or returns the key.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx
from pydantic import SecretStr

from imagegw.access.shared_estimates import estimates_for
from imagegw.core.advance import Made, Submitted, Working, advance, start_leased
from imagegw.core.deliver import Ref, copy_result
from imagegw.core.estimates import Estimates, learn, queue_of
from imagegw.core.plan import restore
from imagegw.core.schedule import Key, bucket, job_wait
from imagegw.errors import (
    ConfigurationError,
    DeadlineExceededError,
    GatewayError,
    StorageError,
    TransientJobError,
    TransientProviderError,
)
from imagegw.infra.clients import provider_client
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes, InputImage, is_data_uri
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.providers import Provider, lookup, priors
from imagegw.providers.base import (
    GenerationRequest,
    Started,
    TaskStatus,
)
from imagegw.redaction import protect
from imagegw.runners.stepfunctions.schema import (
    STATE_LIMIT,
    Clocked,
    ErrorInfo,
    ImageRef,
    JobOutput,
    JobSpec,
    PollEvent,
    Progress,
    ReleaseEvent,
    StoreEvent,
    SubmitEvent,
    TaskProgress,
)

if TYPE_CHECKING:
    from imagegw.access.gate import Access, PoolLease

Step = Callable[[Mapping[str, Any], "Tools"], Awaitable[dict[str, Any]]]

#: seconds between the attempts to save a result image in the bucket within one step (boto3
#: retries each attempt too); no attempt starts later than `SAVE_RETRY_WINDOW` seconds after
#: the first, well within the task functions' timeouts
SAVE_RETRY_DELAYS: Final[tuple[float, ...]] = (1.0, 2.0, 4.0, 8.0)
SAVE_RETRY_WINDOW: Final = 30.0
#: the most that images kept inline (the bucket failed) may take of the state, with the job
BUDGET_INLINE: Final = STATE_LIMIT // 2
#: the longest wait between polls after failed polls, unless JOB_POLL_INTERVAL is longer
BACKOFF_MAX: Final = 60


@dataclass(frozen=True)
class Tools:
    """What a step works with; made fresh for each invocation."""

    settings: Settings
    #: the providers' APIs (the owner's base URLs)
    client: httpx.AsyncClient
    store: ImageStore
    sealer: KeySealer
    #: URLs the client sent (input images), through the SSRF guard
    fetcher: Fetcher
    #: result images the provider links to, through the guard (the providers' hosts trusted)
    result_fetcher: Fetcher


#: learned run times for predicted waits: chosen by the first step that needs them (`estimates`),
#: then kept by the instance; tests may set it
ESTIMATES: Estimates | None = None
#: the steps' clock: epoch seconds, as the steps of one job run on different instances
clock: Callable[[], float] = time.time


class _Instance(threading.local):
    """One event loop and one provider client per Lambda instance (per thread, where several
    executions share a process: `make run`), so a warm instance reuses its connections."""

    runner: asyncio.Runner | None = None
    client: httpx.AsyncClient | None = None


_INSTANCE = _Instance()


def _instance_client(settings: Settings) -> httpx.AsyncClient:
    if _INSTANCE.client is None or _INSTANCE.client.is_closed:
        _INSTANCE.client = provider_client(settings)
    return _INSTANCE.client


@asynccontextmanager
async def tools(
    settings: Settings, client: httpx.AsyncClient | None = None
) -> AsyncIterator[Tools]:
    """What one step works with; the provider client is `client` (default: a new one for
    this step only)."""
    fetcher, result_fetcher = Fetcher(settings), Fetcher.for_results(settings)
    own = client is None
    api = client or provider_client(settings)
    try:
        yield Tools(
            settings=settings,
            client=api,
            store=ImageStore(settings),
            sealer=KeySealer(settings.job_key_id, settings.aws_region),
            fetcher=fetcher,
            result_fetcher=result_fetcher,
        )
    finally:
        await fetcher.aclose()
        await result_fetcher.aclose()
        if own:
            await api.aclose()


def run(step: Step, event: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Run one step to completion (the task functions' synchronous entry), on the instance's
    event loop with its provider client."""
    config = settings or Settings.from_env()

    async def main() -> dict[str, Any]:
        async with tools(config, _instance_client(config)) as kit:
            return await step(event, kit)

    if _INSTANCE.runner is None:
        _INSTANCE.runner = asyncio.Runner()
    return _INSTANCE.runner.run(main())


def _provider(spec: JobSpec, kit: Tools) -> Provider:
    return lookup(spec.provider)(kit.settings, kit.client, kit.fetcher)


def _request(
    spec: JobSpec, key: SecretStr, images: tuple[InputImage, ...] = ()
) -> GenerationRequest:
    return restore(
        spec.provider, spec.model, spec.kind, spec.prompt, key, spec.options, spec.n, images
    )


#: how a job of a gateway key names its server-held token in place of a sealed key
POOL_REF: Final = "pool:"


def _removed() -> ConfigurationError:
    return ConfigurationError(
        "The server-held provider token this job was started with was removed.",
        code="provider_token_removed",
    )


def _access(kit: Tools) -> Access:
    from imagegw.access.gate import Access

    return Access(kit.settings)


async def open_key(sealed: str, job_id: str, kit: Tools) -> SecretStr:
    """The provider token of a job: the client's, sealed for this job with KMS, or a
    server-held one named by reference (`pool:<provider>:<token id>`), read from the access
    secret. A token the owner removed since fails the job (ConfigurationError)."""
    if not sealed.startswith(POOL_REF):
        return kit.sealer.open(sealed, job_id)
    token = await _access(kit).token_by_ref(sealed)
    if token is None:
        raise _removed()
    return token


async def _open(sealed: str, job_id: str, kit: Tools) -> tuple[SecretStr, PoolLease | None]:
    """The token Submit starts with, and for a server-held one its lease on the pool (to fail
    over to the next token): the referenced token, or the next one not set aside."""
    if not sealed.startswith(POOL_REF):
        return kit.sealer.open(sealed, job_id), None
    leased = await _access(kit).lease_at(sealed)
    if leased is None:
        raise _removed()
    return leased.token, leased


async def settle(spec: JobSpec, made: int, kit: Tools) -> None:
    """Settle a gateway key's job's quota reservation (none: nothing to do): the images not
    made given back, those made counted in the month; once per job however often a step runs
    (`Access.settle_job`), never failing the job."""
    if spec.quota is None:
        return
    await _access(kit).settle_job(spec.id, spec.quota.key, spec.model, spec.n, made, spec.quota.at)


async def _ended(spec: JobSpec, progress: Progress, kit: Tools) -> dict[str, Any]:
    """A step's progress as JSON, the quota settled first when it failed (nothing made)."""
    if progress.status == "failed":
        await settle(spec, 0, kit)
    return progress.model_dump(mode="json")


def retry_later(exc: GatewayError) -> TransientJobError:
    """The error that has the state machine run the step again; its message is `exc`'s body,
    which the job fails with when the retries run out (`schema.error_body`)."""
    return TransientJobError(json.dumps(exc.body(), separators=(",", ":")))


@contextmanager
def _bucket_failures_retried() -> Iterator[None]:
    """The bucket failing before anything was paid is passing trouble: retried."""
    try:
        yield
    except StorageError as exc:
        raise retry_later(exc) from None


def _failed(exc: GatewayError, state: str = "FAILED") -> TaskProgress:
    return TaskProgress(state=state, error=ErrorInfo.of(exc))


async def _save(image: ImageBytes, kit: Tools) -> str:
    """Store a result image, trying again a few times (`SAVE_RETRY_DELAYS`, within
    `SAVE_RETRY_WINDOW`) while the bucket fails; its name. Raises the last `StorageError`."""
    began = time.monotonic()
    for delay in SAVE_RETRY_DELAYS:
        try:
            return await kit.store.save_result(image)
        except StorageError as exc:
            if time.monotonic() - began + delay > SAVE_RETRY_WINDOW:
                raise
            logger.warning(
                "result not stored yet; trying again", extra={"error": exc.message, "in": delay}
            )
        await asyncio.sleep(delay)
    return await kit.store.save_result(image)


async def _keep(images: Sequence[str], kit: Tools) -> tuple[ImageRef, ...]:
    """Result images as refs: provider URLs as they are; data URIs copied into the bucket now,
    or kept as they are when the bucket keeps failing (`_fit_inline` decides if they fit)."""

    async def one(ref: str) -> ImageRef:
        if not is_data_uri(ref):
            return ImageRef(url=ref)
        return ImageRef.of(await _copy_result(ref, kit))

    return tuple(await asyncio.gather(*(one(ref) for ref in images)))


async def _copy_result(ref: str, kit: Tools) -> Ref:
    """The core's copy (`copy_result`), saving with retries within the step."""

    async def save(image: ImageBytes) -> str:
        return await _save(image, kit)

    return await copy_result(ref, settings=kit.settings, fetcher=kit.result_fetcher, save=save)


def _inline_budget(event: Mapping[str, Any]) -> int:
    """How many characters of data URIs the state may hold besides the job and its key."""
    fixed = {name: event[name] for name in ("job", "key") if name in event}
    return BUDGET_INLINE - len(json.dumps(fixed, separators=(",", ":")))


def _fit_inline(tasks: list[TaskProgress], budget: int, title: str) -> list[TaskProgress]:
    """The tasks, where those whose inline images (the bucket failed) would take the state past
    `budget` failed instead: their images were paid for, but the state cannot hold them."""
    fitted = []
    for task in tasks:
        size = sum(len(ref.url or "") for ref in task.images if ref.inline)
        if size and size > budget:
            lost = StorageError(
                f"The bucket failed while storing the image {title} made, and the image is too "
                f"large to keep in the job ({size // 1024} KiB); it is lost. Try again later.",
                code="storage_unavailable",
            )
            logger.error("result lost: the bucket failed", extra={"error": lost.message})
            task = task.model_copy(update={"images": (), "error": ErrorInfo.of(lost)})
        budget -= size if task.images else 0
        fitted.append(task)
    return fitted


async def submit(event: Mapping[str, Any], kit: Tools) -> dict[str, Any]:
    """Start the job's provider calls; a `Progress` (polls 0). A gateway key's job fails over
    to its pool's next token when every call was refused in a way that sets the token aside
    (`start_leased`); the token used is named in the progress (`Progress.key`) for Poll."""
    payload = SubmitEvent.model_validate(event)
    spec = payload.job
    try:
        provider = _provider(spec, kit)
        key, leased = await _open(payload.key, spec.id, kit)
        protect(key.get_secret_value())
        images = await _inputs(spec, kit)
        parts = provider.split(_request(spec, key, images))
        outcomes, parts = await start_leased(provider, parts, leased)
    except GatewayError as exc:
        # nothing started: every token of the pool set aside (a 429, retried when one comes
        # back soon), the key table or secret failing for a moment, or the job cannot run
        if exc.retryable is True:
            raise retry_later(exc) from None
        return await _ended(spec, Progress.of([_failed(exc)]), kit)
    used = leased.ref if leased is not None else None
    refusals = [outcome for outcome in outcomes if isinstance(outcome, GatewayError)]
    if len(refusals) == len(parts) and all(exc.retryable is True for exc in refusals):
        # nothing started and the provider said "later" (a rate limit, or it could not be
        # reached before anything was sent): safe to submit again
        raise retry_later(refusals[0])
    # a synchronous provider's images are stored here, never by submitting again (paid)
    tasks = list(await asyncio.gather(*(_task(provider, TaskProgress(), o, kit) for o in outcomes)))
    tasks = _fit_inline(tasks, _inline_budget(event), provider.title)
    now = clock()
    tasks = [
        task.model_copy(update={"timing": Clocked(submitted=now)}) if task.task_id else task
        for task in tasks
    ]
    wait = await _predicted(spec, tasks, payload.wait_seconds, now, estimates(kit.settings))
    logger.info(
        "job submitted",
        extra={
            "job_id": spec.id,
            "provider": spec.provider,
            "task_ids": [t.task_id for t in tasks if t.task_id],
            "refused": len(refusals),
            "wait": wait,
            **({"token_id": used.rsplit(":", 1)[1]} if used else {}),
        },
    )
    return await _ended(spec, Progress.of(tasks, wait=wait, key=used), kit)


async def _inputs(spec: JobSpec, kit: Tools) -> tuple[InputImage, ...]:
    """The job's input images as the provider needs them: objects in the bucket presigned (and
    their bytes), URLs passed through."""

    async def one(key: str | None, url: str | None) -> InputImage:
        if key is None:
            assert url is not None
            return InputImage(url=url)
        with _bucket_failures_retried():
            return await kit.store.load(key)

    return tuple(await asyncio.gather(*(one(ref.key, ref.url) for ref in spec.images)))


def intervals_used(waited: int, interval: int) -> int:
    """The poll intervals a poll after a wait of `waited` seconds uses of the job's deadline
    (`max_polls` intervals of JOB_POLL_INTERVAL, at least 1 s each)."""
    return max(1, math.ceil(waited / max(1, interval)))


def backoff(failures: int, interval: int) -> int:
    """Seconds to wait before the next poll after `failures` failed polls in a row (0: none):
    the poll interval (at least 1 s) doubled each time, up to `BACKOFF_MAX` (or the interval,
    when it is longer)."""
    if failures <= 0:
        return 0
    grown: int = max(1, interval) << min(failures, 16)
    return min(grown, max(BACKOFF_MAX, interval))


def _passing(task: TaskProgress, exc: GatewayError) -> TaskProgress:
    """A task whose poll got no usable answer: still running, the failure counted."""
    return task.model_copy(update={"failures": task.failures + 1, "last_error": ErrorInfo.of(exc)})


def _out_of_time(provider: Provider, task: TaskProgress) -> TaskProgress:
    """A task still running at the job's deadline: failed, naming the last poll error if any."""
    message = (
        f"{provider.title} did not finish task {task.task_id} within the job's time limit "
        "(JOB_TIMEOUT); it may still finish there."
    )
    if task.last_error is not None:
        message += f" The last {task.failures} polls failed; the last: {task.last_error.message}"
    late = DeadlineExceededError(message, code="deadline_exceeded")
    return task.model_copy(update={"error": ErrorInfo.of(late)})


async def poll(event: Mapping[str, Any], kit: Tools) -> dict[str, Any]:
    """Ask about the tasks still running; the next `Progress`. A poll without a usable answer is
    counted in the task and tried again after `backoff`; at the deadline (`max_polls`) the
    tasks still running fail, naming their last error."""
    payload = PollEvent.model_validate(event)
    spec, progress = payload.job, payload.progress
    waited = progress.backoff or progress.wait or payload.wait_seconds
    polls = progress.polls + intervals_used(waited, payload.wait_seconds)
    used = progress.key  # the token Submit used (it may have failed over)
    try:
        provider = _provider(spec, kit)
        key = await open_key(used or payload.key, spec.id, kit)
        protect(key.get_secret_value())
    except GatewayError as exc:
        return await _ended(spec, Progress.of([_failed(exc)], polls, key=used), kit)
    parts = provider.split(_request(spec, key))
    tasks = list(progress.tasks)
    pending = [i for i, task in enumerate(tasks) if task.task_id and not task.ended]
    answers = await asyncio.gather(
        *(provider.check(parts[i], str(tasks[i].task_id)) for i in pending),
        return_exceptions=True,
    )
    now, learned = clock(), estimates(kit.settings)
    for index, answer in zip(pending, answers, strict=True):
        if isinstance(answer, TransientProviderError):
            tasks[index] = _passing(tasks[index], answer)
        else:
            fresh = tasks[index].model_copy(update={"failures": 0, "last_error": None})
            made = await _task(provider, fresh, answer, kit)
            tasks[index] = await _observed(spec, made, now, learned)
    tasks = _fit_inline(tasks, _inline_budget(event), provider.title)
    failing = [task for task in tasks if not task.ended and task.last_error is not None]
    wait = backoff(max((task.failures for task in failing), default=0), payload.wait_seconds)
    if failing:
        last = failing[0]
        logger.warning(
            "poll failed; polling again",
            extra={
                "job_id": spec.id,
                "failures": last.failures,
                "error": last.last_error.message if last.last_error else None,
                "wait": wait,
            },
        )
    if payload.max_polls is not None and polls >= payload.max_polls:
        tasks = [task if task.ended else _out_of_time(provider, task) for task in tasks]
    predicted = 0 if failing else await _predicted(spec, tasks, payload.wait_seconds, now, learned)
    return await _ended(spec, Progress.of(tasks, polls, wait, predicted, key=used), kit)


def estimates(settings: Settings) -> Estimates:
    """The instance's run-time estimates: shared through the access table where there is one
    (`imagegw.access.shared_estimates`), the instance's own otherwise."""
    global ESTIMATES
    if ESTIMATES is None:
        ESTIMATES = estimates_for(settings, priors())
    return ESTIMATES


def _key(spec: JobSpec) -> Key:
    return Key(spec.provider, spec.model, bucket(spec.options))


async def _observed(
    spec: JobSpec, task: TaskProgress, now: float, learned: Estimates
) -> TaskProgress:
    """A task after a poll at `now` answered: its timing advanced while it runs; once it
    made images, its run time `learned`."""
    if task.timing is None:
        return task
    timing = task.timing.timing()
    if task.images:
        await learn(learned, _key(spec), timing, now)
        return task
    if task.ended:
        return task
    return task.model_copy(update={"timing": Clocked.of(timing.seen(now, task.state))})


async def _predicted(
    spec: JobSpec, tasks: list[TaskProgress], interval: int, now: float, learned: Estimates
) -> int:
    """The wait before the next poll predicted for the tasks still running (whole seconds, the
    longest of theirs), or 0: none (the model not learned, or JOB_POLL_INTERVAL 0: no waits)."""
    running = [task.timing.timing() for task in tasks if not task.ended and task.timing]
    if interval <= 0 or not running:
        return 0
    run = await learned.get(_key(spec))
    queue = await queue_of(learned, spec.provider)
    waits = [job_wait(timing, run, queue, now) for timing in running]
    if any(wait is None for wait in waits):
        return 0
    return max(1, math.ceil(max(wait for wait in waits if wait is not None)))


async def _task(
    provider: Provider,
    task: TaskProgress,
    answer: Started | TaskStatus | BaseException,
    kit: Tools,
) -> TaskProgress:
    """A task after the provider's answer to a `start` or `check` (the core's `advance`)."""
    outcome = advance(provider.title, task.task_id, answer)
    if isinstance(outcome, Submitted):
        return task.model_copy(update={"task_id": outcome.task_id})
    if isinstance(outcome, Working):
        return task.model_copy(update={"state": outcome.state})
    if isinstance(outcome, Made):
        try:
            images = await _keep(outcome.images, kit)
        except GatewayError as exc:  # an image that is no image, or too large
            return task.model_copy(update={"state": "FAILED", "error": ErrorInfo.of(exc)})
        return task.model_copy(update={"state": outcome.state, "images": images})
    return task.model_copy(update={"state": outcome.state, "error": ErrorInfo.of(outcome.error)})


async def store(event: Mapping[str, Any], kit: Tools) -> dict[str, Any]:
    """Copy the result images into the bucket; the job's output (`JobOutput`)."""
    payload = StoreEvent.model_validate(event)
    spec, progress = payload.job, payload.progress
    refs = [ref for task in progress.tasks for ref in task.images][: spec.n]
    kept = await asyncio.gather(*(_copy(ref, kit) for ref in refs))
    output = JobOutput(
        images=tuple(kept),
        failures=tuple(task.error.message for task in progress.tasks if task.error),
        task_ids=tuple(task.task_id for task in progress.tasks if task.task_id),
    )
    await settle(spec, len(kept), kit)
    logger.info(
        "job stored",
        extra={
            "job_id": spec.id,
            "stored": sum(ref.name is not None for ref in kept),
            "linked": sum(ref.url is not None for ref in kept),
            "failures": len(output.failures),
        },
    )
    return output.model_dump(mode="json")


async def release(event: Mapping[str, Any], kit: Tools) -> dict[str, Any]:
    """Give a job's quota reservation back whole: Submit's retries ran out with nothing
    started (the Release state, run by the Store function). Its answer is discarded: the job
    then fails with Submit's error."""
    payload = ReleaseEvent.model_validate(event)
    await settle(payload.job, 0, kit)
    return {"released": payload.job.quota is not None}


async def _copy(ref: ImageRef, kit: Tools) -> ImageRef:
    """One result image copied into the bucket. When the provider's image cannot be fetched, or
    the bucket keeps failing, the provider's URL (or the inline image) is kept: it still works
    for a while, as on the interactive path. Running Store again would not help the link."""
    if ref.url is None:
        return ref
    return ImageRef.of(await _copy_result(ref.url, kit))
