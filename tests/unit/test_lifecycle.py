"""The job lifecycle (`imagegw.core.lifecycle`): the poll-failure policy and the deadline on a
fake clock (no real sleeps), and run times learned per size whatever format a provider writes
its size in."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pydantic import SecretStr

from imagegw.core.advance import Broke, Made, Submitted, Working
from imagegw.core.estimates import MemoryEstimates
from imagegw.core.lifecycle import Book, JobWaits, PollPolicy, job_waits, settlement
from imagegw.core.plan import Ask, plan
from imagegw.core.schedule import EARLY, QUEUE_MODEL, Timing
from imagegw.errors import (
    DeadlineExceededError,
    ProviderError,
    RateLimitError,
    TransientProviderError,
    render,
)
from imagegw.infra.config import Settings
from imagegw.providers.base import (
    Finished,
    GenerationRequest,
    ModelKind,
    Provider,
    Running,
    Started,
    TaskStatus,
    Workload,
)
from imagegw.providers.bfl import BlackForestLabs
from imagegw.providers.dashscope import DashScope
from imagegw.providers.fal import Fal
from imagegw.providers.siliconflow import SiliconFlow
from imagegw.runners.inprocess import Result, generate

pytestmark = pytest.mark.anyio

Answer = TaskStatus | Exception


class FakeClock:
    """Seconds that move only when slept on; every sleep recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # others run; no time passes


class Scripted(Provider):
    """One task whose polls answer `script` in turn, the last one for ever."""

    name = "scripted"
    title = "Scripted"
    catalog = ()

    def __init__(self, settings: Settings, script: Sequence[Answer]) -> None:
        super().__init__(settings, None)  # type: ignore[arg-type]
        self.script = list(script)
        self.checks: list[float] = []
        self.clock: FakeClock | None = None

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        return {}

    async def start(self, request: GenerationRequest) -> Started:
        return Started("t0")

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        self.checks.append(self.clock.now if self.clock else 0.0)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def unavailable() -> TransientProviderError:
    return TransientProviderError(
        "Scripted answered 503 while polling.", reason="answered 503", code="provider_unavailable"
    )


def job(**options: Any) -> GenerationRequest:
    return GenerationRequest(
        "scripted", "m", ModelKind.GENERATE, "a cat", SecretStr("k"), options=options
    )


async def run_on(clock: FakeClock, provider: Scripted, settings: Settings) -> list[Any]:
    provider.clock = clock
    events = generate(provider, job(), settings, clock=clock, sleep=clock.sleep)
    return [event async for event in events]


# ----------------------------------------------------------------------- the policy, pure


def test_failed_polls_back_off_doubling_to_the_cap() -> None:
    interactive = PollPolicy.interactive(1.0, 8.0, window=30.0)
    durable = PollPolicy.durable(interval=0)

    assert [interactive.backoff(f) for f in range(6)] == [0, 2, 4, 8, 8, 8]
    assert [durable.backoff(f) for f in range(8)] == [0, 2, 4, 8, 16, 32, 60, 60]
    # a job polled every 90 s never waits less after a failure
    assert PollPolicy.durable(interval=90).backoff(1) == 90


def test_a_caller_on_the_line_is_given_up_on_after_the_window_a_durable_job_never() -> None:
    interactive = PollPolicy.interactive(1.0, 8.0, window=30.0)
    durable = PollPolicy.durable(interval=5)

    assert not interactive.gives_up(answered=100.0, now=129.9)
    assert interactive.gives_up(answered=100.0, now=130.0)
    assert not durable.gives_up(answered=100.0, now=100.0 + 86_400)


def test_a_durable_job_backs_off_for_its_longest_failing_streak_else_waits_as_predicted() -> None:
    book: Book[str] = Book.of(2)
    book = book.apply(0, Submitted("a")).apply(1, Submitted("b"))
    book = book.timed(0, Timing(submitted=0.0)).timed(1, Timing(submitted=0.0))
    policy = PollPolicy.durable(interval=5)

    assert job_waits(book, policy, 5, None, None, now=1.0) == JobWaits(0, 0)
    failing = book.poll_failed(0, unavailable()).poll_failed(0, unavailable())
    failing = failing.poll_failed(1, unavailable())
    assert job_waits(failing, policy, 5, None, None, now=1.0) == JobWaits(20, 0)
    # a usable answer starts the count again
    recovered = failing.apply(0, Working("RUNNING")).apply(1, Working("RUNNING"))
    assert job_waits(recovered, policy, 5, None, None, now=1.0) == JobWaits(0, 0)


