"""A job's whole life as data and decisions: pure (no I/O, no sleeping, no event loop).

The runners (`imagegw.runners.inprocess` in the request, `imagegw.runners.stepfunctions.steps`
in a durable job, and later the batch items) do the I/O and keep the time; they ask this module
what every answer means and what to do next:

- the task book (`Book`, one `Task` per provider call of `Provider.split`): the core's outcomes
  (`imagegw.core.advance`) apply to it, and so do polls that got no usable answer;
- the poll-failure policy (`PollPolicy`): how long to wait after failed polls, and when to give
  up; the deadline (`Book.out_of_time`, one wording: `late`);
- the final-error rule (`final_error`), the progress summary (`Summary`), the next poll
  (`next_poll`, `job_waits`, over `imagegw.core.schedule`), and quota settlement
  (`settlement`: what is counted and what given back);
- whether a job's error left a task that may still finish (`may_still_finish`: a repeated
  request then asks about it again, `imagegw.frontends.replays`).

A paid task is never abandoned silently: a task given up on, or still running at the deadline,
fails with an error that names it, says it may still finish at the provider, and names the last
poll error; such an error forbids a retry (the client would pay twice).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Generic, TypeVar

from imagegw.core.advance import Broke, Made, Submitted, Working
from imagegw.core.schedule import Estimate, Timing, job_wait, next_delay
from imagegw.errors import DeadlineExceededError, GatewayError, ProviderError

#: how a runner holds a result image: a URL or data URI in the request, a ref in a job's state
Image = TypeVar("Image")

#: the longest wait between a durable job's polls after failed polls (unless its interval is
#: longer)
JOB_BACKOFF_MAX: Final = 60
#: the state of a job whose tasks all ended with images made (`Book.summary`)
SUCCEEDED: Final = "SUCCEED"
#: the code of a task given up on because its polls failed (`unpollable`)
UNPOLLABLE: Final = "provider_unavailable"


# ------------------------------------------------------------------------------ the task book


@dataclass(frozen=True)
class Task(Generic[Image]):
    """One provider call: its task while it runs, then its images or why it failed. While it
    runs, `failures` counts the polls in a row that got no usable answer and `last_error`
    holds the latest (the paid task may still finish)."""

    task_id: str | None = None
    state: str = "SUBMITTED"
    #: the provider's own progress words while it runs ("position 3 in the queue"), or none
    detail: str = ""
    images: tuple[Image, ...] = ()
    error: GatewayError | None = None
    failures: int = 0
    last_error: GatewayError | None = None
    #: what the polls saw of its run (`imagegw.core.schedule`), on the runner's clock
    timing: Timing | None = None

    @property
    def ended(self) -> bool:
        return bool(self.images) or self.error is not None

    @property
    def running(self) -> bool:
        """Started at the provider and not ended: a task to poll."""
        return self.task_id is not None and not self.ended


def _answered(
    task: Task[Image],
    state: str,
    task_id: str | None,
    detail: str,
    images: tuple[Image, ...],
    error: GatewayError | None,
) -> Task[Image]:
    """`task` after a usable answer (`Book.apply`): these fields as given, no failed poll
    counted, its timing kept (`replace(task, failures=0, last_error=None, ...)`, made directly
    at every answer that changes something)."""
    return Task(task_id, state, detail, images, error, 0, None, task.timing)


#: what an answer meant (`imagegw.core.advance.advance`), its images as the runner holds them
Outcome = Submitted | Working | Made[Image] | Broke


@dataclass(frozen=True)
class Summary:
    """Where a job stands, as people are shown it: the provider's state of the tasks still
    running (the most common one; SUCCEED or FAILED once all ended), how many calls ended, of
    how many, the provider's ids of the tasks started, and the provider's own progress words
    of the first running task that has some."""

    state: str
    done: int
    total: int
    task_ids: tuple[str, ...]
    detail: str = ""


@dataclass(frozen=True)
class Book(Generic[Image]):
    """Every task of one job, by the index of its call (`Provider.split`)."""

    tasks: tuple[Task[Image], ...]

    @classmethod
    def of(cls, total: int) -> Book[Image]:
        return cls(tuple(Task[Image]() for _ in range(total)))

    def _with(self, index: int, task: Task[Image]) -> Book[Image]:
        tasks = list(self.tasks)
        tasks[index] = task
        return Book(tuple(tasks))

    def apply(self, index: int, outcome: Outcome[Image]) -> Book[Image]:
        """The book after a `start` or `check` answer meant `outcome` for task `index`. Any
        such answer is usable: the count of failed polls starts again. An outcome the book
        `keeps` leaves it as it is (the same book)."""
        if self.keeps(index, outcome):
            return self
        task, state = self.tasks[index], outcome.state
        # made directly (`_answered`): `dataclasses.replace` walks every field, and it was
        # most of an answer's cost
        if isinstance(outcome, Submitted):
            task = _answered(task, state, outcome.task_id, task.detail, task.images, task.error)
        elif isinstance(outcome, Working):
            task = _answered(task, state, task.task_id, outcome.detail, task.images, task.error)
        elif isinstance(outcome, Made):
            task = _answered(task, state, task.task_id, task.detail, outcome.images, task.error)
        else:
            task = _answered(task, state, task.task_id, task.detail, (), outcome.error)
        return self._with(index, task)

    def keeps(self, index: int, outcome: Outcome[Image]) -> bool:
        """Whether `outcome` for task `index` changes nothing: the task still working, in the
        same state and words, with no failed poll counted (most polls' answer)."""
        task = self.tasks[index]
        return (
            isinstance(outcome, Working)
            and task.state == outcome.state
            and task.detail == outcome.detail
            and not task.failures
            and task.last_error is None
        )

    def poll_failed(self, index: int, error: GatewayError) -> Book[Image]:
        """A poll of task `index` got no usable answer (`error`): still running, counted."""
        task = self.tasks[index]
        return self._with(index, replace(task, failures=task.failures + 1, last_error=error))

    def timed(self, index: int, timing: Timing | None) -> Book[Image]:
        return self._with(index, replace(self.tasks[index], timing=timing))

    def give_up(self, index: int, title: str, policy: PollPolicy) -> Book[Image]:
        """Task `index` could not be polled for the policy's window: failed (`unpollable`)."""
        task = self.tasks[index]
        assert task.last_error is not None and task.task_id is not None
        error = unpollable(title, task.task_id, policy, task.last_error)
        return self._with(index, replace(task, state="FAILED", error=error))

    def out_of_time(self, title: str, limit: float) -> Book[Image]:
        """At the deadline: every task still running fails (`late`, naming its last poll
        error); the tasks that ended keep what they made."""
        return Book(
            tuple(
                task if task.ended else replace(task, error=late(title, (task,), limit))
                for task in self.tasks
            )
        )

    @property
    def total(self) -> int:
        return len(self.tasks)

    @property
    def done(self) -> int:
        return sum(task.ended for task in self.tasks)

    @property
    def ended(self) -> bool:
        return all(task.ended for task in self.tasks)

    @property
    def started(self) -> bool:
        """Whether any call started a task or made images (else the job is refused whole)."""
        return any(task.task_id is not None or task.images for task in self.tasks)

    def running(self) -> list[int]:
        """The indexes of the tasks to poll."""
        return [i for i, task in enumerate(self.tasks) if task.running]

    def task_ids(self) -> tuple[str, ...]:
        return tuple(task.task_id for task in self.tasks if task.task_id is not None)

    def images(self) -> tuple[Image, ...]:
        """Every image made, in the order of the calls."""
        return tuple(image for task in self.tasks for image in task.images)

    def errors(self) -> tuple[GatewayError, ...]:
        """Why the calls that made no image failed, in the order of the calls."""
        return tuple(task.error for task in self.tasks if task.error is not None)

    def failing(self) -> list[Task[Image]]:
        """The tasks still running whose last poll got no usable answer."""
        return [task for task in self.tasks if not task.ended and task.last_error is not None]

    def status(self) -> str:
        """running, succeeded (some image made, once all ended) or failed (none)."""
        if not self.ended:
            return "running"
        return "succeeded" if self.images() else "failed"

    def final_error(self) -> GatewayError:
        """The error of a job that made no image (`final_error`)."""
        return final_error(self.errors())

    def summary(self) -> Summary:
        running = [task.state for task in self.tasks if not task.ended]
        if len(running) == 1:  # one task running (most jobs): its state
            state = running[0]
        elif running:
            state = Counter(running).most_common(1)[0][0]
        else:
            state = SUCCEEDED if self.images() else "FAILED"
        detail = next((task.detail for task in self.tasks if task.detail and not task.ended), "")
        return Summary(state, self.done, self.total, self.task_ids(), detail)


def final_error(errors: Sequence[GatewayError]) -> GatewayError:
    """The one error of a job that made no image: the first that forbids a retry when any does
    (one of the calls may have started paid work: a retry would pay again), else the first.
    So `[rate limited, provider error]` fails as the provider error, not as a retryable 429."""
    return next((exc for exc in errors if exc.retryable is not True), errors[0])


# ------------------------------------------------------------- poll failures and the deadline


@dataclass(frozen=True)
class PollPolicy:
    """What a runner does when polls get no usable answer (a 5xx, an unreadable answer, no
    connection): it polls again after a wait that doubles from `base` per failure up to `cap`
    (a struggling provider is not hammered; one that recovers is heard of within `cap`), and
    gives up on the task when `window` seconds pass without a usable answer, if that comes
    before the deadline.

    One rule for every runner, tuned by who is waiting. A runner with a caller on the line (the
    request) has a window, POLL_FAILURE_WINDOW: the caller hears a 502 naming the last error
    within it, instead of silence until GENERATION_TIMEOUT. A durable job has nobody waiting
    (its status shows the failures), so its window is its deadline: the paid task gets every
    chance to deliver. Either way the error names the task and says it may still finish (never
    retryable: a retry would pay twice)."""

    base: float
    cap: float
    window: float | None = None

    @classmethod
    def interactive(cls, interval: float, interval_max: float, window: float) -> PollPolicy:
        """The request's: POLL_INTERVAL doubled up to POLL_INTERVAL_MAX, POLL_FAILURE_WINDOW."""
        return cls(interval, interval_max, window)

    @classmethod
    def durable(cls, interval: int) -> PollPolicy:
        """A durable job's: JOB_POLL_INTERVAL (at least 1 s) doubled up to `JOB_BACKOFF_MAX`
        (or the interval, when longer); polled until the job's deadline."""
        return cls(float(max(1, interval)), float(max(JOB_BACKOFF_MAX, interval)))

    def backoff(self, failures: int) -> float:
        """The wait after `failures` failed polls in a row (0: none failed)."""
        if failures <= 0:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures, 16))

    def gives_up(self, answered: float, now: float) -> bool:
        """Whether a task last answered usably at `answered` is given up on at `now`."""
        return self.window is not None and now - answered >= self.window

    def patience(self, answered: float, now: float) -> float | None:
        """Seconds until the task is given up on (None: not before the deadline)."""
        return None if self.window is None else max(0.0, answered + self.window - now)


