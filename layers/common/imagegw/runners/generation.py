"""The interactive poll loop: drive a provider's start/check and yield events.

`run()` starts the provider's calls for the `n` images at once (`Provider.split`: one image a
call, or batches), polls each task when the model's learned run time says it should end
(`imagegw.core.schedule`; today's fixed schedule for a model not learned yet), retries
transient poll failures (backing off) until POLL_FAILURE_WINDOW seconds pass without a good
answer, and yields `Progress` events (also while a synchronous provider works inside `start`),
then one `Result`. What an answer means is the job core's (`imagegw.core.advance`).
Rendering (SSE or JSON) is someone else's job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from imagegw.access import lease
from imagegw.core.advance import (
    Made,
    Outcome,
    Submitted,
    Working,
    advance,
    refusal,
    start_leased,
)
from imagegw.core.estimates import Estimates, learn
from imagegw.core.schedule import (
    Estimate,
    Key,
    Timing,
    bucket,
    expected_total,
    next_delay,
    poll_delay,
)
from imagegw.errors import (
    DeadlineExceededError,
    GatewayError,
    ProviderError,
    TransientProviderError,
)
from imagegw.infra import apimetrics
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    Provider,
    Running,
    Started,
    TaskStatus,
)

__all__ = ["Event", "Progress", "Result", "poll_delay", "run"]


@dataclass(frozen=True)
class Progress:
    """Where the job stands: the provider's state name, seconds since it began, tasks done,
    and the provider's ids of the tasks started (none yet while starting)."""

    state: str
    elapsed: float
    done: int = 0
    total: int = 1
    task_ids: tuple[str, ...] = ()
    #: about how long the generation takes in all (seconds, as `elapsed`), once predicted
    expected: float | None = None
    #: the provider's title ("ModelScope"), for the words shown to people
    where: str = ""
    #: the provider's own progress words of a running task ("position 3 in the queue")
    detail: str = ""


@dataclass(frozen=True)
class Result:
    """Every image made, and the reasons of the tasks that failed (when some succeeded)."""

    images: tuple[str, ...]
    failures: tuple[str, ...]
    task_ids: tuple[str, ...]
    elapsed: float


Event = Progress | Result


@dataclass
class _Forecast:
    """What the pollers of one run learn from, and what they predict: each task's end (on the
    run's clock), once it runs."""

    estimates: Estimates | None
    key: Key
    estimate: Estimate | None = None
    ends: dict[int, float] = field(default_factory=dict)

    async def learn(self, timing: Timing, ended_seen: float) -> None:
        """A task ended: its run time (and the provider's queue time) is one more sample."""
        await learn(self.estimates, self.key, timing, ended_seen)

    def expected(self, pending: list[int], began: float) -> float | None:
        """About how long the run takes, from `began`, while the `pending` tasks all run."""
        ends = [self.ends[i] for i in pending if i in self.ends]
        return max(ends) - began if ends and len(ends) == len(pending) else None


class _Tasks:
    """Book-keeping of the running tasks, by the index of their call."""

    def __init__(self, provider: Provider, total: int) -> None:
        self.title = provider.title
        self.total = total
        self.task_ids: dict[int, str] = {}
        self.states: dict[int, str] = {}
        self.details: dict[int, str] = {}
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

    def detail(self) -> str:
        """The provider's progress words of the first running task that has some."""
        return next((d for i, d in sorted(self.details.items()) if d and not self.ended(i)), "")

    def progress(self, elapsed: float, expected: float | None = None) -> Progress:
        return Progress(
            self.state(), elapsed, self.done, self.total, self.ids(), expected, self.title,
            detail=self.detail(),
        )  # fmt: skip

    def apply(self, index: int, outcome: Outcome) -> None:
        """Record what a `start` or `check` answer meant (`imagegw.core.advance`)."""
        if isinstance(outcome, Submitted):
            self.task_ids[index] = outcome.task_id
            self.states[index] = outcome.state
        elif isinstance(outcome, Working):
            self.states[index] = outcome.state
            self.details[index] = outcome.detail
        elif isinstance(outcome, Made):
            self.images[index] = outcome.images
        else:
            self.failures[index] = outcome.error

    def answer(self, index: int, answer: Started | TaskStatus | BaseException) -> None:
        self.apply(index, advance(self.title, self.task_ids.get(index), answer))

    def refusal(self) -> GatewayError:
        return refusal([self.failures[i] for i in sorted(self.failures)])

    def result(self, elapsed: float) -> Result:
        """The result (images in the order of the calls), or the refusal when none was made."""
        if not self.images:
            raise self.refusal()
        return Result(
            images=tuple(url for i in sorted(self.images) for url in self.images[i]),
            failures=tuple(self.failures[i].message for i in sorted(self.failures)),
            task_ids=self.ids(),
            elapsed=elapsed,
        )


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