def test_the_final_error_forbids_a_retry_when_any_task_may_have_started_paid_work() -> None:
    book: Book[str] = Book.of(2)
    rate = RateLimitError("Scripted: Rate limit exceeded")
    failed = ProviderError("Scripted task t1 failed: bad prompt", code="generation_failed")
    book = book.apply(0, Broke(rate)).apply(1, Submitted("t1")).apply(1, Broke(failed))

    assert book.status() == "failed"
    assert book.final_error() is failed
    assert render(book.final_error())[2]["x-should-retry"] == "false"
    # every call refused for rate (nothing started): the 429, retryable
    refused = Book[str].of(2).apply(0, Broke(rate)).apply(1, Broke(rate))
    assert refused.final_error() is rate


def test_settlement_counts_what_was_made_and_gives_back_the_rest() -> None:
    assert (settlement(3, 2).made, settlement(3, 2).give_back) == (2, 1)
    assert settlement(2, 0).give_back == 2
    assert settlement(2, 5).made == 2  # never more than reserved (a batch call made extra)


def test_the_summary_is_the_running_tasks_state_and_the_ended_count() -> None:
    book: Book[str] = Book.of(3)
    book = book.apply(0, Submitted("a")).apply(1, Submitted("b")).apply(2, Submitted("c"))
    book = book.apply(0, Working("RUNNING")).apply(1, Working("RUNNING"))
    book = book.apply(2, Made(("https://img/1.png",)))

    summary = book.summary()
    assert (summary.state, summary.done, summary.total) == ("RUNNING", 1, 3)
    assert summary.task_ids == ("a", "b", "c")


# ------------------------------------------------------- the in-process runner, fake clock


async def test_failing_polls_double_their_waits_then_give_up_at_the_window() -> None:
    # Given polls 1 s apart at most 8 s after failures, a 30 s window, and every poll failing
    settings = Settings(
        poll_interval=1.0, poll_interval_max=8.0, poll_failure_window=30.0,
        generation_timeout=600.0, progress_interval=1000.0,
    )  # fmt: skip
    provider, clock = Scripted(settings, [unavailable()]), FakeClock()

    with pytest.raises(ProviderError) as caught:
        await run_on(clock, provider, settings)

    # Then the waits doubled up to the cap, and the last poll came as the window closed
    assert clock.sleeps == pytest.approx([EARLY, 2, 4, 8, 8, 8 - EARLY])
    assert provider.checks == pytest.approx([EARLY + t for t in (0, 2, 6, 14, 22)] + [30.0])
    assert caught.value.message == (
        "Scripted could not be polled for 30 s (task t0): last error: answered 503."
    )
    assert render(caught.value)[2]["x-should-retry"] == "false"


async def test_a_usable_answer_restarts_the_window() -> None:
    # Given failing streaks each shorter than the window, a usable answer between them
    settings = Settings(
        poll_interval=1.0, poll_interval_max=8.0, poll_failure_window=10.0,
        generation_timeout=600.0, progress_interval=1000.0,
    )  # fmt: skip
    streak = [unavailable(), unavailable(), unavailable(), Running("RUNNING")]
    provider, clock = (
        Scripted(settings, streak * 4 + [Finished(("https://img/1.png",))]),
        FakeClock(),
    )

    *_, result = await run_on(clock, provider, settings)

    # Then the task was polled through every streak to its image, far past one window
    assert isinstance(result, Result) and result.images == ("https://img/1.png",)
    assert clock.now > 30.0


async def test_the_deadline_fails_the_late_task_naming_its_last_poll_error() -> None:
    # Given a window longer than the deadline, and every poll failing
    settings = Settings(
        poll_interval=1.0, poll_interval_max=8.0, poll_failure_window=120.0,
        generation_timeout=40.0, progress_interval=1000.0,
    )  # fmt: skip
    provider, clock = Scripted(settings, [unavailable()]), FakeClock()

    with pytest.raises(DeadlineExceededError) as caught:
        await run_on(clock, provider, settings)

    # Then the deadline's one wording, with the streak of failed polls
    polls = len(provider.checks)
    assert caught.value.message == (
        "Scripted task t0 did not finish within 40 s; it may still finish at the provider. "
        f"The last {polls} polls failed; the last: Scripted answered 503 while polling."
    )
    assert render(caught.value)[2]["x-should-retry"] == "false"


