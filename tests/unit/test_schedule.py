"""Predictive polling (`imagegw.core.schedule`, `imagegw.core.estimates`) on a simulated clock,
and the interactive driver following and teaching it."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from imagegw.core.estimates import MemoryEstimates, fold
from imagegw.core.schedule import (
    EARLY,
    OVERRUN,
    Estimate,
    Key,
    Timing,
    bucket,
    job_wait,
    likely_end,
    next_delay,
    poll_delay,
    window,
)
from imagegw.frontends.streaming import progress_text
from imagegw.infra.config import Settings
from imagegw.providers.base import Finished as Done
from imagegw.providers.base import (
    GenerationRequest,
    ModelKind,
    Running,
    Started,
    TaskStatus,
    Workload,
    pixels_of,
)
from imagegw.runners.inprocess import Progress, Result, generate

pytestmark = pytest.mark.anyio

BASE, MAXIMUM = 0.75, 3.0
LEARNED = Estimate(seconds=10.0, spread=0.5, samples=20)


def polls_until(end: float, queue: float, estimate: Estimate | None) -> tuple[int, float]:
    """Poll a task queued `queue` s, ending at `end`, on a simulated clock: (polls, lag)."""
    timing, now = Timing(submitted=0.0), 0.0
    while True:
        now += next_delay(timing, estimate, now, BASE, MAXIMUM)
        if now >= end:
            return timing.polls + 1, now - end
        timing = timing.seen(now, "PENDING" if now < queue else "RUNNING")


def test_an_instant_task_is_answered_by_the_first_poll_within_200_ms() -> None:
    for estimate in (None, LEARNED):
        polls, lag = polls_until(0.0, 0.0, estimate)
        assert polls == 1 and lag <= 0.2
    assert EARLY <= 0.2


def test_without_history_the_schedule_is_todays_after_the_early_poll() -> None:
    timing = Timing(submitted=0.0).seen(EARLY, "RUNNING")
    for now in (1.0, 10.0, 30.0, 90.0):
        assert next_delay(timing, None, now, BASE, MAXIMUM) == poll_delay(now, BASE, MAXIMUM)


def test_a_learned_model_is_polled_sparsely_far_from_its_end_and_densely_near_it() -> None:
    timing = Timing(submitted=0.0).seen(0.15, "PENDING").seen(1.0, "RUNNING")
    span = window(timing, LEARNED)
    far = next_delay(timing, LEARNED, 1.0, BASE, MAXIMUM)
    near = next_delay(timing, LEARNED, span.centre, BASE, MAXIMUM)
    # two to three polls a second at the likely end (the density follows the end's hazard)
    assert far > 2.0 and near <= 0.4
    assert span.start < 0.5 + 10.0 < span.end


def test_a_learned_model_costs_fewer_polls_at_a_shorter_lag_than_todays_schedule() -> None:
    learned = [polls_until(2.0 + 10.0 * j, 2.0, LEARNED) for j in (0.97, 1.0, 1.03)]
    today = [polls_until(2.0 + 10.0 * j, 2.0, None) for j in (0.97, 1.0, 1.03)]
    assert sum(p for p, _ in learned) < sum(p for p, _ in today)
    assert max(lag for _, lag in learned) <= 0.3


def test_a_prediction_far_off_costs_polls_not_a_long_lag() -> None:
    # the model learned 10 s, but this task is done after 1 s: no wait is longer than the task
    # has run so far, or than POLL_INTERVAL_MAX
    _, lag = polls_until(1.5, 0.5, LEARNED)
    assert lag <= MAXIMUM
    # a catalogue prior (no history) never waits longer than POLL_INTERVAL_MAX
    prior = Estimate(seconds=60.0, spread=18.0, samples=0)
    timing = Timing(submitted=0.0).seen(0.15, "RUNNING")
    assert next_delay(timing, prior, 20.0, BASE, MAXIMUM) <= MAXIMUM


def test_run_times_are_learned_by_size_and_steps() -> None:
    default, large, slow = Workload(), Workload(pixels_of("2048x2048")), Workload(steps=80)
    assert bucket(default) != bucket(large) != bucket(slow)
    assert bucket(Workload(pixels_of("1024x1024"))) == bucket(Workload(pixels_of("1000x1000")))


async def test_estimates_learn_from_samples_and_start_from_priors() -> None:
    store = MemoryEstimates({("modelscope", "Qwen/Qwen-Image"): 15.0})
    key = Key("modelscope", "Qwen/Qwen-Image")
    prior = await store.get(key)
    assert prior is not None and prior.samples == 0 and prior.seconds == 15.0
    for seconds in (8.0, 8.4, 7.6, 8.2):
        await store.record(key, seconds)
    learned = await store.get(key)
    assert learned is not None and learned.samples == 4
    assert 7.6 < learned.seconds < 8.4 and 0 < learned.spread < 1.0
    assert await store.get(Key("modelscope", "other")) is None
    assert fold(None, 5.0).seconds == 5.0


class Timed:
    """A provider whose task answers RUNNING a few times, then its image."""

    name, title, catalog = "timed", "Timed", ()

    def __init__(self, runs: int) -> None:
        self.runs, self.checks = runs, 0

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        return [request]

    def workload(self, options: object) -> Workload:
        return Workload()

    async def start(self, request: GenerationRequest) -> Started:
        return Started("t-1")

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        self.checks += 1
        return Running("RUNNING") if self.checks <= self.runs else Done(("https://i/1.png",))


async def test_the_interactive_driver_shows_the_estimate_and_learns_the_run() -> None:
    # Given a model whose tasks are known to take about 0.05 s
    settings = Settings(poll_interval=0.01, poll_interval_max=0.02, progress_interval=1.0)
    store = MemoryEstimates()
    key = Key("timed", "m", bucket(Workload()))
    for seconds in (0.05, 0.05, 0.05):
        await store.record(key, seconds)
    request = GenerationRequest("timed", "m", ModelKind.GENERATE, "a cat", SecretStr("k"))

    # When a task runs
    provider = Timed(runs=3)
    events = [e async for e in generate(provider, request, settings, estimates=store)]  # type: ignore[arg-type]

    # Then its progress says how long it should take, and the store learned one more run
    progress = [e for e in events if isinstance(e, Progress)]
    assert isinstance(events[-1], Result)
    estimated = [p for p in progress if p.expected is not None]
    assert estimated and "of about" in progress_text(Progress("RUNNING", 12.0, expected=20.0))
    assert (
        progress_text(Progress("RUNNING", 12.0, expected=20.0))
        == "generating · 12 s of about 20 s\n"
    )
    # and a short run's, or one close to its end, in tenths, never "1 s of about 1 s"
    assert progress_text(Progress("RUNNING", 0.6, expected=1.4)) == (
        "generating · 0.6 s of about 1.4 s\n"
    )
    assert progress_text(Progress("RUNNING", 19.6, expected=20.4)) == (
        "generating · 19.6 s of about 20.4 s\n"
    )
    learned = await store.get(key)
    assert learned is not None and learned.samples == 4


def test_a_durable_job_waits_for_the_predicted_end_once_the_model_is_learned() -> None:
    submitted = Timing(submitted=0.0)
    queue = Estimate(seconds=2.5, spread=1.5, samples=10)
    run30 = Estimate(seconds=30.0, spread=3.0, samples=10)
    # nothing known of the model: the usual pace
    assert job_wait(submitted, None, queue, 0.0) is None
    # after the submission: the typical queue and run, and a spread
    assert job_wait(submitted, run30, queue, 0.0) == pytest.approx(35.5)
    # still running at that poll: until the latest likely end (begun by the queue's high end)
    running = submitted.seen(35.5, "RUNNING")
    assert job_wait(running, run30, queue, 35.5) == pytest.approx(5.5 + 36.0 - 35.5)


def test_an_instant_task_is_polled_as_soon_as_its_submission_answered() -> None:
    # the first poll is not a scheduled one: an instant task is answered without waiting
    for estimate in (None, LEARNED, Estimate(seconds=15.0, spread=4.5, samples=0)):
        assert next_delay(Timing(submitted=5.0), estimate, 5.0, BASE, MAXIMUM) == 0.0


def test_the_schedule_thins_out_the_longer_a_task_overruns_its_estimate() -> None:
    # a model whose tasks take 10 s, and a task that runs on to 40 s (an uneven queue)
    timing = Timing(submitted=0.0).seen(0.0, "RUNNING")
    span = window(timing, LEARNED)
    waits = []
    for now in (span.end + 1.0, span.end + 5.0, span.end + 15.0, span.end + 25.0):
        waits.append(next_delay(timing.seen(now - 0.3, "RUNNING"), LEARNED, now, BASE, MAXIMUM))
    assert waits == sorted(waits) and waits[-1] > MAXIMUM
    # each wait at most half the overrun: a task that ends is heard of within a third of it
    assert all(w <= 0.5 * (o + 0.6) for w, o in zip(waits, (1.0, 5.0, 15.0, 25.0), strict=True))
    # a 40-s task of this 10-s model costs a few polls, not one every POLL_INTERVAL
    polls, lag = polls_until(40.0, 0.0, LEARNED)
    today, _ = polls_until(40.0, 0.0, None)
    assert polls <= today / 2
    assert lag <= 0.5 * (40.0 - span.end)


def test_a_durable_job_of_a_model_with_no_history_waits_for_its_prior() -> None:
    # a catalogue prior (15 s, give or take 30%), or a model's first tasks: no usual-pace polls
    prior = Estimate(seconds=15.0, spread=4.5, samples=0)
    submitted = Timing(submitted=0.0)
    assert job_wait(submitted, prior, None, 0.0) == pytest.approx(24.0)
    # still running when the prior's likely end passed: waits grow with the task's age
    running = submitted.seen(24.0, "RUNNING")
    assert job_wait(running, prior, None, 24.0, pace=5) == pytest.approx(18.0)
    older = running.seen(42.0, "RUNNING")
    assert job_wait(older, prior, None, 42.0, pace=5) == pytest.approx(31.5)
    # a learned model past its latest likely end: half the overrun, or the usual pace if less
    run30 = Estimate(seconds=30.0, spread=3.0, samples=10)
    late = submitted.seen(36.0, "RUNNING")
    assert job_wait(late, run30, None, 38.0, pace=5) is None
    assert job_wait(late, run30, None, 60.0, pace=5) == pytest.approx(0.5 * (60.0 - 36.0))


def test_a_task_overrunning_its_models_prior_thins_out_within_poll_interval_max() -> None:
    # a catalogue prior of 15 s (no history), and tasks that run 28-38 s: fewer polls than
    # today's schedule, never a lag over POLL_INTERVAL_MAX; tasks within the prior as today
    prior = Estimate(seconds=15.0, spread=4.5, samples=0)
    for end in (28.0, 32.0, 38.0):
        polls, lag = polls_until(end, 0.1, prior)
        today, _ = polls_until(end, 0.1, None)
        assert polls < today and lag <= MAXIMUM
    for end in (3.0, 7.0, 11.0):
        assert polls_until(end, 0.1, prior)[0] <= polls_until(end, 0.1, None)[0]


def test_a_queued_task_is_polled_less_and_less_the_longer_it_waits_in_the_queue() -> None:
    # the provider says PENDING for 30 s (an uneven queue), then the run takes 3 s: the polls
    # while queued start at one spread of the run (the prior's 4.5 s: POLL_INTERVAL_MAX), or a
    # second for a learned model whose runs vary little, and thin out with the time queued up
    # to twice POLL_INTERVAL_MAX, with or without a history of the model; the run's end is
    # still heard of within POLL_INTERVAL_MAX
    prior = Estimate(seconds=15.0, spread=4.5, samples=0)
    short = Estimate(seconds=3.0, spread=0.3, samples=20)
    for estimate in (prior, short):
        timing, waits = Timing(submitted=0.0), []
        for now in (0.1, 4.0, 8.0, 16.0, 30.0):
            timing = timing.seen(now, "PENDING")
            waits.append(next_delay(timing, estimate, now, BASE, MAXIMUM))
        assert waits == sorted(waits) and waits[0] <= MAXIMUM and waits[-1] == 2 * MAXIMUM
        polls, lag = polls_until(33.0, 30.0, estimate)
        today, _ = polls_until(33.0, 30.0, None)
        assert polls <= 0.6 * today and lag <= MAXIMUM


def test_with_no_history_a_queued_task_waits_as_long_as_it_has_queued() -> None:
    # a prior's window is a guess, which a precisely seen begin sharpens little: once the
    # queue has lasted, each wait is the whole time queued so far (a learned model's, half of
    # it), up to twice POLL_INTERVAL_MAX; early in the queue both wait one spacing
    prior = Estimate(seconds=15.0, spread=4.5, samples=0)
    learned = Estimate(seconds=15.0, spread=1.5, samples=20)
    timing = Timing(submitted=0.0)
    waits: dict[float, tuple[float, float]] = {}
    for at in (0.0, 3.0, 5.0, 9.0):
        timing = timing.seen(at, "PENDING")
        waits[at] = tuple(next_delay(timing, e, at, BASE, MAXIMUM) for e in (prior, learned))
    assert waits[3.0] == (MAXIMUM, MAXIMUM)
    assert waits[5.0] == pytest.approx((5.0, MAXIMUM))
    assert waits[9.0] == pytest.approx((2 * MAXIMUM, 4.5))
    # so a 25-s queue costs six polls, not seven
    timing, now = Timing(submitted=0.0), 0.0
    while now < 25.0:
        now += next_delay(timing, prior, now, BASE, MAXIMUM)
        timing = timing.seen(now, "PENDING" if now < 25.0 else "RUNNING")
    assert timing.polls - 1 == 6  # the last poll saw it running


def test_on_the_prior_the_uneven_queues_long_tasks_cost_at_most_0_35_polls_a_second() -> None:
    # bench versus' mix on the catalogue's prior (15 s; its runs are 2-11 s): tasks queued
    # 16-28 s take at most 0.35 polls a second of generation (0.40 when queued waits grew by
    # half the time queued) for a mean lag of 0.81 s, not 0.71 (a poll saved for 0.08 s of
    # lag, under a poll's PRICE at their age); tasks queued under a second as before; every
    # end heard of within POLL_INTERVAL_MAX
    prior = Estimate(seconds=15.0, spread=4.5, samples=0)
    runs = (2.5, 5.0, 8.0, 11.0)
    long = {(q, r): polls_until(q + r, q, prior) for q in (16, 19, 22, 25, 28) for r in runs}
    short = {(q, r): polls_until(q + r, q, prior) for q in (0.2, 0.5, 0.9) for r in runs}
    for group, most in ((long, 0.35), (short, 1.15)):
        seconds = sum(q + r for q, r in group)
        assert sum(polls for polls, _ in group.values()) / seconds <= most
        assert max(lag for _, lag in group.values()) <= MAXIMUM
    assert sum(lag for _, lag in long.values()) / len(long) <= 0.85


UNEVEN = Estimate(seconds=6.5, spread=2.6, samples=20)  # runs of 2-11 s, learned


def test_a_learned_model_with_a_wide_run_spread_waits_longer_in_the_queue() -> None:
    # the run's begin seen up to two spreads late widens the predicted end less than the run's
    # own spread: early in the queue, a model whose runs vary by 2.6 s waits 5.2 s, one whose
    # runs vary by 0.3 s a second; a queue that lasts thins both out to twice POLL_INTERVAL_MAX
    narrow = Estimate(seconds=6.5, spread=0.3, samples=20)
    queued = Timing(submitted=0.0).seen(0.0, "PENDING").seen(2.0, "PENDING")
    assert next_delay(queued, UNEVEN, 2.0, BASE, MAXIMUM) == pytest.approx(5.2)
    assert next_delay(queued, narrow, 2.0, BASE, MAXIMUM) == pytest.approx(1.0)
    long_queue = queued.seen(40.0, "PENDING")
    wide = Estimate(seconds=60.0, spread=20.0, samples=20)
    for estimate in (narrow, UNEVEN, wide):
        assert next_delay(long_queue, estimate, 40.0, BASE, MAXIMUM) == 2 * MAXIMUM


def test_a_long_queue_of_a_model_whose_runs_vary_little_costs_a_few_polls() -> None:
    # a learned 3-s model whose runs vary by 0.3 s, one of its tasks queued 25 s (an uneven
    # queue): at most 9 polls while it is queued (13 when the queue's waits stopped at
    # POLL_INTERVAL_MAX for such a model), 12 in all (15), its end heard of within
    # POLL_INTERVAL_MAX
    narrow = Estimate(seconds=3.0, spread=0.3, samples=20)
    timing, now = Timing(submitted=0.0), 0.0
    while now < 25.0:
        now += next_delay(timing, narrow, now, BASE, MAXIMUM)
        timing = timing.seen(now, "PENDING" if now < 25.0 else "RUNNING")
    assert timing.polls - 1 <= 9  # the last poll saw it running
    polls, lag = polls_until(28.0, 25.0, narrow)
    assert polls <= 12 and lag <= MAXIMUM


def test_once_running_the_end_is_predicted_from_the_run_time_not_queue_and_run() -> None:
    # a task of a learned 6.5-s model queued 20 s: the dense polls come about 6.5 s after the
    # poll that saw it running, not 6.5 s after the submission
    timing = Timing(submitted=0.0)
    for at in (0.0, 5.2, 10.4, 15.6, 20.8):
        timing = timing.seen(at, "PENDING" if at < 20.0 else "RUNNING")
    span = window(timing, UNEVEN)
    assert 15.6 + 6.5 <= span.centre <= 20.8 + 6.5  # the run began between those polls
    assert next_delay(timing, UNEVEN, 20.8, BASE, MAXIMUM) >= 1.0  # sparse on the way


def test_the_uneven_queues_long_tasks_cost_fewer_polls_a_second_than_its_short_ones() -> None:
    # the mix of bench versus: short tasks queued 0.5 s, long ones 15-30 s, all running 2-11 s;
    # the long ones' polls a second stay within the 0.35 and the short ones' within 1.0
    short = [polls_until(0.5 + run, 0.5, UNEVEN) for run in (2.5, 4.0, 6.5, 9.0, 11.0)]
    long = [polls_until(queue + run, queue, UNEVEN) for queue, run in ((15, 11), (22, 6), (30, 9))]
    assert sum(p for p, _ in short) / sum((2.5, 4.0, 6.5, 9.0, 11.0, 0.5 * 5)) <= 1.0
    assert sum(p for p, _ in long) / sum((26, 28, 39)) <= 0.35
    # and a long task's end is still heard of within POLL_INTERVAL_MAX
    assert max(lag for _, lag in long) <= MAXIMUM


def test_a_learned_models_polls_are_densest_where_its_end_is_most_likely() -> None:
    # a model whose runs vary widely (2-11 s): the chance a task ends in the next moment, given
    # it has not, rises across the likely window, so the waits shrink through it (not one
    # spacing for the whole window); past it (an overrun: one of the late tasks) they grow again
    timing = Timing(submitted=0.0).seen(0.0, "RUNNING")
    span = window(timing, UNEVEN)

    def wait(at: float) -> float:
        return next_delay(timing.seen(at, "RUNNING"), UNEVEN, at, BASE, MAXIMUM)

    sigma = span.spread
    early, centre, late = (wait(span.centre + k * sigma) for k in (-0.5, 0.0, 0.5))
    assert early > centre > late
    overrun = [wait(span.centre + k * sigma) for k in (1.0, 3.0, 6.0, 10.0)]
    assert overrun == sorted(overrun) and overrun[-1] > 2 * overrun[0]


def test_a_learned_models_wait_does_not_jump_over_its_likely_end() -> None:
    # from far before the likely end, each wait lands within the window at the latest: the
    # polls walk into it, they do not step over it
    for estimate in (LEARNED, UNEVEN, Estimate(seconds=60.0, spread=6.0, samples=20)):
        timing = Timing(submitted=0.0).seen(0.0, "RUNNING")
        span, now = window(timing, estimate), 0.0
        while now < span.start:
            now += next_delay(timing, estimate, now, BASE, MAXIMUM)
            assert now <= span.end
            timing = timing.seen(now, "RUNNING")


def test_a_task_that_queued_long_is_polled_more_sparsely_in_its_run() -> None:
    # the same run of the same model, seen beginning between the same two polls: after a 25-s
    # queue its lag weighs less against its age than after a 0.5-s one, so it waits longer
    def waits(submitted: float) -> list[float]:
        timing = Timing(submitted=submitted).seen(0.0, "PENDING").seen(1.0, "RUNNING")
        span = window(timing, UNEVEN)
        return [
            next_delay(timing.seen(at, "RUNNING"), UNEVEN, at, BASE, MAXIMUM)
            for at in (span.centre - span.spread, span.centre, span.centre + span.spread)
        ]

    assert all(old > new for old, new in zip(waits(-25.0), waits(-0.5), strict=True))


def test_a_laws_shape_is_trusted_only_from_a_long_history() -> None:
    # a model's first samples are often a burst's quickest tasks: learned from 5 tasks, its
    # window is polled evenly; learned from 50, the polls gather where the end is most likely
    few, many = (Estimate(seconds=10.0, spread=2.0, samples=n) for n in (5, 50))
    timing = Timing(submitted=0.0).seen(0.0, "RUNNING")
    span = window(timing, many)

    def waits(estimate: Estimate) -> list[float]:
        ats = (span.centre - 0.5 * span.spread, span.centre + 0.5 * span.spread)
        return [next_delay(timing.seen(at, "RUNNING"), estimate, at, BASE, MAXIMUM) for at in ats]

    assert waits(few)[0] == pytest.approx(waits(few)[1])
    assert waits(many)[0] > waits(many)[1]
    # either way, a task that overruns by half is heard of within a third of its overrun
    for estimate in (few, many):
        _, lag = polls_until(15.5, 0.5, estimate)
        assert lag <= 5.0 / 3


def test_a_window_less_than_a_spacing_away_is_polled_inside_not_at_its_edge_and_again() -> None:
    # one sample of 1.5 s (a warm-up's), and a task seen queued at 0 then running at 0.75: the
    # run began about 0.375 s in, and its window is 1.64-2.11 s
    once = Estimate(seconds=1.5, spread=0.225, samples=1)
    running = Timing(submitted=0.0).seen(0.0, "PENDING").seen(0.75, "RUNNING")
    span = window(running, once)
    assert next_delay(running, once, 0.75, BASE, MAXIMUM) == BASE  # no longer than it ran
    # at 1.5 s the window begins 0.14 s ahead: the next poll is at its end (one spacing at
    # most), not at its edge and again one spacing later
    at = 1.5
    assert 0 < span.start - at < BASE
    wait = next_delay(running.seen(at, "RUNNING"), once, at, BASE, MAXIMUM)
    assert wait == pytest.approx(span.end - at) and wait < BASE
    # a poll at the window's end is past it: the overrun's waits follow
    ended = running.seen(span.end, "RUNNING")
    assert next_delay(ended, once, span.end, BASE, MAXIMUM) == BASE
    later = span.end + 2.0
    assert next_delay(ended.seen(later, "RUNNING"), once, later, BASE, MAXIMUM) == pytest.approx(
        max(BASE, OVERRUN * 2.0)
    )
    # so tasks of 2.5-3.5 s cost 5.6 polls on average (6.4 before), at most six, the first at
    # once (an instant task's), and none is heard of later than one POLL_INTERVAL after its end
    ends = [2.5 + 0.05 * i for i in range(21)]
    outcomes = [polls_until(end, 0.1, once) for end in ends]
    assert max(polls for polls, _ in outcomes) <= 6
    assert sum(polls for polls, _ in outcomes) / len(ends) <= 5.7
    assert max(lag for _, lag in outcomes) <= BASE


def test_an_overrun_is_polled_no_denser_than_the_window_before_it() -> None:
    # a task of a model learned from 5 tasks (4 s ± 1 s) that queued 20 s has spent its poll
    # budget in the queue, so its likely window is polled sparsely; once past the window (it
    # overruns) the waits do not fall back to the densest spacing, they stay as sparse
    few = Estimate(seconds=4.0, spread=1.0, samples=5)
    timing = Timing(submitted=0.0)
    for at in (0.0, 3.0, 6.0, 9.0, 13.5, 20.0):
        timing = timing.seen(at, "PENDING")
    timing = timing.seen(26.0, "RUNNING")
    span = window(timing, few)
    inside = next_delay(timing.seen(span.centre, "RUNNING"), few, span.centre, BASE, MAXIMUM)
    assert inside > 1.0
    for at in (span.end + 0.01, span.end + 0.5, span.end + 1.0):
        assert next_delay(timing.seen(at, "RUNNING"), few, at, BASE, MAXIMUM) >= inside


def seen_and_ended(end: float, queue: float, estimate: Estimate) -> tuple[int, float]:
    """Poll a task queued `queue` s, ending at `end`, by `estimate`: (polls, run time learned)."""
    timing, now = Timing(submitted=0.0), 0.0
    while True:
        now += next_delay(timing, estimate, now, BASE, MAXIMUM)
        if now >= end:
            return timing.polls + 1, timing.run_time(now, estimate)
        timing = timing.seen(now, "PENDING" if now < queue else "RUNNING")


def bursts(runs: list[float], first: Estimate) -> tuple[list[float], Estimate]:
    """Bursts of 100 tasks queued 0.1 s, all polled by what the bursts before taught (as a
    burst of streams reads the model once, before any of its tasks ends): the mean polls a task
    of each burst, and the estimate learned at the end."""
    estimate, mean_polls = first, []
    for run in runs:
        seen = [seen_and_ended(0.1 + run, 0.1, estimate) for _ in range(100)]
        mean_polls.append(sum(polls for polls, _ in seen) / len(seen))
        for _, learned in seen:
            estimate = fold(estimate, learned)
    return mean_polls, estimate


def test_an_end_seen_one_long_wait_late_is_learned_where_the_models_law_puts_it() -> None:
    # a 3-s task of a model learned at 3.2 s, seen queued at 0, running at 1.0 s and done at
    # 3.3 s: its end is learned near 3 s (its begin about 0.5 s), not at the span's middle 2.15 s
    learned = Estimate(seconds=2.7, spread=0.1, samples=64)
    timing = Timing(submitted=0.0).seen(0.0, "PENDING").seen(1.0, "RUNNING")
    assert timing.run_time(3.3) == pytest.approx(1.65)
    assert 2.3 <= timing.run_time(3.3, learned) <= 2.8
    # a short history or a prior is no law to trust: the middle
    for guess in (Estimate(2.7, 0.1, 5), Estimate(2.7, 0.8, 0)):
        assert timing.run_time(3.3, guess) == pytest.approx(1.65)
    # a narrow span keeps its place whatever the law
    close = timing.seen(3.0, "RUNNING")
    assert close.run_time(3.3, learned) == pytest.approx(close.run_time(3.3), abs=0.15)


def test_an_end_far_from_the_models_law_is_learned_at_its_spans_middle() -> None:
    # a task that ran twice as long as its model's law says (overran it by far): the middle of
    # its span, so a real change of run time is learned at once, not pulled back to the law
    law = window(Timing(submitted=0.0).seen(0.5, "RUNNING"), Estimate(3.0, 0.2, 64))
    assert likely_end(law, 6.0, 7.0, 3.5) == pytest.approx(6.5, abs=0.01)
    # within the window, the law weighs most: the end nearer its centre than the middle is
    assert likely_end(law, 2.0, 3.6, 3.5) > 3.2
    # a span the law gives no chance (far before the window): its middle
    assert likely_end(law, 0.1, 0.3, 3.5) == pytest.approx(0.2)


def test_bursts_of_identical_tasks_settle_near_their_run_time() -> None:
    # bursts of 3-s tasks after a 0.5-s warm-up (bench versus' CPU part): the polls a task
    # settle, not swinging from burst to burst as when each end was learned at its span's
    # middle (4, 5 and 6 polls in turn), and the run is learned near 3 s (the begin is taken
    # as the middle of 0-1 s, 0.4 s late: about 2.6 s)
    mean_polls, learned = bursts([3.0] * 8, fold(None, 0.5))
    settled = mean_polls[2:]
    assert max(settled) - min(settled) <= 1.0
    assert sum(settled) / len(settled) <= 4.4
    assert learned.seconds == pytest.approx(2.6, abs=0.2)


@pytest.mark.parametrize("after", [2.0, 6.0])
def test_a_change_of_run_time_is_learned_within_a_few_bursts(after: float) -> None:
    # 3-s tasks learned, then the model's runs take 2 s or 6 s: the ends of the overrunning
    # tasks are far past the law (their spans' middles: learned at once); the early ones are
    # pulled towards the law, the estimate moving down by a few tenths a burst; by the third
    # burst the change is learned and the polls a task are back to a few
    _, before = bursts([3.0] * 4, fold(None, 0.5))
    mean_polls, learned = bursts([after] * 3, before)
    assert learned.seconds == pytest.approx(after - 0.4, abs=0.3)
    assert mean_polls[-1] <= 5
