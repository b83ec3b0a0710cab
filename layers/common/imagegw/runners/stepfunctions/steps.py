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

What every answer means and what comes next is the lifecycle's (`imagegw.core.lifecycle`): the
steps keep its task book in the state (`JobProgress`) and do the I/O. A paid task is never given
up on early: a poll that gets no usable answer (a 5xx, an unreadable answer, no connection) is
recorded in the task's progress and polled again after a growing wait (`PollPolicy.durable`,
`JobProgress.backoff`), until the job's deadline; the job then fails naming the last error.
Dependencies come from one `Gateway` per instance (`run_step`), time from `CLOCK`.

A paid result is never lost to the bucket: a result that cannot be copied keeps the provider's
link (Store). Images a provider answered inline (data URIs) are copied into the bucket at once,
with bounded retries in the step (running the step again would pay for the generation again);
when the bucket still fails, a small image stays inline in the state (well under its 256 KiB
limit) and Store tries again, and a larger one fails its task with `storage_unavailable`.
Nothing here logs or returns the key.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from pydantic import SecretStr

from imagegw.core.advance import Broke, Made, advance, start_leased
from imagegw.core.deliver import Ref, copy_result
from imagegw.core.estimates import Estimates, learn, queue_of
from imagegw.core.lifecycle import (
    Book,
    JobWaits,
    Outcome,
    PollPolicy,
    Task,
    failure_notes,
    final_error,
    intervals_used,
    job_waits,
)
from imagegw.core.plan import restore
from imagegw.core.schedule import Key, Timing, bucket
from imagegw.errors import (
    ConfigurationError,
    GatewayError,
    StorageError,
    TransientJobError,
    TransientProviderError,
)
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes, InputImage, is_data_uri
from imagegw.infra.storage import Placed
from imagegw.providers import Provider
from imagegw.providers.base import GenerationRequest
from imagegw.redaction import protect
from imagegw.runners.gateway import Clock, Gateway, learned_times
from imagegw.runners.quota import JobReservation, settle
from imagegw.runners.stepfunctions.schema import (
    STATE_LIMIT,
    ImageRef,
    JobOutput,
    JobProgress,
    JobSpec,
    PollEvent,
    ReleaseEvent,
    StoreEvent,
    SubmitEvent,
)

if TYPE_CHECKING:
    from imagegw.access.gate import PoolLease

Step = Callable[[Mapping[str, Any], Gateway], Awaitable[dict[str, Any]]]

#: seconds between the attempts to save a result image in the bucket within one step (botocore
#: retries each attempt too); no attempt starts later than `SAVE_RETRY_WINDOW` seconds after
#: the first, well within the task functions' timeouts
SAVE_RETRY_DELAYS: Final[tuple[float, ...]] = (1.0, 2.0, 4.0, 8.0)
SAVE_RETRY_WINDOW: Final = 30.0
#: the most that images kept inline (the bucket failed) may take of the state, with the job
BUDGET_INLINE: Final = STATE_LIMIT // 2
#: the steps' time: epoch seconds, as the steps of one job run on different instances; tests
#: set a simulated one (`tests/functional/machine.py`)
CLOCK: Clock = Clock()
#: the run times the process learned, shared by its threads' gateways (`learned_times`, made
#: by the first step; None: a fresh instance)
ESTIMATES: Estimates | None = None