# -------------------------------------------------------------- sizes in a provider's format


class StarSized(Scripted):
    """A provider that writes its size `W*H` (as DashScope does), finishing at once."""

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        width, _, height = str(fields["size"]).partition("x")
        return {"size": f"{width}*{height}"}


async def test_a_provider_writing_w_star_h_learns_run_times_per_size() -> None:
    # Given a provider that writes `1024*1024` and `2048*2048`
    settings = Settings(poll_interval=1.0, poll_interval_max=3.0, progress_interval=1000.0)
    learned = MemoryEstimates()

    # When a small and a large image are made
    for size in ("1024x1024", "2048x2048"):
        provider, clock = StarSized(settings, [Running("RUNNING"), Finished(("x",))]), FakeClock()
        request = plan(
            provider, Ask("m", ModelKind.GENERATE, "a cat", {"size": size}), SecretStr("k")
        )
        assert "*" in request.options["size"]
        events = generate(
            provider, request, settings, clock=clock, sleep=clock.sleep, estimates=learned
        )
        assert isinstance([event async for event in events][-1], Result)

    # Then each size's run time is learned in a bucket of its own
    runs = {key.bucket for key in learned.learned if key.model != QUEUE_MODEL}
    assert runs == {"1mp/std", "4mp/std"}


@pytest.mark.parametrize(
    ("provider", "options", "steps"),
    [
        (SiliconFlow, {"image_size": "1024x1024", "num_inference_steps": 50}, 50),
        (DashScope, {"size": "1024*1024"}, None),  # its `W*H`; it takes no steps
        (BlackForestLabs, {"width": 1024, "height": 1024, "steps": 50}, 50),
        (Fal, {"image_size": {"width": 1024, "height": 1024}, "num_inference_steps": 50}, 50),
    ],
)
def test_a_provider_reads_its_own_size_and_steps(
    provider: type[Provider], options: dict[str, Any], steps: int | None
) -> None:
    work = provider(Settings(), None).workload(options)  # type: ignore[arg-type]

    assert work == Workload(pixels=1024 * 1024, steps=steps)


def test_an_answer_changes_only_its_own_fields_of_a_task() -> None:
    """Each usable answer sets what it says, clears the failed polls, and keeps the rest of
    the task (its timing, what earlier answers said), whatever came before it."""
    error = ProviderError("the task failed", code="provider_error")
    poll_error = TransientProviderError("no answer")
    timing = Timing(submitted=1.0, polls=2, running_seen=1.5)
    book: Book[str] = Book.of(2).apply(1, Submitted("t1")).timed(1, timing)
    book = book.apply(1, Working("QUEUED", "position 3")).poll_failed(1, poll_error)
    assert book.tasks[1].failures == 1 and book.tasks[1].last_error is poll_error

    working = book.apply(1, Working("RUNNING", "half way")).tasks[1]
    assert (working.task_id, working.state, working.detail) == ("t1", "RUNNING", "half way")
    assert (working.failures, working.last_error, working.timing) == (0, None, timing)
    assert (working.images, working.error) == ((), None)

    made = book.apply(1, Made(("https://x/a.png",))).tasks[1]
    assert (made.task_id, made.state, made.detail) == ("t1", "SUCCEED", "position 3")
    assert (made.images, made.error, made.failures, made.last_error) == (
        ("https://x/a.png",),
        None,
        0,
        None,
    )
    assert made.timing == timing and made.ended

    broke = book.apply(1, Broke(error)).tasks[1]
    assert (broke.task_id, broke.state, broke.images, broke.error) == ("t1", "FAILED", (), error)
    assert (broke.detail, broke.failures, broke.last_error, broke.timing) == (
        "position 3",
        0,
        None,
        timing,
    )

    again = book.apply(1, Submitted("t2")).tasks[1]
    assert (again.task_id, again.state, again.detail, again.timing) == (
        "t2",
        "SUBMITTED",
        "position 3",
        timing,
    )
    assert book.tasks[0] == Book.of(1).tasks[0]  # the other task untouched
