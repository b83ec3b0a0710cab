"""The interactive poll loop: drive a provider's start/check and yield events.

`run()` starts the provider's calls for the `n` images at once (`Provider.split`: one image a
call, or batches), polls each task on a schedule that learns of a finished image quickly without
hammering the provider, retries transient poll failures (backing off) until POLL_FAILURE_WINDOW
seconds pass without a good answer, and yields
`Progress` events (also while a synchronous provider works inside `start`), then one `Result`.
Rendering (SSE or JSON) is someone else's job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from imagegw.config import Settings
from imagegw.errors import (
    DeadlineExceededError,
    GatewayError,
    ProviderError,
    TransientProviderError,
)
from imagegw.log import logger
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    Provider,
    Started,
    TaskStatus,
)

#: polls run at the base interval this long, then slow down towards the maximum
FAST_POLLING_SECONDS = 15.0


@dataclass(frozen=True)
class Progress:
    """Where the job stands: the provider's state name, seconds since it began, tasks done,
    and the provider's ids of the tasks started (none yet while starting)."""

    state: str
    elapsed: float
    done: int = 0
    total: int = 1
    task_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """Every image made, and the reasons of the tasks that failed (when some succeeded)."""

    images: tuple[str, ...]
    failures: tuple[str, ...]
    task_ids: tuple[str, ...]
    elapsed: float


Event = Progress | Result


def poll_delay(elapsed: float, base: float, maximum: float) -> float:
    """Seconds to wait before the next poll of a task that has run `elapsed` seconds.

    The base interval (default 0.75 s) bounds the lag between a task finishing and the client
    hearing of it to one interval (median half of it) for the common 2-10 s jobs; jobs that run
    long are polled more and more gently, up to `maximum`.
    """
    if elapsed <= FAST_POLLING_SECONDS:
        return base
    return min(maximum, base * (1.0 + (elapsed - FAST_POLLING_SECONDS) / FAST_POLLING_SECONDS))


class _Tasks:
    """Book-keeping of the running tasks, by the index of their call."""

    def __init__(self, provider: Provider, total: int) -> None:
        self.title = provider.title
        self.total = total
        self.task_ids: dict[int, str] = {}
        self.states: dict[int, str] = {}
        self.images: dict[int, tuple[str, ...]] = {}
        self.failures: dict[int, GatewayError] = {}

    @property
    def done(self) -> int:
        return len(self.images) + len(self.failures)

    def ended(self, index: int) -> bool:
        return index in self.images or index in self.failures

    def ids(self) -> tuple[str, ...]:
        return tuple(self.task_ids[i] for i in sorted(self.task_ids))

    def pending(self) -> list[str]:
        return [tid for i, tid in sorted(self.task_ids.items()) if not self.ended(i)]

    def state(self) -> str:
        running = [s for i, s in self.states.items() if not self.ended(i)]
        if running:
            return max(set(running), key=running.count)
        return "SUCCEED" if self.images else "FAILED"

    def progress(self, elapsed: float) -> Progress:
        return Progress(self.state(), elapsed, self.done, self.total, self.ids())

    def started(self, outcomes: list[Started | Finished | BaseException]) -> None:
        """Record the answers of the `start` calls (re-raising an unexpected failure)."""
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, GatewayError):
                self.failures[index] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            elif isinstance(outcome, Started):
                self.task_ids[index] = outcome.task_id
                self.states[index] = "SUBMITTED"
            else:
                self.images[index] = outcome.images

    def answered(self, index: int, answer: TaskStatus | GatewayError) -> None:
        """Record a poller's report."""
        if isinstance(answer, GatewayError):
            self.failures[index] = answer
        elif isinstance(answer, Finished):
            self.images[index] = answer.images
        elif isinstance(answer, Failed):
            self.failures[index] = ProviderError(
                f"{self.title} task {self.task_ids[index]} failed: {answer.reason}",
                code="generation_failed",
            )
        else:
            self.states[index] = answer.state

    def refusal(self) -> GatewayError:
        """The error to raise when no image was made: the first that forbids a retry when any
        does (one of the calls may have started paid work), else the first."""
        ordered = [self.failures[i] for i in sorted(self.failures)]
        return next((exc for exc in ordered if exc.retryable is not True), ordered[0])


def _retry_delay(delay: float, failures: int, settings: Settings) -> float:
    """The wait before polling again after `failures` failed polls in a row: the normal
    `delay`, doubled per failure up to POLL_INTERVAL_MAX (a struggling provider is not
    hammered; one that recovers is heard of within POLL_INTERVAL_MAX)."""
    if not failures:
        return delay
    return min(
        settings.poll_interval_max, max(delay, settings.poll_interval * 2.0 ** min(failures, 16))
    )


def _unpollable(
    provider: Provider, task_id: str, settings: Settings, exc: TransientProviderError
) -> ProviderError:
    """The error of a task that could not be polled for POLL_FAILURE_WINDOW seconds. Not
    retryable: the paid task may still finish at the provider."""
    return ProviderError(
        f"{provider.title} could not be polled for {settings.poll_failure_window:g} s "
        f"(task {task_id}): last error: {exc.reason}.",
        code="provider_unavailable",
    )