class _Instance:
    """One event loop and one `Gateway` (its provider client, fetchers, access and learned run
    times) per Lambda instance (per thread, where several executions share a process: `make
    run`, whose Step Functions runs each execution on a thread of its own), so a warm instance
    reuses its connections and caches. One whose thread ended is closed (its gateway's
    clients, then its loop) by the next step that starts, and every one at exit."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.gateway: Gateway | None = None

    def close(self) -> None:
        try:
            if self.gateway is not None:
                self.runner.run(self.gateway.aclose())
        except Exception as exc:  # closing is tidying up: a failure must not fail a step
            logger.warning(
                "job step gateway not closed cleanly", extra={"error": type(exc).__name__}
            )
        finally:
            self.runner.close()


_INSTANCES: dict[threading.Thread, _Instance] = {}
_INSTANCES_LOCK = threading.Lock()


def _instance() -> _Instance:
    """This thread's instance (a new one on its first step), after closing those of the
    threads that ended."""
    with _INSTANCES_LOCK:
        ended = [_INSTANCES.pop(thread) for thread in list(_INSTANCES) if not thread.is_alive()]
        mine = _INSTANCES.get(threading.current_thread())
        if mine is None:
            mine = _INSTANCES[threading.current_thread()] = _Instance()
    for instance in ended:
        instance.close()
    return mine


@atexit.register
def close_instances() -> None:
    """Close every thread's instance (at exit; the next step makes a new one)."""
    with _INSTANCES_LOCK:
        instances = list(_INSTANCES.values())
        _INSTANCES.clear()
    for instance in instances:
        instance.close()


def gateway_for(settings: Settings) -> Gateway:
    """The instance's `Gateway` for `settings` (a new one when they, `CLOCK` or `ESTIMATES`
    changed)."""
    global ESTIMATES
    if ESTIMATES is None:
        ESTIMATES = learned_times(settings)
    instance = _instance()
    kit = instance.gateway
    if kit is not None:
        if kit.settings == settings and kit.clock is CLOCK and kit.estimates is ESTIMATES:
            return kit
        instance.runner.run(kit.aclose())
    instance.gateway = Gateway(settings, clock=CLOCK, estimates=ESTIMATES)
    return instance.gateway


def run_step(
    step: Step, event: Mapping[str, Any], settings: Settings | None = None
) -> dict[str, Any]:
    """Run one step to completion (the task functions' synchronous entry), on the instance's
    event loop with its `Gateway`. Run times learned in the step and still waiting for the
    access table are written before it returns: a job function gets no SIGTERM at its end."""
    kit = gateway_for(settings or Settings.from_env())

    async def main() -> dict[str, Any]:
        try:
            return await step(event, kit)
        finally:
            await kit.estimates.flush()

    return _instance().runner.run(main())


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


async def open_key(sealed: str, job_id: str, kit: Gateway) -> SecretStr:
    """The provider token of a job: the client's, sealed for this job with KMS, or a
    server-held one named by reference (`pool:<provider>:<token id>`), read from the access
    secret. A token the owner removed since fails the job (ConfigurationError)."""
    if not sealed.startswith(POOL_REF):
        return kit.sealer.open(sealed, job_id)
    token = await kit.access.token_by_ref(sealed)
    if token is None:
        raise _removed()
    return token


async def _open(spec: JobSpec, sealed: str, kit: Gateway) -> tuple[SecretStr, PoolLease | None]:
    """The token Submit starts with, and for a server-held one its lease on the pool (to fail
    over to the next token): the referenced token, or the next one not set aside, within the
    share of the pool the job's gateway key spends (KEY_POOL_SHARE, as its requests)."""
    if not sealed.startswith(POOL_REF):
        return kit.sealer.open(sealed, spec.id), None
    leased = await kit.access.lease_at(sealed, spec.quota.key if spec.quota else None)
    if leased is None:
        raise _removed()
    return leased.token, leased


def _reservation(spec: JobSpec, kit: Gateway) -> JobReservation | None:
    """A gateway key's job's quota reservation (None: a client's own token, nothing to settle):
    settled once per job however often a step runs (`Access.settle_job`), never failing it."""
    return None if spec.quota is None else JobReservation(kit.access, spec)


async def _ended(spec: JobSpec, progress: JobProgress, kit: Gateway) -> dict[str, Any]:
    """A step's progress as JSON, the quota given back first when it failed (nothing made)."""
    if progress.status == "failed":
        await settle(_reservation(spec, kit), 0)
    return progress.model_dump(mode="json")


