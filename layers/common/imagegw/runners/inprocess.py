"""The in-process runner: a job's provider calls driven inside the request, as events.

`generate()` starts the provider's calls for the `n` images at once (`Provider.split`: one image a
call, or batches), polls each task when the model's learned run time says it should end
(`imagegw.core.schedule`; today's fixed schedule for a model not learned yet), retries
transient poll failures (backing off) until POLL_FAILURE_WINDOW seconds pass without a good
answer, and yields `Progress` events (also while a synchronous provider works inside `start`),
then one `Result`. A repeated request whose twin's tasks may still finish
(`imagegw.frontends.replays`) resumes them instead (`resume`): polled, never started again. What
an answer means, and every decision of the job's life (the task book,
back-off and giving up, the deadline, the final error), is the core's
(`imagegw.core.lifecycle`): this module does the I/O and keeps the time (`clock`, `sleep`, both
injectable). Rendering (SSE or JSON) is someone else's job.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from imagegw.access import lease
from imagegw.core.advance import advance, start_leased
from imagegw.core.estimates import Estimates, learn
from imagegw.core.lifecycle import Book, PollPolicy, Summary, failure_notes, late, next_poll
from imagegw.core.schedule import Estimate, Key, Timing, bucket, expected_total, poll_delay
from imagegw.errors import GatewayError, TransientProviderError
from imagegw.infra import apimetrics
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.infra.waits import done_within
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    Provider,
    Running,
    Started,
    TaskStatus,
)

__all__ = ["Event", "Progress", "Result", "generate", "poll_delay"]

#: how the runner waits (`asyncio.sleep`; a test's fake clock moves instead)
Sleep = Callable[[float], Awaitable[None]]
#: what a poller tells the runner: an answer, a poll that got none (a transient error), or
#: None: the task is given up on (its polls failed for the policy's window)
Answer = TaskStatus | GatewayError | None


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

    def timed(self, elapsed: float, expected: float | None) -> Progress:
        """This progress with another `elapsed` and `expected` (`replace(self, ...)` made
        directly: the pipeline moves every progress to its request's clock)."""
        return Progress(
            self.state,
            elapsed,
            self.done,
            self.total,
            self.task_ids,
            expected,
            self.where,
            self.detail,
        )


#: a result's images: as made (str: links and data URIs), or as delivered (`runners.pipeline`)
ImageT = TypeVar("ImageT", covariant=True)


@dataclass(frozen=True)
class Result(Generic[ImageT]):
    """Every image made, and the reasons of the tasks that failed (when some succeeded)."""

    images: tuple[ImageT, ...]
    failures: tuple[str, ...]
    task_ids: tuple[str, ...]
    elapsed: float


Event = Progress | Result[str]


async def _joined(tasks: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """`asyncio.gather(*tasks, return_exceptions=True)`: each task's result, or its exception
    (a cancelled one's `CancelledError`), every exception seen. When every task is done
    already (a run's pollers at its end, its records made in memory), without gather's future
    and the turn of the event loop it waits for its children's callbacks."""
    if not all(task.done() for task in tasks):
        return await asyncio.gather(*tasks, return_exceptions=True)
    outcomes: list[Any] = []
    for task in tasks:
        if task.cancelled():
            outcomes.append(asyncio.CancelledError())
        else:
            error = task.exception()
            outcomes.append(task.result() if error is None else error)
    return outcomes


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
        await learn(self.estimates, self.key, timing, ended_seen, self.estimate)

    def expected(self, pending: list[int], began: float) -> float | None:
        """About how long the run takes, from `began`, while the `pending` tasks all run."""
        ends = [self.ends[i] for i in pending if i in self.ends]
        return max(ends) - began if ends and len(ends) == len(pending) else None


class _Inbox:
    """What the pollers tell `watch`, in the order told: put at once (no await), waited for
    with at most one timer per wait's end (`wait_until`), not a timer per answer."""

    __slots__ = ("answers", "timer", "waiter")

    def __init__(self) -> None:
        self.answers: deque[tuple[int, Answer]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def put(self, index: int, answer: Answer) -> None:
        self.answers.append((index, answer))
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _rang(self) -> None:
        self.timer = None
        self._wake()

    async def wait_until(self, due: float) -> bool:
        """Whether an answer came before the loop's time `due`. The timer set for an earlier
        wait stays when it rings no later than `due` (most answers come before it rings):
        when it rings before `due`, the wait goes on, with a timer for `due` then."""
        loop = asyncio.get_running_loop()
        while not self.answers:
            if loop.time() >= due:
                return False
            timer = self.timer
            if timer is None or timer.when() > due:
                if timer is not None:
                    timer.cancel()
                self.timer = loop.call_at(due, self._rang)
            self.waiter = loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return True

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


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


class _Run:
    """One run: what its two phases (starting, then watching the tasks) share. The job's state
    is its task book (`imagegw.core.lifecycle.Book`)."""

    def __init__(
        self,
        provider: Provider,
        request: GenerationRequest,
        settings: Settings,
        clock: Callable[[], float],
        sleep: Sleep,
        estimates: Estimates | None = None,
    ) -> None:
        self.provider, self.settings, self.clock, self.sleep = provider, settings, clock, sleep
        key = Key(provider.name, request.model, bucket(provider.workload(request.options)))
        self.forecast = _Forecast(estimates, key)
        self.policy = PollPolicy.interactive(
            settings.poll_interval, settings.poll_interval_max, settings.poll_failure_window
        )
        self.parts = provider.split(request)
        self.book: Book[str] = Book.of(len(self.parts))
        self.began = clock()
        self.deadline = self.began + settings.generation_timeout
        #: the model's estimate being looked up while the calls start (`foresee`)
        self._foreseen: asyncio.Future[Estimate | None] | None = None
        #: the run times being recorded while the images are delivered (`learned`)
        self._learning: list[asyncio.Task[None]] = []

    def elapsed(self) -> float:
        return self.clock() - self.began

    def foresee(self) -> None:
        """Look the model's run time up while the calls start: a shared table's read (or its
        client's first build) is not waited for between the submission and the first poll."""
        estimates = self.forecast.estimates
        if estimates is not None:
            self._foreseen = asyncio.ensure_future(estimates.get(self.forecast.key))

    def learn(self, timing: Timing, ended_seen: float) -> None:
        """A task ended: its run time is recorded meanwhile, not before its answer is used (a
        shared table's write goes on while the images are delivered; `settle` waits for it)."""
        if self.forecast.estimates is not None:
            self._learning.append(asyncio.create_task(self.forecast.learn(timing, ended_seen)))

    async def settle(self, *, cancel: bool = False) -> None:
        """At the run's end: the lookup stopped if nobody used it, the records waited for
        (`cancel`: stopped too, the reader left). A record that failed is a sample lost, never
        the job's failure."""
        if self._foreseen is not None and not self._foreseen.done():
            self._foreseen.cancel()
        if self._foreseen is not None:
            await asyncio.gather(self._foreseen, return_exceptions=True)
            self._foreseen = None
        learning, self._learning = self._learning, []
        if cancel:
            for task in learning:
                task.cancel()
        for outcome in await _joined(learning):
            if isinstance(outcome, Exception):
                logger.warning("run time not learned", extra={"error": type(outcome).__name__})

    def left(self) -> float:
        """Seconds left before GENERATION_TIMEOUT."""
        return self.deadline - self.clock()

    async def start(self) -> AsyncGenerator[Progress, None]:
        """Start every part at once; a synchronous provider does the whole job in `start`, so
        progress is reported meanwhile. The calls in flight are cancelled if the reader left."""
        title, limit = self.provider.title, self.settings.generation_timeout
        starting = asyncio.ensure_future(self._start_all())
        try:
            while not starting.done():
                left = self.left()
                if left <= 0:
                    raise late(title, (), limit)
                await done_within(starting, min(self.settings.progress_interval, left))
                if not starting.done():
                    yield Progress("RUNNING", self.elapsed(), 0, len(self.parts), where=title)
        finally:
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        for index, outcome in enumerate(starting.result()):
            self.book = self.book.apply(index, advance(title, None, outcome))
        if not self.book.started:
            raise self.book.final_error()

    def adopt(self, task_ids: Sequence[str]) -> None:
        """The tasks an earlier request started for this same job, one per call (a repeated
        request, `imagegw.frontends.replays`): polled from now on, never started again."""
        assert len(task_ids) == len(self.parts), "one task per call"
        for index, task_id in enumerate(task_ids):
            self.book = self.book.apply(index, advance(self.provider.title, None, Started(task_id)))

    async def _start_all(self) -> list[Started | Finished | BaseException]:
        """Start every part; with a server-held token (a lease), a submission refused whole
        (401/403, quota, rate: nothing started) goes again with the pool's next token."""
        outcomes, self.parts = await start_leased(self.provider, self.parts, lease.current())
        return outcomes

    def progress(self, summary: Summary | None = None) -> Progress:
        """Where the run stands (`summary`: the book's, when the caller has it at hand)."""
        summary = summary or self.book.summary()
        expected = self.forecast.expected(self.book.running(), self.began)
        return Progress(
            summary.state,
            self.elapsed(),
            summary.done,
            summary.total,
            summary.task_ids,
            expected,
            self.provider.title,
            summary.detail,
        )

    def _answer(self, index: int, answer: Answer) -> None:
        """Record what a poller said (the core decides what it means)."""
        book, title = self.book, self.provider.title
        if answer is None:
            self.book = book.give_up(index, title, self.policy)
        elif isinstance(answer, TransientProviderError):
            self.book = book.poll_failed(index, answer)
        else:
            self.book = book.apply(index, advance(title, book.tasks[index].task_id, answer))

    async def _poll(self, index: int, task_id: str, inbox: _Inbox) -> None:
        """Poll one task until it ends; report each answer in the inbox.

        Transient failures (5xx, unreadable answers, no connection, a poll timing out) are
        retried after the policy's back-off until it gives up (POLL_FAILURE_WINDOW without a
        good answer); then the task fails with a 502 naming the last error, rather than the
        client hearing nothing until GENERATION_TIMEOUT. When (`imagegw.core.schedule`)
        follows the model's learned run time; a task that ends teaches it how long this one
        took."""
        clock, forecast, policy = self.clock, self.forecast, self.policy
        request, title = self.parts[index], self.provider.title
        timing = Timing(submitted=clock())
        answered, failures = timing.submitted, 0
        while True:
            delay = next_poll(timing, forecast.estimate, clock(), policy, failures, answered)
            await self.sleep(delay)
            status = await _ask(self.provider, request, task_id)
            if isinstance(status, TransientProviderError):
                failures += 1
                inbox.put(index, status)
                if policy.gives_up(answered, clock()):
                    logger.warning(
                        "polling given up",
                        extra={"task_id": task_id, "failures": failures, "error": status.message},
                    )
                    inbox.put(index, None)
                    return
                logger.warning(
                    "transient poll failure; will retry", extra={"error": status.message}
                )
                continue
            if isinstance(status, GatewayError):
                inbox.put(index, status)
                return
            answered, failures = clock(), 0
            if isinstance(status, Running):
                timing = timing.seen(answered, status.state)
                expected = expected_total(timing, forecast.estimate)
                if expected is not None:
                    forecast.ends[index] = timing.submitted + expected
                # an answer that changes nothing (the book as `watch` left it: no answer
                # waiting) does not wake the watcher: its timer tells the time
                if not inbox.answers and self.book.keeps(index, advance(title, task_id, status)):
                    continue
            elif isinstance(status, Finished):
                self.learn(timing, answered)
                if timing.last_running is not None:  # it ended between these two polls
                    apimetrics.seconds("DetectionLag", answered - timing.last_running)
            inbox.put(index, status)
            if isinstance(status, Finished | Failed):
                return

    async def watch(self) -> AsyncGenerator[Progress, None]:
        """Poll the started tasks until all ended or the deadline: a progress at each change,
        and every PROGRESS_INTERVAL while nothing changes. No poll after this (the reader may
        leave). At the deadline the tasks still running fail (`Book.out_of_time`)."""
        settings, clock = self.settings, self.clock
        inbox = _Inbox()
        forecast = self.forecast
        if self._foreseen is not None:
            foreseen, self._foreseen = self._foreseen, None
            forecast.estimate = await foreseen
        pollers = [
            asyncio.create_task(self._poll(i, str(self.book.tasks[i].task_id), inbox))
            for i in self.book.running()
        ]
        loop = asyncio.get_running_loop()
        try:
            summary = self.book.summary()  # the book's, kept as each answer changes it
            yield self.progress(summary)
            last_progress = clock()
            while not self.book.ended:
                left = self.left()
                if left <= 0:
                    title, limit = self.provider.title, settings.generation_timeout
                    self.book = self.book.out_of_time(title, limit)
                    break
                wait = min(settings.progress_interval, left)
                if not await inbox.wait_until(loop.time() + wait):
                    yield self.progress(summary)
                    last_progress = clock()
                    continue
                index, answer = inbox.answers.popleft()
                before, book = summary, self.book
                self._answer(index, answer)
                if self.book is not book:  # an answer that changes nothing keeps the book
                    summary = self.book.summary()
                # a change (state, tasks ended, the provider's words) at once; an unchanged
                # state every progress_interval even while polls keep answering (they come
                # more often than that; those that change nothing do not wake this loop:
                # `_poll`, and the wait's timer rings)
                if summary != before or clock() - last_progress >= settings.progress_interval:
                    yield self.progress(summary)
                    last_progress = clock()
        finally:
            inbox.close()
            for poller in pollers:
                poller.cancel()
            if pollers:
                await _joined(pollers)

    def result(self) -> Result[str]:
        """The result (images in the order of the calls), or the job's one error when none
        was made (`imagegw.core.lifecycle.final_error`)."""
        book = self.book
        if not book.images():
            raise book.final_error()
        return Result(
            images=book.images(),
            failures=failure_notes(
                self.provider.title,
                sum(part.n for part in self.parts),
                len(book.images()),
                [error.message for error in book.errors()],
            ),
            task_ids=book.task_ids(),
            elapsed=self.elapsed(),
        )


async def generate(
    provider: Provider,
    request: GenerationRequest,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    estimates: Estimates | None = None,
    resume: Sequence[str] = (),
) -> AsyncGenerator[Event, None]:
    """Run the calls that make `request.n` images and yield progress, then the result (images in
    the order of the calls). Polls follow, and teach, the run times in `estimates` (none:
    today's fixed schedule). With `resume`, the tasks an earlier request started for this job
    (one per call) are polled instead of starting any: they teach nothing (when they began is
    not known here). Raises GatewayError."""
    job = _Run(provider, request, settings, clock, sleep, None if resume else estimates)
    left = False
    try:
        if resume:
            job.adopt(resume)
        else:
            job.foresee()
            async with aclosing(job.start()) as starting:  # closed with us: the calls cancelled
                async for event in starting:
                    yield event
        logger.info(
            "tasks resumed" if resume else "tasks started",
            extra={
                "provider": provider.name,
                "model": request.model,
                "task_ids": list(job.book.task_ids()),
            },
        )
        async with aclosing(job.watch()) as watching:  # closed with us: no poll after
            async for event in watching:
                yield event
        result = job.result()
        apimetrics.count("Generations")
        apimetrics.count("ImagesGenerated", len(result.images))
        apimetrics.seconds("GenerationSeconds", result.elapsed)
        yield result  # delivered meanwhile, while the run times are recorded
    except asyncio.CancelledError:
        left = True
        raise
    finally:
        await job.settle(cancel=left)