async def _ask(
    provider: Provider, request: GenerationRequest, task_id: str
) -> TaskStatus | GatewayError:
    """One poll's answer, a failure as its error (a transient one as TransientProviderError);
    an unexpected one is logged and reported, for a silently dead poller would leave the client
    waiting for the deadline."""
    try:
        return await provider.check(request, task_id)
    except GatewayError as exc:
        return exc
    except Exception:
        logger.exception("polling failed unexpectedly", extra={"task_id": task_id})
        return GatewayError(
            "The gateway failed unexpectedly. See its logs.", code="internal_error", retryable=False
        )


async def _poll(
    provider: Provider,
    request: GenerationRequest,
    index: int,
    task_id: str,
    settings: Settings,
    queue: asyncio.Queue[tuple[int, TaskStatus | GatewayError]],
    clock: Callable[[], float],
    forecast: _Forecast,
) -> None:
    """Poll one task until it ends; report each answer on the queue.

    Transient failures (5xx, unreadable answers, no connection, a poll timing out) are retried
    until POLL_FAILURE_WINDOW seconds pass without a good answer; then the task fails with a 502
    naming the last error, rather than the client hearing nothing until GENERATION_TIMEOUT.
    When (`imagegw.core.schedule`) follows the model's learned run time; a task that ends
    teaches it how long this one took."""
    timing = Timing(submitted=clock())
    answered, failures = timing.submitted, 0
    base, maximum = settings.poll_interval, settings.poll_interval_max
    while True:
        now = clock()
        delay = next_delay(timing, forecast.estimate, now, base, maximum)
        if failures:  # back off, but poll once more when the window closes
            delay = min(
                _retry_delay(delay, failures, settings),
                max(0.0, answered + settings.poll_failure_window - now),
            )
        await asyncio.sleep(delay)
        status = await _ask(provider, request, task_id)
        if isinstance(status, TransientProviderError):
            failures += 1
            if clock() - answered >= settings.poll_failure_window:
                logger.warning(
                    "polling given up",
                    extra={"task_id": task_id, "failures": failures, "error": status.message},
                )
                await queue.put((index, _unpollable(provider, task_id, settings, status)))
                return
            logger.warning("transient poll failure; will retry", extra={"error": status.message})
            continue
        if isinstance(status, GatewayError):
            await queue.put((index, status))
            return
        answered, failures = clock(), 0
        if isinstance(status, Running):
            timing = timing.seen(answered, status.state)
            expected = expected_total(timing, forecast.estimate)
            if expected is not None:
                forecast.ends[index] = timing.submitted + expected
        elif isinstance(status, Finished):
            await forecast.learn(timing, answered)
            if timing.last_running is not None:  # it ended between these two polls
                apimetrics.seconds("DetectionLag", answered - timing.last_running)
        await queue.put((index, status))
        if isinstance(status, Finished | Failed):
            return