def _refused(exc: GatewayError, polls: int = 0, key: str | None = None) -> JobProgress:
    """The progress of a job that cannot run at all (one failed task: `exc`)."""
    return JobProgress.of_book(Book((Task[ImageRef](state="FAILED", error=exc),)), polls, key=key)


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


async def _save(image: ImageBytes, kit: Gateway) -> str:
    """Store a result image, trying again a few times (`SAVE_RETRY_DELAYS`, within
    `SAVE_RETRY_WINDOW`) while the bucket fails; its name. Raises the last `StorageError`."""
    began = kit.clock.now()
    for delay in SAVE_RETRY_DELAYS:
        try:
            return await kit.store.save_result(image)
        except StorageError as exc:
            if kit.clock.now() - began + delay > SAVE_RETRY_WINDOW:
                raise
            logger.warning(
                "result not stored yet; trying again", extra={"error": exc.message, "in": delay}
            )
        await kit.clock.sleep(delay)
    return await kit.store.save_result(image)


async def _keep(images: Sequence[str], kit: Gateway) -> tuple[ImageRef, ...]:
    """Result images as refs: provider URLs as they are; data URIs copied into the bucket now,
    or kept as they are when the bucket keeps failing (`_fit_inline` decides if they fit)."""

    async def one(ref: str) -> ImageRef:
        if not is_data_uri(ref):
            return ImageRef(url=ref)
        return ImageRef.of(await _copy_result(ref, kit))

    return tuple(await asyncio.gather(*(one(ref) for ref in images)))


async def _copy_result(ref: str, kit: Gateway) -> Ref:
    """The core's copy (`copy_result`), saving with retries within the step."""

    async def save(image: ImageBytes) -> str:
        return await _save(image, kit)

    return await copy_result(ref, settings=kit.settings, fetcher=kit.result_fetcher, save=save)


def _inline_budget(event: Mapping[str, Any]) -> int:
    """How many characters of data URIs the state may hold besides the job and its key."""
    fixed = {name: event[name] for name in ("job", "key") if name in event}
    return BUDGET_INLINE - len(json.dumps(fixed, separators=(",", ":")))


def _fit_inline(book: Book[ImageRef], budget: int, title: str) -> Book[ImageRef]:
    """The book, where tasks whose inline images (the bucket failed) would take the state past
    `budget` failed instead: their images were paid for, but the state cannot hold them."""
    for index, task in enumerate(book.tasks):
        size = sum(len(ref.url or "") for ref in task.images if ref.inline)
        if size and size > budget:
            lost = StorageError(
                f"The bucket failed while storing the image {title} made, and the image is too "
                f"large to keep in the job ({size // 1024} KiB); it is lost. Try again later.",
                code="storage_unavailable",
            )
            logger.error("result lost: the bucket failed", extra={"error": lost.message})
            book = book.apply(index, Broke(lost, task.state))
        budget -= size if book.tasks[index].images else 0
    return book


async def _kept(outcome: Outcome[str], kit: Gateway) -> Outcome[ImageRef]:
    """An outcome with its images as the job's state keeps them (`_keep`); an image that is
    no image, or too large, fails its task."""
    if not isinstance(outcome, Made):
        return outcome
    try:
        return Made(await _keep(outcome.images, kit), outcome.state)
    except GatewayError as exc:
        return Broke(exc)


def _key(spec: JobSpec, provider: Provider) -> Key:
    return Key(spec.provider, spec.model, bucket(provider.workload(spec.options)))


