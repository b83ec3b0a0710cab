"""The interactive poll loop: drive a provider's start/check and yield events.

`run()` starts the provider's calls for the `n` images at once (`Provider.split`: one image a
call, or batches), polls each task on a schedule that learns of a finished image quickly without
hammering the provider, retries transient poll failures within the deadline, and yields
`Progress` events (also while a synchronous provider works inside `start`), then one `Result`.
Rendering (SSE or JSON) is someone else's job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
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
    """Where the job stands: the provider's state name, seconds since it began, tasks done."""

    state: str
    elapsed: float
    done: int = 0
    total: int = 1


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
    """Book-keeping of the running tasks."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.states: dict[int, str] = {}
        self.images: dict[int, tuple[str, ...]] = {}
        self.failures: dict[int, GatewayError] = {}

    @property
    def done(self) -> int:
        return len(self.images) + len(self.failures)

    def ended(self, index: int) -> bool:
        return index in self.images or index in self.failures

    def state(self) -> str:
        running = [
            s for i, s in self.states.items() if i not in self.images and i not in self.failures
        ]
        if running:
            return max(set(running), key=running.count)
        return "SUCCEED" if self.images else "FAILED"


async def _poll(
    provider: Provider,
    request: GenerationRequest,
    index: int,
    task_id: str,
    settings: Settings,
    queue: asyncio.Queue[tuple[int, TaskStatus | GatewayError]],
    clock: Callable[[], float],
) -> None:
    """Poll one task until it ends; report each answer on the queue."""
    submitted = clock()
    while True:
        await asyncio.sleep(
            poll_delay(clock() - submitted, settings.poll_interval, settings.poll_interval_max)
        )
        try:
            status = await provider.check(request, task_id)
        except TransientProviderError as exc:
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
        await queue.put((index, status))
        if isinstance(status, Finished | Failed):
            return


async def run(
    provider: Provider,
    request: GenerationRequest,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Event]:
    """Run the calls that make `request.n` images and yield progress, then the result (images in
    the order of the calls). Raises GatewayError."""
    parts = provider.split(request)
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
    finally:
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    outcomes = starting.result()
    tasks = _Tasks(len(parts))
    task_ids: dict[int, str] = {}
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, GatewayError):
            tasks.failures[index] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome
        elif isinstance(outcome, Started):
            task_ids[index] = outcome.task_id
            tasks.states[index] = "SUBMITTED"
        else:
            tasks.images[index] = outcome.images
    if not task_ids and not tasks.images:
        raise tasks.failures[0]
    logger.info(
        "tasks started",
        extra={
            "provider": provider.name,
            "model": request.model,
            "task_ids": list(task_ids.values()),
        },
    )

    queue: asyncio.Queue[tuple[int, TaskStatus | GatewayError]] = asyncio.Queue()
    pollers = [
        asyncio.create_task(_poll(provider, parts[i], i, tid, settings, queue, clock))
        for i, tid in task_ids.items()
    ]
    try:
        yield Progress(tasks.state(), clock() - began, tasks.done, tasks.total)
        last_progress = clock()
        while tasks.done < tasks.total:
            remaining = deadline - clock()
            if remaining <= 0:
                pending = [
                    tid
                    for i, tid in task_ids.items()
                    if i not in tasks.images and i not in tasks.failures
                ]
                raise DeadlineExceededError(
                    f"{provider.title} task {', '.join(pending)} did not finish within "
                    f"{settings.generation_timeout:g} s; it may still finish at the provider.",
                    code="deadline_exceeded",
                )
            try:
                index, answer = await asyncio.wait_for(
                    queue.get(), timeout=min(settings.progress_interval, remaining)
                )
            except TimeoutError:
                yield Progress(tasks.state(), clock() - began, tasks.done, tasks.total)
                last_progress = clock()
                continue
            before = (tasks.state(), tasks.done)
            if isinstance(answer, GatewayError):
                tasks.failures[index] = answer
            elif isinstance(answer, Finished):
                tasks.images[index] = answer.images
            elif isinstance(answer, Failed):
                tasks.failures[index] = ProviderError(
                    f"{provider.title} task {task_ids[index]} failed: {answer.reason}",
                    code="generation_failed",
                )
            else:
                tasks.states[index] = answer.state
            # a change at once; an unchanged state every progress_interval even while polls
            # keep answering (they come more often than that)
            if (tasks.state(), tasks.done) != before or (
                clock() - last_progress >= settings.progress_interval
            ):
                yield Progress(tasks.state(), clock() - began, tasks.done, tasks.total)
                last_progress = clock()
    finally:
        for poller in pollers:
            poller.cancel()
        if pollers:
            await asyncio.gather(*pollers, return_exceptions=True)

    if not tasks.images:
        raise next(iter(tasks.failures.values()))
    yield Result(
        images=tuple(url for i in sorted(tasks.images) for url in tasks.images[i]),
        failures=tuple(tasks.failures[i].message for i in sorted(tasks.failures)),
        task_ids=tuple(task_ids[i] for i in sorted(task_ids)),
        elapsed=clock() - began,
    )
