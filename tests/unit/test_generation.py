"""The in-process runner `inprocess.generate`, driven by a scripted in-memory provider (no HTTP)."""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from pydantic import SecretStr

from imagegw.core.estimates import MemoryEstimates
from imagegw.core.schedule import Estimate, Key
from imagegw.errors import (
    AuthenticationError,
    DeadlineExceededError,
    GatewayError,
    ProviderError,
    ProviderUnreachableError,
    RateLimitError,
    TransientProviderError,
    render,
)
from imagegw.infra.config import Settings
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelKind,
    Provider,
    Running,
    Started,
    TaskStatus,
)
from imagegw.runners.inprocess import Progress, Result, generate, poll_delay

pytestmark = pytest.mark.anyio

FAST = Settings(
    poll_interval=0.01, poll_interval_max=0.05, progress_interval=1.0, generation_timeout=3.0
)

Step = TaskStatus | Exception


def img(i: int) -> str:
    return f"https://img.example/{i}.png"


class Scripted(Provider):
    """Task i answers the steps of `scripts[i]` in turn; the last step repeats forever."""

    name = "scripted"
    title = "Scripted"
    catalog = ()

    def __init__(
        self,
        settings: Settings,
        scripts: Sequence[Sequence[Step]] = (),
        start_error: GatewayError | None = None,
    ) -> None:
        super().__init__(settings, None)  # type: ignore[arg-type]
        self.scripts = [list(s) for s in scripts]
        self.start_error = start_error
        self.started: list[str] = []
        self.checks: list[str] = []
        self.log: list[str] = []

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        return {}

    async def start(self, request: GenerationRequest) -> Started:
        task_id = f"task-{len(self.started)}"
        self.started.append(task_id)
        self.log.append(f"start {task_id}")
        if self.start_error is not None:
            raise self.start_error
        return Started(task_id)

    def next_step(self, task_id: str) -> Step:
        script = self.scripts[int(task_id.removeprefix("task-"))]
        return script.pop(0) if len(script) > 1 else script[0]

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        self.checks.append(task_id)
        step = self.next_step(task_id)
        if isinstance(step, Exception):
            raise step
        if not isinstance(step, Running):
            self.log.append(f"end {task_id}")
        return step


def job(n: int = 1) -> GenerationRequest:
    return GenerationRequest(
        provider="scripted",
        model="acme/Some-Image",
        kind=ModelKind.GENERATE,
        prompt="a cat",
        api_key=SecretStr("ms-secret"),
        n=n,
    )