def failure_notes(title: str, asked: int, made: int, failures: Sequence[str]) -> tuple[str, ...]:
    """What a job that made some images tells about the rest: why the calls that made none
    failed, and, when the provider made fewer images than asked without any call failing (a
    batch call some of whose images failed), that it did: never silently fewer images."""
    if made >= asked or failures:
        return tuple(failures)
    return (f"{title} made {made} of the {asked} images asked for; it gave no reason.",)


def unpollable(title: str, task_id: str, policy: PollPolicy, last: GatewayError) -> ProviderError:
    """The error of a task that could not be polled for the policy's window. Not retryable:
    the paid task may still finish at the provider."""
    reason = getattr(last, "reason", None) or last.message
    return ProviderError(
        f"{title} could not be polled for {policy.window or 0:g} s (task {task_id}): "
        f"last error: {reason}.",
        code=UNPOLLABLE,
    )


def may_still_finish(error: GatewayError) -> bool:
    """Whether a job that ended with `error` left a task that may still finish at the
    provider: the deadline (`late`), or polls that failed for the policy's window
    (`unpollable`). Asking about its tasks again may find their images."""
    return isinstance(error, DeadlineExceededError) or error.code == UNPOLLABLE


def late(title: str, tasks: Sequence[Task[Image]], limit: float) -> DeadlineExceededError:
    """The deadline's error, one wording for every runner: the tasks that did not finish
    within `limit` seconds (none: a call that did not answer), that they may still finish, and
    the last poll error when polls were failing."""
    ids = [task.task_id for task in tasks if task.task_id is not None]
    what = f"task {', '.join(ids)} did not finish" if ids else "did not answer"
    message = f"{title} {what} within {limit:g} s; it may still finish at the provider."
    failing = [task for task in tasks if task.last_error is not None]
    if failing:
        last = failing[-1]
        assert last.last_error is not None
        message += f" The last {last.failures} polls failed; the last: {last.last_error.message}"
    return DeadlineExceededError(message, code="deadline_exceeded")