async def _waits(
    spec: JobSpec, provider: Provider, book: Book[ImageRef], interval: int, now: float, kit: Gateway
) -> JobWaits:
    """The lifecycle's waits before the next poll, the model's learned times read when they
    matter (nothing failing, tasks running, waits allowed)."""
    policy = PollPolicy.durable(interval)
    if book.failing() or interval <= 0 or not book.running():
        return job_waits(book, policy, interval, None, None, now)
    run = await kit.estimates.get(_key(spec, provider))
    queue = await queue_of(kit.estimates, spec.provider)
    return job_waits(book, policy, interval, run, queue, now)


async def submit(
    event: Mapping[str, Any], kit: Gateway, opened: SecretStr | None = None
) -> dict[str, Any]:
    """Start the job's provider calls; a `JobProgress` (polls 0). A gateway key's job fails
    over to its pool's next token when every call was refused in a way that sets the token
    aside (`start_leased`); the token used is named in the progress (`JobProgress.key`) for
    Poll. `opened`: the client's key, already open (a batch item's Submit opened the batch's)."""
    payload = SubmitEvent.model_validate(event)
    spec = payload.job
    try:
        provider = kit.provider(spec.provider)
        if opened is None:
            key, leased = await _open(spec, payload.key, kit)
        else:
            key, leased = opened, None
        protect(key.get_secret_value())
        images = await _inputs(spec, kit)
        parts = provider.split(_request(spec, key, images))
        outcomes, parts = await start_leased(provider, parts, leased)
    except GatewayError as exc:
        # nothing started: every token of the pool set aside (a 429, retried when one comes
        # back soon), the key table or secret failing for a moment, or the job cannot run
        if exc.retryable is True:
            raise retry_later(exc) from None
        return await _ended(spec, _refused(exc), kit)
    used = leased.ref if leased is not None else None
    refusals = [outcome for outcome in outcomes if isinstance(outcome, GatewayError)]
    if len(refusals) == len(parts) and all(exc.retryable is True for exc in refusals):
        # nothing started and the provider said "later" (a rate limit, or it could not be
        # reached before anything was sent): safe to submit again
        raise retry_later(final_error(refusals))
    # a synchronous provider's images are stored here, never by submitting again (paid)
    kept = await asyncio.gather(
        *(_kept(advance(provider.title, None, outcome), kit) for outcome in outcomes)
    )
    book: Book[ImageRef] = Book.of(len(parts))
    for index, outcome in enumerate(kept):
        book = book.apply(index, outcome)
    book = _fit_inline(book, _inline_budget(event), provider.title)
    now = kit.clock.now()
    for index in book.running():
        book = book.timed(index, Timing(submitted=now))
    waits = await _waits(spec, provider, book, payload.wait_seconds, now, kit)
    logger.info(
        "job submitted",
        extra={
            "job_id": spec.id,
            "provider": spec.provider,
            "task_ids": list(book.task_ids()),
            "refused": len(refusals),
            "wait": waits.predicted,
            **({"token_id": used.rsplit(":", 1)[1]} if used else {}),
        },
    )
    return await _ended(spec, JobProgress.of_book(book, wait=waits.predicted, key=used), kit)


async def _inputs(spec: JobSpec, kit: Gateway) -> tuple[InputImage, ...]:
    """The job's input images as the provider needs them (`ImageStore.open`: objects in the
    bucket presigned, with their bytes; URLs passed through)."""

    async def one(placed: Placed) -> InputImage:
        with _bucket_failures_retried():
            return await kit.store.open(placed)

    placed = [Placed(key=ref.key, url=ref.url) for ref in spec.images]
    return tuple(await asyncio.gather(*(one(item) for item in placed)))