class FakeClock:
    """Seconds that move only when slept on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)

    async def settle(self, turns: int = 20) -> None:
        """Let every task run a few turns of the event loop (no time passes)."""
        for _ in range(turns):
            await asyncio.sleep(0)


async def events_of(
    provider: Provider,
    request: GenerationRequest,
    settings: Settings,
    clock: FakeClock | None = None,
) -> list:
    """Every event of the run; on `clock` (its waits take no time) when given."""
    if clock is None:
        return [event async for event in generate(provider, request, settings)]
    run = generate(provider, request, settings, clock=clock, sleep=clock.sleep)
    return [event async for event in run]


# ----------------------------------------------------------------------------- one task


async def test_progress_events_then_the_result() -> None:
    provider = Scripted(
        FAST, [[Running("PENDING"), Running("RUNNING"), Running("RUNNING"), Finished((img(0),))]]
    )

    events = await events_of(provider, job(), FAST)

    *progress, result = events
    assert all(isinstance(e, Progress) for e in progress)
    assert [p.state for p in progress][:3] == ["SUBMITTED", "PENDING", "RUNNING"]
    assert progress[-1].done == progress[-1].total == 1
    assert [p.elapsed for p in progress] == sorted(p.elapsed for p in progress)
    assert isinstance(result, Result)
    assert result.images == (img(0),)
    assert result.failures == ()
    assert result.task_ids == ("task-0",)


async def test_progress_repeats_while_the_state_does_not_change() -> None:
    settings = FAST.model_copy(update={"progress_interval": 0.03})
    provider = Scripted(settings, [[Running("RUNNING")] * 15 + [Finished((img(0),))]])

    events = await events_of(provider, job(), settings)

    running = [e for e in events if isinstance(e, Progress) and e.state == "RUNNING"]
    assert len(running) >= 3  # the client keeps hearing how long it has been running
    assert running[-1].elapsed > running[0].elapsed


async def test_transient_poll_errors_are_retried() -> None:
    provider = Scripted(
        FAST,
        [
            [
                TransientProviderError("ModelScope answered 503"),
                TransientProviderError("ModelScope could not be reached"),
                Running("RUNNING"),
                Finished((img(0),)),
            ]
        ],
    )

    *_, result = await events_of(provider, job(), FAST)

    assert isinstance(result, Result)
    assert result.images == (img(0),)
    assert len(provider.checks) == 4


async def test_a_failed_task_is_a_502_with_the_reason_and_task_id() -> None:
    provider = Scripted(FAST, [[Running("RUNNING"), Failed("the prompt was rejected")]])

    with pytest.raises(ProviderError) as caught:
        await events_of(provider, job(), FAST)

    error = caught.value
    assert error.status == 502
    assert error.code == "generation_failed"
    assert "the prompt was rejected" in error.message
    assert "task-0" in error.message
    assert render(error)[2]["x-should-retry"] == "false"


async def test_a_non_transient_poll_error_ends_the_job() -> None:
    provider = Scripted(FAST, [[AuthenticationError("ModelScope: token revoked")]])

    with pytest.raises(AuthenticationError, match="token revoked"):
        await events_of(provider, job(), FAST)

    assert len(provider.checks) == 1


async def test_an_unexpected_poll_error_ends_the_job_at_once() -> None:
    # Given a provider whose check crashes, and a generous deadline
    settings = FAST.model_copy(update={"generation_timeout": 5.0})
    provider = Scripted(settings, [[RuntimeError("boom: ms-secret")]])

    # Then the job fails at its first poll with an opaque 500, not a 504 at the deadline
    with pytest.raises(GatewayError) as caught:
        await events_of(provider, job(), settings)

    assert not isinstance(caught.value, DeadlineExceededError)
    assert provider.checks == ["task-0"]
    status, body, headers = render(caught.value)
    assert status == 500
    assert "ms-secret" not in body["error"]["message"]
    assert headers["x-should-retry"] == "false"


async def test_deadline_is_a_504_naming_the_task() -> None:
    settings = FAST.model_copy(update={"generation_timeout": 0.2, "progress_interval": 0.05})
    provider = Scripted(settings, [[Running("RUNNING")]])

    with pytest.raises(DeadlineExceededError) as caught:
        await events_of(provider, job(), settings)

    assert provider.checks  # the task was polled until the deadline, then given up on
    error = caught.value
    assert error.status == 504
    assert error.code == "deadline_exceeded"
    assert "task-0" in error.message
    assert render(error)[2]["x-should-retry"] == "false"


async def test_rate_limited_start_is_that_error() -> None:
    limit = RateLimitError(
        "ModelScope: Rate limit exceeded",
        code="rate_limit_exceeded",
        headers={"retry-after": "3"},
    )
    provider = Scripted(FAST, start_error=limit)

    with pytest.raises(RateLimitError) as caught:
        await events_of(provider, job(n=2), FAST)

    assert caught.value.message == "ModelScope: Rate limit exceeded"
    assert caught.value.headers == {"retry-after": "3"}
    assert provider.checks == []


async def test_closing_the_events_early_stops_polling() -> None:
    provider = Scripted(FAST, [[Running("RUNNING")]])
    clock = FakeClock()  # the poller's waits take no time: no real sleep times the absence
    events = generate(provider, job(), FAST, clock=clock, sleep=clock.sleep)

    first = await anext(events)
    await clock.settle()
    await events.aclose()
    polled = len(provider.checks)
    await clock.settle()

    assert isinstance(first, Progress)
    assert polled > 0
    assert len(provider.checks) == polled


# ----------------------------------------------------------------------------- failing polls


def unavailable() -> TransientProviderError:
    return TransientProviderError(
        "Scripted answered 503 while polling.", reason="answered 503", code="provider_unavailable"
    )


async def test_polls_failing_for_the_whole_window_are_a_502_naming_the_last_error() -> None:
    # Given a task whose polls keep failing, and a deadline far beyond the failure window (on
    # a clock that moves as the poller waits: a busy machine's stall outlasting the window
    # would leave one poll)
    settings = FAST.model_copy(update={"poll_failure_window": 0.2, "generation_timeout": 30.0})
    provider = Scripted(settings, [[unavailable()]])

    # Then the client hears of it after the window, not at the deadline
    with pytest.raises(ProviderError) as caught:
        await events_of(provider, job(), settings, FakeClock())

    error = caught.value
    assert error.message == (
        "Scripted could not be polled for 0.2 s (task task-0): last error: answered 503."
    )
    assert error.code == "provider_unavailable"
    assert error.status == 502
    assert render(error)[2]["x-should-retry"] == "false"  # the paid task may still finish
    assert len(provider.checks) >= 2


async def test_failed_polls_back_off() -> None:
    # Given polls every 0.01 s at most 0.05 s apart, failing for a 0.3 s window
    settings = FAST.model_copy(update={"poll_failure_window": 0.3})
    provider = Scripted(settings, [[unavailable()]])

    with pytest.raises(ProviderError):
        await events_of(provider, job(), settings)

    # Then the failing provider was polled far less than every 0.01 s (30 times)
    assert len(provider.checks) <= 12


async def test_a_good_answer_restarts_the_failure_window() -> None:
    # Given streaks of failures, each shorter than the window but together far longer (on a
    # clock that moves as the poller waits: a stall mid-streak would outlast the window)
    settings = FAST.model_copy(update={"poll_failure_window": 0.15})
    streak = [unavailable(), unavailable(), Running("RUNNING")]
    provider = Scripted(settings, [streak * 6 + [Finished((img(0),))]])

    *_, result = await events_of(provider, job(), settings, FakeClock())

    assert isinstance(result, Result)
    assert result.images == (img(0),)
    assert len(provider.checks) == 19


async def test_refused_starts_forbid_a_retry_when_one_may_have_started() -> None:
    # Given two calls: one never reached the provider, the other lost its answer after sending
    class Refusing(Scripted):
        async def start(self, request: GenerationRequest) -> Started:
            started = await super().start(request)
            if started.task_id == "task-0":
                raise ProviderUnreachableError("Scripted could not be reached (ConnectError).")
            raise ProviderError("Scripted dropped the connection (ReadError).")

    provider = Refusing(FAST, [[], []])

    with pytest.raises(ProviderError) as caught:
        await events_of(provider, job(n=2), FAST)

    # Then the client is told not to retry: the second call may have started a paid task
    assert "ReadError" in caught.value.message
    assert render(caught.value)[2]["x-should-retry"] == "false"


async def test_refused_starts_that_all_started_nothing_may_be_retried() -> None:
    class Unreachable(Scripted):
        async def start(self, request: GenerationRequest) -> Started:
            await super().start(request)
            raise ProviderUnreachableError("Scripted could not be reached (ConnectError).")

    provider = Unreachable(FAST, [[], []])

    with pytest.raises(ProviderUnreachableError) as caught:
        await events_of(provider, job(n=2), FAST)

    assert render(caught.value)[2]["x-should-retry"] == "true"
    assert provider.checks == []


async def test_progress_names_the_started_tasks() -> None:
    provider = Scripted(FAST, [[Running("RUNNING"), Finished((img(0),))]])

    events = await events_of(provider, job(), FAST)

    assert all(e.task_ids == ("task-0",) for e in events if isinstance(e, Progress))


# ----------------------------------------------------------------------------- several tasks


class Concurrent(Scripted):
    """Starts only return once all `n` starts are in flight; task 0 finishes only after the
    others, and no task finishes before every task has been polled. Sequential code would hang
    until the deadline."""

    def __init__(self, settings: Settings, n: int, fail: int | None = None) -> None:
        super().__init__(settings, [[Finished((img(i),))] for i in range(n)])
        self.n = n
        self.fail = fail
        self.all_started = asyncio.Event()
        self.ended: set[str] = set()

    async def start(self, request: GenerationRequest) -> Started:
        task_id = f"task-{len(self.started)}"
        self.started.append(task_id)
        self.log.append(f"start {task_id}")
        if len(self.started) == self.n:
            self.all_started.set()
        await self.all_started.wait()
        return Started(task_id)

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        self.checks.append(task_id)
        everyone_polled = len(set(self.checks)) == self.n
        others_ended = len(self.ended - {task_id}) == self.n - 1
        if not everyone_polled or (task_id == "task-0" and not others_ended):
            return Running("RUNNING")
        self.ended.add(task_id)
        self.log.append(f"end {task_id}")
        if self.fail is not None and task_id == f"task-{self.fail}":
            return Failed("out of credits")
        return Finished((img(int(task_id.removeprefix("task-"))),))


async def test_n_tasks_run_concurrently_and_images_keep_their_order() -> None:
    provider = Concurrent(FAST, 3)

    *progress, result = await events_of(provider, job(n=3), FAST)

    assert isinstance(result, Result)
    assert result.images == (img(0), img(1), img(2))
    assert result.failures == ()
    assert result.task_ids == ("task-0", "task-1", "task-2")
    # all started before any finished, and task 0 finished last
    first_end = next(i for i, entry in enumerate(provider.log) if entry.startswith("end"))
    assert all(entry.startswith("start") for entry in provider.log[:first_end])
    assert len(provider.started) == 3
    assert provider.log[-1] == "end task-0"
    assert progress[-1].done == progress[-1].total == 3


async def test_one_of_three_failing_gives_two_images_and_the_failure() -> None:
    provider = Concurrent(FAST, 3, fail=1)

    *_, result = await events_of(provider, job(n=3), FAST)

    assert isinstance(result, Result)
    assert result.images == (img(0), img(2))
    assert len(result.failures) == 1
    assert "task-1" in result.failures[0]
    assert "out of credits" in result.failures[0]


async def test_all_tasks_failing_is_the_first_failure() -> None:
    provider = Scripted(FAST, [[Failed("first reason")], [Failed("second reason")]])

    with pytest.raises(ProviderError) as caught:
        await events_of(provider, job(n=2), FAST)

    assert "first reason" in caught.value.message


async def test_some_starts_refused_still_returns_the_others() -> None:
    class SecondRefused(Scripted):
        async def start(self, request: GenerationRequest) -> Started:
            started = await super().start(request)
            if started.task_id == "task-1":
                raise RateLimitError("ModelScope: Rate limit exceeded")
            return started

    provider = SecondRefused(FAST, [[Finished((img(0),))], [], [Finished((img(2),))]])

    *_, result = await events_of(provider, job(n=3), FAST)

    assert isinstance(result, Result)
    assert result.images == (img(0), img(2))
    assert result.failures == ("ModelScope: Rate limit exceeded",)
    assert "task-1" not in provider.checks


# ----------------------------------------------------------------------------- poll schedule


async def test_a_resumed_job_polls_the_tasks_it_is_given_and_starts_none() -> None:
    # Given the two tasks an earlier request started for a job (a repeated request): one
    # finished since, one finishing at its second poll
    provider = Scripted(FAST, [[Finished((img(0),))], [Running("RUNNING"), Finished((img(1),))]])
    learned = MemoryEstimates()

    # When the job is resumed with them
    resumed = generate(provider, job(2), FAST, estimates=learned, resume=("task-0", "task-1"))
    events = [event async for event in resumed]

    # Then their images come in the order of the calls, without a call started
    result = events[-1]
    assert isinstance(result, Result) and result.images == (img(0), img(1))
    assert result.task_ids == ("task-0", "task-1")
    assert provider.started == []
    assert sorted(provider.checks) == ["task-0", "task-1", "task-1"]
    # and the first progress names them at once
    first = events[0]
    assert isinstance(first, Progress) and first.task_ids == ("task-0", "task-1")
    # and their run times, unknown here (they began before), teach nothing
    assert learned.learned == {}


class SharedLike(MemoryEstimates):
    """Estimates kept in a slow table: a lookup answers once `answer_lookups` is set, a record
    is written once `finish_records` is set (or fails with `record_error`)."""

    def __init__(self, record_error: Exception | None = None) -> None:
        super().__init__()
        self.answer_lookups = asyncio.Event()
        self.finish_records = asyncio.Event()
        self.record_error = record_error
        self.recording = 0

    async def get(self, key: Key) -> Estimate | None:
        await self.answer_lookups.wait()
        return await super().get(key)

    async def record(self, key: Key, seconds: float) -> None:
        self.recording += 1
        await self.finish_records.wait()
        if self.record_error is not None:
            raise self.record_error
        await super().record(key, seconds)


class StartsOnceAsked(Scripted):
    """Its calls answer only once the model's run time has been asked for (`asked`); each
    sets `submitted` when sent."""

    def __init__(self, scripts: Sequence[Sequence[Step]], asked: asyncio.Event) -> None:
        super().__init__(FAST, scripts)
        self.asked = asked
        self.submitted = asyncio.Event()

    async def start(self, request: GenerationRequest) -> Started:
        self.submitted.set()
        await self.asked.wait()
        return await super().start(request)


class AsksOnceSubmitted(SharedLike):
    """A table that answers a lookup only once the job's call was sent (`submitted`)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.submitted = asyncio.Event()
        self.finish_records.set()

    async def get(self, key: Key) -> Estimate | None:
        self.asked.set()
        await self.submitted.wait()
        return await MemoryEstimates.get(self, key)