# ----------------------------------------------------------------------------- the next poll


def next_poll(
    timing: Timing,
    estimate: Estimate | None,
    now: float,
    policy: PollPolicy,
    failures: int = 0,
    answered: float | None = None,
) -> float:
    """Seconds from `now` to a running task's next poll (the request's runner, per task): the
    schedule's (`imagegw.core.schedule.next_delay`), after failed polls at least the policy's
    backoff, but never past the moment the task is given up on (one last poll then)."""
    delay = next_delay(timing, estimate, now, policy.base, policy.cap)
    if not failures:
        return delay
    delay = min(policy.cap, max(delay, policy.backoff(failures)))
    left = policy.patience(answered if answered is not None else timing.submitted, now)
    return delay if left is None else min(delay, left)


@dataclass(frozen=True)
class JobWaits:
    """A durable job's waits before its next poll (whole seconds; 0: none of that kind)."""

    #: after failed polls (the Backoff state)
    backoff: int
    #: predicted from the model's run time (the Predicted state), when nothing failed
    predicted: int


def job_waits(
    book: Book[Image],
    policy: PollPolicy,
    interval: int,
    run: Estimate | None,
    queue: Estimate | None,
    now: float,
) -> JobWaits:
    """What a durable job waits before its next poll: the policy's backoff for the longest
    streak of failed polls, else the wait predicted for the tasks still running (the longest
    of theirs), else none (the usual pace: nothing known of the model, or JOB_POLL_INTERVAL 0)."""
    failing = book.failing()
    if failing:
        return JobWaits(math.ceil(policy.backoff(max(task.failures for task in failing))), 0)
    running = [task.timing for task in book.tasks if not task.ended and task.timing is not None]
    if interval <= 0 or not running:
        return JobWaits(0, 0)
    waits = [job_wait(timing, run, queue, now, interval) for timing in running]
    known = [wait for wait in waits if wait is not None]
    if len(known) < len(waits):
        return JobWaits(0, 0)
    return JobWaits(0, max(1, math.ceil(max(known))))


def intervals_used(waited: float, interval: int) -> int:
    """The poll intervals a poll after a wait of `waited` seconds uses of a durable job's
    deadline (`max_polls` intervals of JOB_POLL_INTERVAL, at least 1 s each)."""
    return max(1, math.ceil(waited / max(1, interval)))


# -------------------------------------------------------------------------- quota settlement


@dataclass(frozen=True)
class Settlement:
    """A quota reservation settled: `made` images counted (in the month), `give_back` of the
    `reserved` returned (to the day)."""

    reserved: int
    made: int

    @property
    def give_back(self) -> int:
        return self.reserved - self.made


def settlement(reserved: int, made: int) -> Settlement:
    """What settling a reservation of `reserved` images means when `made` were made: never
    more counted than reserved, never less than none (a failed job: all given back)."""
    return Settlement(reserved, max(0, min(made, reserved)))