async def _poll(
    provider: Provider,
    request: GenerationRequest,
    index: int,
    task_id: str,
    settings: Settings,
    queue: asyncio.Queue[tuple[int, TaskStatus | GatewayError]],
    clock: Callable[[], float],
) -> None:
    """Poll one task until it ends; report each answer on the queue.

    Transient failures (5xx, unreadable answers, no connection, a poll timing out) are retried
    until POLL_FAILURE_WINDOW seconds pass without a good answer; then the task fails with a 502
    naming the last error, rather than the client hearing nothing until GENERATION_TIMEOUT."""
    submitted = answered = clock()
    failures = 0
    while True:
        now = clock()
        delay = poll_delay(now - submitted, settings.poll_interval, settings.poll_interval_max)
        if failures:  # back off, but poll once more when the window closes
            delay = min(
                _retry_delay(delay, failures, settings),
                max(0.0, answered + settings.poll_failure_window - now),
            )
        await asyncio.sleep(delay)
        try:
            status = await provider.check(request, task_id)
        except TransientProviderError as exc:
            failures += 1
            if clock() - answered >= settings.poll_failure_window:
                logger.warning(
                    "polling given up",
                    extra={"task_id": task_id, "failures": failures, "error": exc.message},
                )
                await queue.put((index, _unpollable(provider, task_id, settings, exc)))
                return
            logger.warning("transient poll failure; will retry", extra={"error": exc.message})
            continue
        except GatewayError as exc:
            await queue.put((index, exc))
            return
        except Exception:
            # report it: a silently dead poller would leave the client waiting for the deadline
            logger.exception("polling failed unexpectedly", extra={"task_id": task_id})
            failure = GatewayError(
                "The gateway failed unexpectedly. See its logs.",
                code="internal_error",
                retryable=False,
            )
            await queue.put((index, failure))
            return
        answered, failures = clock(), 0
        await queue.put((index, status))
        if isinstance(status, Finished | Failed):
            return


async def run(
    provider: Provider,
    request: GenerationRequest,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[Event, None]:
    """Run the calls that make `request.n` images and yield progress, then the result (images in
    the order of the calls). Raises GatewayError."""
    parts = provider.split(request)
    tasks = _Tasks(provider, len(parts))
    began = clock()
    deadline = began + settings.generation_timeout
    starting = asyncio.ensure_future(
        asyncio.gather(*(provider.start(part) for part in parts), return_exceptions=True)
    )
    try:  # a synchronous provider does the whole job in `start`: report progress meanwhile
        while not starting.done():
            remaining = deadline - clock()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"{provider.title} did not answer within {settings.generation_timeout:g} s.",
                    code="deadline_exceeded",
                )
            await asyncio.wait({starting}, timeout=min(settings.progress_interval, remaining))
            if not starting.done():
                yield Progress("RUNNING", clock() - began, 0, len(parts))
    finally:  # also when the client left: the calls in flight are cancelled
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    tasks.started(starting.result())
    if not tasks.task_ids and not tasks.images:
        raise tasks.refusal()
    logger.info(
        "tasks started",
        extra={"provider": provider.name, "model": request.model, "task_ids": list(tasks.ids())},
    )

    queue: asyncio.Queue[tuple[int, TaskStatus | GatewayError]] = asyncio.Queue()
    pollers = [
        asyncio.create_task(_poll(provider, parts[i], i, tid, settings, queue, clock))
        for i, tid in tasks.task_ids.items()
    ]
    try:
        yield tasks.progress(clock() - began)
        last_progress = clock()
        while tasks.done < tasks.total:
            remaining = deadline - clock()
            if remaining <= 0:
                raise DeadlineExceededError(
                    f"{provider.title} task {', '.join(tasks.pending())} did not finish within "
                    f"{settings.generation_timeout:g} s; it may still finish at the provider.",
                    code="deadline_exceeded",
                )
            try:
                index, answer = await asyncio.wait_for(
                    queue.get(), timeout=min(settings.progress_interval, remaining)
                )
            except TimeoutError:
                yield tasks.progress(clock() - began)
                last_progress = clock()
                continue
            before = (tasks.state(), tasks.done)
            tasks.answered(index, answer)
            # a change at once; an unchanged state every progress_interval even while polls
            # keep answering (they come more often than that)
            if (tasks.state(), tasks.done) != before or (
                clock() - last_progress >= settings.progress_interval
            ):
                yield tasks.progress(clock() - began)
                last_progress = clock()
    finally:  # also when the client left: no poll after this
        for poller in pollers:
            poller.cancel()
        if pollers:
            await asyncio.gather(*pollers, return_exceptions=True)

    if not tasks.images:
        raise tasks.refusal()
    yield Result(
        images=tuple(url for i in sorted(tasks.images) for url in tasks.images[i]),
        failures=tuple(tasks.failures[i].message for i in sorted(tasks.failures)),
        task_ids=tasks.ids(),
        elapsed=clock() - began,
    )