async def test_the_result_is_not_held_up_by_recording_the_run_time() -> None:
    # Given estimates in a table whose writes are slow
    estimates = SharedLike()
    estimates.answer_lookups.set()
    provider = Scripted(FAST, [[Finished((img(0),))]])
    events = generate(provider, job(), FAST, estimates=estimates)

    # When the task ends, its result comes while its run time is still being written
    async with asyncio.timeout(10):
        result = [event async for event in _until_result(events)][-1]
    assert isinstance(result, Result) and result.images == (img(0),)
    assert estimates.recording == 1 and estimates.learned == {}

    # and the run ends only once the sample is written (nothing is left running after it)
    estimates.finish_records.set()
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    assert [e.samples for e in estimates.learned.values()] == [1]


@pytest.mark.parametrize("failing", ["at once", "after a wait"])
async def test_a_run_time_that_cannot_be_recorded_loses_the_sample_not_the_result(
    failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    estimates = SharedLike(record_error=RuntimeError("table gone"))
    estimates.answer_lookups.set()
    if failing == "at once":  # failed before the run's end, or failing as it ends
        estimates.finish_records.set()
    provider = Scripted(FAST, [[Finished((img(0),))]])

    with caplog.at_level(logging.WARNING):
        events = generate(provider, job(), FAST, estimates=estimates)
        async with asyncio.timeout(10):
            seen = [event async for event in _until_result(events)]
            estimates.finish_records.set()
            with pytest.raises(StopAsyncIteration):
                await anext(events)

    assert isinstance(seen[-1], Result) and seen[-1].images == (img(0),)
    assert estimates.learned == {}
    [warning] = [r for r in caplog.records if r.getMessage() == "run time not learned"]
    assert warning.error == "RuntimeError"  # type: ignore[attr-defined]


async def test_the_run_time_is_looked_up_while_the_calls_start() -> None:
    # Given a submission that answers only once the model's estimate was asked for, and a
    # table that answers only once the submission was sent
    estimates = AsksOnceSubmitted()
    provider = StartsOnceAsked([[Finished((img(0),))]], estimates.asked)
    estimates.submitted = provider.submitted

    # When a job runs, both go on at once (one after the other, neither would ever answer)
    async with asyncio.timeout(10):
        events = await events_of_with(provider, estimates)

    assert isinstance(events[-1], Result) and provider.started == ["task-0"]


async def _until_result(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for event in events:
        yield event
        if isinstance(event, Result):
            return


async def events_of_with(provider: Provider, estimates: MemoryEstimates) -> list[Any]:
    return [event async for event in generate(provider, job(), FAST, estimates=estimates)]


async def test_a_resumed_job_still_running_at_its_deadline_is_the_504_naming_it() -> None:
    settings = FAST.model_copy(update={"generation_timeout": 0.2, "progress_interval": 0.05})
    provider = Scripted(settings, [[Running("RUNNING")]])

    with pytest.raises(DeadlineExceededError) as caught:
        async for _ in generate(provider, job(), settings, resume=("task-0",)):
            pass

    assert "task-0" in caught.value.message and provider.started == []


def test_poll_delay_is_the_base_for_the_first_15_seconds() -> None:
    for elapsed in (0.0, 1.0, 7.5, 15.0):
        assert poll_delay(elapsed, 0.75, 3.0) == 0.75


def test_poll_delay_grows_after_15_seconds_up_to_the_maximum() -> None:
    assert poll_delay(22.5, 0.75, 3.0) == pytest.approx(1.125)
    assert poll_delay(30.0, 0.75, 3.0) == pytest.approx(1.5)
    assert poll_delay(60.0, 0.75, 3.0) == pytest.approx(3.0)
    assert poll_delay(600.0, 0.75, 3.0) == 3.0

    delays = [poll_delay(t / 10, 0.75, 3.0) for t in range(0, 6000)]
    assert delays == sorted(delays)
    assert max(delays) == 3.0


def test_default_schedule_meets_the_lag_and_load_targets() -> None:
    # issue 2: median lag <= 0.5 s for 2-10 s tasks, at <= 1.5 polls per second on average
    settings = Settings()
    lags, rates = [], []
    for hundredths in range(200, 1001):
        duration = hundredths / 100
        now, polls = 0.0, 0
        while now < duration:
            now += poll_delay(now, settings.poll_interval, settings.poll_interval_max)
            polls += 1
        lags.append(now - duration)
        rates.append(polls / duration)

    assert statistics.median(lags) <= 0.5
    assert statistics.mean(rates) <= 1.5


def test_a_progress_moved_to_another_clock_keeps_the_rest() -> None:
    """What the pipeline tells the reader: the same progress, with the request's elapsed and
    expected seconds."""
    progress = Progress("RUNNING", 1.0, 1, 3, ("t1", "t2"), 4.0, "ModelScope", "position 2")
    moved = progress.timed(1.5, 4.5)
    assert moved == Progress("RUNNING", 1.5, 1, 3, ("t1", "t2"), 4.5, "ModelScope", "position 2")
    assert progress.timed(0.2, None).expected is None