async def poll(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """Ask about the tasks still running; the next `JobProgress`. A poll without a usable
    answer is counted in the task and tried again after the lifecycle's back-off
    (`PollPolicy.durable`); at the deadline (`max_polls`) the tasks still running fail,
    naming their last error (`Book.out_of_time`)."""
    payload = PollEvent.model_validate(event)
    spec, progress = payload.job, payload.progress
    waited = progress.backoff or progress.wait or payload.wait_seconds
    polls = progress.polls + intervals_used(waited, payload.wait_seconds)
    used = progress.key  # the token Submit used (it may have failed over)
    try:
        provider = kit.provider(spec.provider)
        key = await open_key(used or payload.key, spec.id, kit)
        protect(key.get_secret_value())
    except GatewayError as exc:
        return await _ended(spec, _refused(exc, polls, key=used), kit)
    images = await _inputs(spec, kit) if provider.checks_with_inputs else ()
    parts = provider.split(_request(spec, key, images))
    book = progress.book()
    pending = book.running()
    answers = await asyncio.gather(
        *(provider.check(parts[i], str(book.tasks[i].task_id)) for i in pending),
        return_exceptions=True,
    )
    now = kit.clock.now()
    for index, answer in zip(pending, answers, strict=True):
        if isinstance(answer, TransientProviderError):
            book = book.poll_failed(index, answer)
            continue
        task_id = book.tasks[index].task_id
        book = book.apply(index, await _kept(advance(provider.title, task_id, answer), kit))
        book = await _observed(spec, provider, book, index, now, kit.estimates)
    book = _fit_inline(book, _inline_budget(event), provider.title)
    waits = await _waits(spec, provider, book, payload.wait_seconds, now, kit)
    failing = book.failing()
    if failing:
        last = failing[0]
        logger.warning(
            "poll failed; polling again",
            extra={
                "job_id": spec.id,
                "failures": last.failures,
                "error": last.last_error.message if last.last_error else None,
                "wait": waits.backoff,
            },
        )
    if payload.max_polls is not None and polls >= payload.max_polls:
        limit = payload.max_polls * max(1, payload.wait_seconds)
        book = book.out_of_time(provider.title, limit)
    return await _ended(
        spec, JobProgress.of_book(book, polls, waits.backoff, waits.predicted, key=used), kit
    )


async def _observed(
    spec: JobSpec,
    provider: Provider,
    book: Book[ImageRef],
    index: int,
    now: float,
    learned: Estimates,
) -> Book[ImageRef]:
    """The book after a poll at `now` answered task `index`: its timing advanced while it
    runs; once it made images, its run time learned."""
    task = book.tasks[index]
    if task.timing is None:
        return book
    if task.images:
        key = _key(spec, provider)
        await learn(learned, key, task.timing, now, await learned.get(key))
        return book
    if task.ended:
        return book
    return book.timed(index, task.timing.seen(now, task.state))


async def store(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """Copy the result images into the bucket; the job's output (`JobOutput`)."""
    payload = StoreEvent.model_validate(event)
    spec, progress = payload.job, payload.progress
    refs = [ref for task in progress.tasks for ref in task.images][: spec.n]
    kept = await asyncio.gather(*(_copy(ref, kit) for ref in refs))
    output = JobOutput(
        images=tuple(kept),
        failures=failure_notes(
            kit.provider(spec.provider).title,
            spec.n,
            len(kept),
            [task.error.message for task in progress.tasks if task.error],
        ),
        task_ids=tuple(task.task_id for task in progress.tasks if task.task_id),
    )
    await settle(_reservation(spec, kit), len(kept))
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


async def release(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """Give a job's quota reservation back whole: Submit's retries ran out with nothing
    started (the Release state, run by the Store function). Its answer is discarded: the job
    then fails with Submit's error."""
    payload = ReleaseEvent.model_validate(event)
    await settle(_reservation(payload.job, kit), 0)
    return {"released": payload.job.quota is not None}


async def _copy(ref: ImageRef, kit: Gateway) -> ImageRef:
    """One result image copied into the bucket. When the provider's image cannot be fetched, or
    the bucket keeps failing, the provider's URL (or the inline image) is kept: it still works
    for a while, as on the interactive path. Running Store again would not help the link."""
    if ref.url is None:
        return ref
    return ImageRef.of(await _copy_result(ref.url, kit))