class _Run:
    """One run of the loop: what its two phases (starting, then watching the tasks) share."""

    def __init__(
        self,
        provider: Provider,
        request: GenerationRequest,
        settings: Settings,
        clock: Callable[[], float],
        estimates: Estimates | None = None,
    ) -> None:
        self.provider, self.settings, self.clock = provider, settings, clock
        key = Key(provider.name, request.model, bucket(request.options))
        self.forecast = _Forecast(estimates, key)
        self.parts = provider.split(request)
        self.tasks = _Tasks(provider, len(self.parts))
        self.began = clock()
        self.deadline = self.began + settings.generation_timeout

    def elapsed(self) -> float:
        return self.clock() - self.began

    def remaining(self, late: Callable[[], str]) -> float:
        """Seconds left before GENERATION_TIMEOUT; a 504 (`late()` says what) when none."""
        left = self.deadline - self.clock()
        if left <= 0:
            raise DeadlineExceededError(late(), code="deadline_exceeded")
        return left

    async def start(self) -> AsyncGenerator[Progress, None]:
        """Start every part at once; a synchronous provider does the whole job in `start`, so
        progress is reported meanwhile. The calls in flight are cancelled if the reader left."""
        title, limit = self.provider.title, self.settings.generation_timeout
        starting = asyncio.ensure_future(self._start_all())
        try:
            while not starting.done():
                left = self.remaining(lambda: f"{title} did not answer within {limit:g} s.")
                await asyncio.wait({starting}, timeout=min(self.settings.progress_interval, left))
                if not starting.done():
                    yield Progress("RUNNING", self.elapsed(), 0, len(self.parts), where=title)
        finally:
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        for index, outcome in enumerate(starting.result()):
            self.tasks.answer(index, outcome)
        if not self.tasks.task_ids and not self.tasks.images:
            raise self.tasks.refusal()

    async def _start_all(self) -> list[Started | Finished | BaseException]:
        """Start every part; with a server-held token (a lease), a submission refused whole
        (401/403, quota, rate: nothing started) goes again with the pool's next token."""
        outcomes, self.parts = await start_leased(self.provider, self.parts, lease.current())
        return outcomes

    def progress(self) -> Progress:
        pending = [i for i in self.tasks.task_ids if not self.tasks.ended(i)]
        return self.tasks.progress(self.elapsed(), self.forecast.expected(pending, self.began))

    def _late(self) -> str:
        return (
            f"{self.provider.title} task {', '.join(self.tasks.pending())} did not finish "
            f"within {self.settings.generation_timeout:g} s; it may still finish at the provider."
        )

    async def watch(self, request: GenerationRequest) -> AsyncGenerator[Progress, None]:
        """Poll the started tasks until all ended: a progress at each change, and every
        PROGRESS_INTERVAL while nothing changes. No poll after this (the reader may leave)."""
        tasks, settings, clock = self.tasks, self.settings, self.clock
        queue: asyncio.Queue[tuple[int, TaskStatus | GatewayError]] = asyncio.Queue()
        forecast = self.forecast
        if forecast.estimates is not None:
            forecast.estimate = await forecast.estimates.get(forecast.key)
        pollers = [
            asyncio.create_task(
                _poll(self.provider, self.parts[i], i, tid, settings, queue, clock, forecast)
            )
            for i, tid in tasks.task_ids.items()
        ]
        try:
            yield self.progress()
            last_progress = clock()
            while tasks.done < tasks.total:
                wait = min(settings.progress_interval, self.remaining(self._late))
                try:
                    index, answer = await asyncio.wait_for(queue.get(), timeout=wait)
                except TimeoutError:
                    yield self.progress()
                    last_progress = clock()
                    continue
                before = (tasks.state(), tasks.done, tasks.detail())
                tasks.answer(index, answer)
                # a change at once; an unchanged state every progress_interval even while
                # polls keep answering (they come more often than that)
                if (tasks.state(), tasks.done, tasks.detail()) != before or (
                    clock() - last_progress >= settings.progress_interval
                ):
                    yield self.progress()
                    last_progress = clock()
        finally:
            for poller in pollers:
                poller.cancel()
            if pollers:
                await asyncio.gather(*pollers, return_exceptions=True)


async def run(
    provider: Provider,
    request: GenerationRequest,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    estimates: Estimates | None = None,
) -> AsyncGenerator[Event, None]:
    """Run the calls that make `request.n` images and yield progress, then the result (images in
    the order of the calls). Polls follow, and teach, the run times in `estimates` (none:
    today's fixed schedule). Raises GatewayError."""
    job = _Run(provider, request, settings, clock, estimates)
    async with aclosing(job.start()) as starting:  # closed with us: the calls cancelled
        async for event in starting:
            yield event
    logger.info(
        "tasks started",
        extra={
            "provider": provider.name,
            "model": request.model,
            "task_ids": list(job.tasks.ids()),
        },
    )
    async with aclosing(job.watch(request)) as watching:  # closed with us: no poll after
        async for event in watching:
            yield event
    result = job.tasks.result(job.elapsed())
    apimetrics.count("Generations")
    apimetrics.count("ImagesGenerated", len(result.images))
    apimetrics.seconds("GenerationSeconds", result.elapsed)
    yield result
