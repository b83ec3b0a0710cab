"""When to poll a task next, predicted from how long the model's tasks take.

A task's life as the poller sees it: submitted, queued (the provider says PENDING), running
(the provider's own state change, e.g. RUNNING), done. The run time of finished tasks is learned
by (provider, model, size/steps bucket) in an `Estimates` store (`Timing.run_time`: from the
middle of the span in which the run began to the middle of the span in which it ended, or, for
a model learned from `SHAPED` tasks, to where the law it was polled by puts the end within that
span, `likely_end`), and a task is polled:

- once as soon as the submission answered (`EARLY`), so an instant task is answered at once,
  not at a first scheduled poll;
- while the provider says it is queued (its run has not begun: ModelScope's PENDING), on a
  pace of its own that thins out with the time queued (`QUEUE_STRETCH` of it, all of it for a
  prior or a short history, `GUESS_STRETCH`: its window is a guess, which a begin seen
  precisely sharpens little; from one spread of the run, two for a model with a history, up to
  `QUEUE_MAX` times POLL_INTERVAL_MAX whatever the run's spread): a long queue costs a few
  polls, and the run's predicted end is counted from the poll that saw it running (the learned
  *run* time, not queue and run), not from the submission. (Until the sixth round the waits
  grew by 0.35 of the time queued and stopped at twice the run's spread, so a learned model
  whose runs vary little was polled every POLL_INTERVAL_MAX through a 25-s queue, 13 polls;
  now 9. On bench polling's simulated uneven mix, eight seeds, the long tasks went from 0.37
  to 0.36 polls a second on the prior, 0.32 to 0.29 learned, 0.42 to 0.35 as bench versus runs
  it, with their median lag 0.77 to 0.62 s, 0.78 to 0.77 s, 0.74 to 0.63 s; the short tasks'
  figures did not move. Until the seventh round a prior's waits grew by half the time queued
  too, so a 25-s queue took 7 polls, now 6: on bench polling's simulated uneven mix as bench
  versus runs it (its tasks made 0.5 s before the gateway has the submission's answer, as in
  real runs), 24 seeds, the long tasks went from 0.354 to 0.340 polls a second at a median lag
  of 0.74 to 0.69 s; in two real runs of bench versus' mix each way (2026-12-07, 07:56-08:03)
  from 0.36 to 0.32 polls a second, but at a median lag of 0.48 to 0.93-0.95 s (the
  reference's: 1.09 s), about 0.35 s of lag a poll saved, above a poll's `PRICE` at their age:
  kept for issue 25's target of 0.35 polls a second on them. The short tasks' figures did not
  move. Also tried then: capping a run's waits at the time it has likely run, from the middle
  of the span in which it began (not from the poll that saw it running): 0.30 polls a second
  at a median lag of 1.33 s in real runs, worse than the reference's);
- while running, a model learned from `SHAPED` tasks or more: where its end is likely
  (`_hazard_delay`). The predicted end is a normal law (the learned run time and spread, widened
  by the uncertainty of when the run began) beside a share of tasks that overrun it (`LATE`);
  the polls' density follows the square root of the chance that the task ends in the next
  moment given it has not yet (its hazard), which balances the lag a poll saves against its
  price (`PRICE` of the task's expected age, so a task that queued long or runs long is
  polled more sparsely): sparse far before the likely end, densest late in it, and thinning
  out once the task overruns it; no wait steps over the end of the likely window;
- a model on its prior or a shorter history, while running: sparsely far from its predicted end
  (each wait half the time left to the window), then densely in a window around the
  predicted end, as wide as the spread and the uncertainty of when the run began, the density
  bounded by a poll budget (`budget`: 1.5 polls a second of the expected time for short tasks,
  0.28 for long ones); a window less than one spacing away is polled inside (at its end at
  the latest), not at its edge and again one spacing later (bench versus' CPU part, a 3-s
  task of a model whose one sample is a 0.5-s warm-up: five polls, not six);
- past the predicted end, thinning out the longer the task overruns it: each wait a share
  (`OVERRUN`) of the overrun (at least, on a prior or a short history, and never denser than
  the window's spacing, which its budget may have widened; at most, for a learned model, whose
  hazard falls there), so a long task of a model whose recent tasks were short costs a few
  polls, not one every POLL_INTERVAL. (Until the sixth round a short history's overrun began
  at the densest spacing, 0.3 s, after a window its budget had polled every 2-3 s: on bench
  polling's simulated uneven mix as bench versus runs it, 24 seeds, its short tasks went from
  1.14 to 1.11 polls a second at 0.39 to 0.40 s of median lag, its long ones from 0.363 to
  0.358 at 0.65 to 0.64 s);
- on today's schedule (`poll_delay`) when nothing is known of the model; with a catalogue prior
  or a short history (`LEARNED`), never denser than POLL_INTERVAL, nor sparser than today's
  schedule while the task runs, until the prior's window has passed. (Tried and left out, on
  bench polling's simulated uneven mix: waits of a tenth of the task's age there saved its
  long tasks one poll in twenty for 0.3-0.6 s more lag, a prior's "far from the end" being
  where tasks the guess does not fit end; past a short history's window, waits of half the
  time run saved one poll in six for twice the lag, a burst's first samples being its
  quickest tasks. Both cost far more than a poll's `PRICE`.)

What bench versus' uneven mix asks of its short tasks (median lag ≤0.25 s at ≤1.0 polls a
second of generation, queue included) is at the edge of what any schedule can do there, and only
by a schedule worse for most users (`bench.polling.frontier`, printed by bench versus): with
their law known exactly (queued 0.1-1 s, then running 2-11 s), the cheapest schedule meeting
the median polls nothing from the early poll to about 7.1 s, when half the tasks have ended,
and then every 0.25 s: 0.97 polls a second, but a mean lag of 1.26 s (p90 3.7 s), where even
polling every POLL_INTERVAL (0.75 s) gives 0.37 s (p90 0.67 s) at 1.28; a median is met by
the half of the tasks that end late, at the cost of the half that end early. This schedule
serves the mean, not the median: its first 30 streams read the catalogue's prior (a guess of
15 s), which knows nothing of that law, so they are polled every POLL_INTERVAL while they run.

What a learned model learns from an end seen late: until the tenth round a run's end was
learned at the middle of the span in which it was seen. A learned model's schedule polls once
well before the likely end, so a task that ends before its window (the estimate a little long)
was seen running at 1.0 s and done at 3.3 s, learned as about 1.6 s, and the next burst was
polled early and densely: 3 to 6 polls a task from burst to burst on identical 3-s tasks. Now
a model learned from `SHAPED` tasks learns where its law puts the end within the span
(`likely_end`); a prior or a short history, whose law is a guess, still the middle. In a
simulation of bursts of 100 tasks queued 0.1 s (each burst polled by what the ones before
taught; from the third burst on), identical 3-s tasks went from 4.67 polls a task (4 to 6) to
4.17 (4 or 5), 3 ± 0.3-s ones from 4.76 to 4.65, 3 ± 0.1-s ones queued 0.1-0.6 s from 4.80
(4.3 to 5.3) to 4.52 (4.3 to 4.7), at the same median lag; a run that grew from 3 to 6 s is
learned in one burst, one that shrank to 2 s in three (its early ends are pulled towards the
law: the estimate moves a few tenths a burst). On bench polling's uneven mix once learned (16
seeds) the short tasks went from 0.92 to 0.95 polls a second at a median lag of 0.37 to 0.36 s
(p90 1.33 to 1.11 s), the long ones from 0.294 to 0.298 at 0.77 to 0.74 s. In real runs of
bursts of 100 3-s streams (2026-12-07, 13:28-13:35, load 3-5), bursts after the first: 4.27
polls a task (2.95 to 6) before, 3.89 (2.95 to 5) after, at a median lag of 0.21 s both.

Pure: the drivers (the interactive poller, the job's Poll step) keep a `Timing` per task and
ask `next_delay`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from imagegw.providers.base import Workload

#: the first poll, this long after the submission answered: at once (an instant task is
#: answered by it; a task that is not costs the same one poll it did at a later first poll)
EARLY: Final = 0.0
#: past the predicted end's window, each wait is this share of the time since the window closed
#: (the schedule thins out: the overrun grows by half at each poll)
OVERRUN: Final = 0.5
#: a durable job whose model has no history (a catalogue prior, or fewer than `LEARNED` tasks)
#: waits, once the prior's likely end passed, this share of the task's age before each poll
JOB_STRETCH: Final = 0.75
#: between polls while the provider says the task is queued, at least (a learned model)
QUEUED_EVERY: Final = 1.0
#: while queued, each wait is at least this share of the time queued so far (a learned model)
QUEUE_STRETCH: Final = 0.5
#: while queued, a prior's or a short history's waits are at least this share of the time
#: queued (its window is a guess, which a precisely seen begin sharpens little)
GUESS_STRETCH: Final = 1.0
#: while queued, a wait is at most this many POLL_INTERVAL_MAX
QUEUE_MAX: Final = 2.0
#: the densest polling, in the window around the predicted end
DENSE_MIN: Final = 0.3
#: a learned model's tasks that overrun the normal law of its run times (a queue's or a
#: provider's hiccup): past the likely end the hazard falls, and the polls thin out
LATE: Final = 0.1
#: samples from which a model's law is shaped by its hazard (`_hazard_delay`): by then the
#: weighted estimate (`estimates.WEIGHT` 0.2) has all but forgotten its first samples, often a
#: burst's quickest tasks (the first to end), which put the law too early and too narrow
SHAPED: Final = 20
#: what a poll is worth, in seconds of expected lag per second of the task's expected age
#: (0.005: 35 ms for a 7-s task, 0.15 s for a 30-s one)
PRICE: Final = 0.005
#: half-width of the dense window, in spreads (about 70% of the ends fall inside)
CORE: Final = 0.75
#: beyond this distance to the window, waits halve it (a check on the way: sparse)
FAR: Final = 4.0
#: poll budgets (polls a second of generation) for short and long tasks, and where long begins
SHORT_BUDGET: Final = 1.5
LONG_BUDGET: Final = 0.28
LONG_TASK: Final = 15.0
#: polls run at the base interval this long, then slow down towards the maximum (today's)
FAST_POLLING_SECONDS: Final = 15.0
#: samples after which a model's history is trusted beyond POLL_INTERVAL_MAX
LEARNED: Final = 3
#: provider states that mean "not begun" (anything else not final is running)
QUEUED_STATES: Final = frozenset({"SUBMITTED", "PENDING", "QUEUED", "QUEUING", "WAITING"})


def poll_delay(elapsed: float, base: float, maximum: float) -> float:
    """Today's schedule, for tasks of a model with no history: the base interval (default
    0.75 s) for the first 15 s, then more and more gently, up to `maximum`."""
    if elapsed <= FAST_POLLING_SECONDS:
        return base
    return min(maximum, base * (1.0 + (elapsed - FAST_POLLING_SECONDS) / FAST_POLLING_SECONDS))


def bucket(work: Workload) -> str:
    """The size/steps class of a job's workload (the provider reads it from its own options:
    `Provider.workload`), so a model's large or many-step tasks are learned apart from its
    small ones."""
    pixels, steps = work.pixels or 0, work.steps
    area = "default" if not pixels else f"{min(4, math.ceil(pixels / 1_048_576))}mp"
    pace = f"{min(4, math.ceil(steps / 25))}q" if steps is not None and steps > 0 else "std"
    return f"{area}/{pace}"


@dataclass(frozen=True)
class Key:
    """What run times are learned by."""

    provider: str
    model: str
    bucket: str = "default/std"


@dataclass(frozen=True)
class Estimate:
    """How long a task runs (seconds, from its run beginning to its end), how much that varies
    (about one standard deviation), and from how many tasks it was learned (0: a prior)."""

    seconds: float
    spread: float
    samples: int = 0


@dataclass(frozen=True)
class Timing:
    """What the poller saw of one task, on its clock."""

    submitted: float
    polls: int = 0
    #: the last poll that saw the task queued (its run began after this)
    queued_seen: float | None = None
    #: the first poll that saw it running (its run began before this)
    running_seen: float | None = None
    #: the last poll that saw it running (it ended after this)
    last_running: float | None = None

    def seen(self, at: float, state: str) -> Timing:
        """After a poll at `at` answered `state` (a state still in progress)."""
        # made directly: `dataclasses.replace` costs several times as much, at every poll
        polls, running_seen = self.polls + 1, self.running_seen
        if running_seen is None and state.upper() in QUEUED_STATES:
            return Timing(self.submitted, polls, at, None, self.last_running)
        first = running_seen if running_seen is not None else at
        return Timing(self.submitted, polls, self.queued_seen, first, at)

    def began(self) -> tuple[float, float]:
        """When the run began, at the earliest and the latest."""
        earliest = self.queued_seen if self.queued_seen is not None else self.submitted
        latest = self.running_seen if self.running_seen is not None else earliest
        return earliest, latest

    def run_time(self, ended_seen: float, estimate: Estimate | None = None) -> float:
        """The task's run time, its end seen at `ended_seen` (what `Estimates.record` learns):
        from the middle of the span in which it began to its likely end in the span in which it
        ended. That is the span's middle, unless `estimate` (the model's, which the task was
        polled by) is shaped (`SHAPED` samples): then where the model's law puts the end within
        the span (`likely_end`), so an end seen one long wait late is not learned as the middle
        of that wait."""
        earliest, latest = self.began()
        last = self.last_running if self.last_running is not None else latest
        end = (last + ended_seen) / 2
        if estimate is not None and estimate.samples >= SHAPED and ended_seen > last:
            span = window(self, estimate)
            end = likely_end(span, last, ended_seen, max(span.centre - self.submitted, span.spread))
        return max(0.0, end - (earliest + latest) / 2)


@dataclass(frozen=True)
class Window:
    """When the task should end: about `centre`, give or take `spread` (one deviation of the
    run time and of when the run began, together)."""

    centre: float
    spread: float

    @property
    def start(self) -> float:
        return self.centre - CORE * self.spread

    @property
    def end(self) -> float:
        return self.centre + CORE * self.spread


def window(timing: Timing, estimate: Estimate) -> Window:
    """The predicted end of a running task."""
    earliest, latest = timing.began()
    run = max(estimate.spread, 0.03 * estimate.seconds)
    spread = math.sqrt(run**2 + (latest - earliest) ** 2 / 12)
    return Window((earliest + latest) / 2 + estimate.seconds, spread)


def likely_end(span: Window, lo: float, hi: float, age: float) -> float:
    """The mean end of a task that ended between `lo` and `hi`, under the law it was polled by:
    the normal law of `span` (one deviation `span.spread` around `span.centre`) beside a share
    `LATE` of tasks that overrun it, taken as ending evenly past the centre, `LATE` / `age` of
    them a second (`age`: the task's expected age at the centre). A span's middle is no fair
    guess when the span is wide: a 3-s task seen running at 1.0 s and done at 3.3 s (its
    learned end 3.2 s, give or take 0.3) most likely ended near 3.0 s, not at 2.15 s. Within
    the law's likely window the normal law weighs most; far past it the overrun's even share
    does, and its middle is the answer (so a run that grew, 3 s to 6 s, is learned at once);
    a span the law gives no chance at all (far before the window) answers its middle."""
    centre, spread = span.centre, span.spread
    middle = (lo + hi) / 2
    if spread <= 0 or hi <= lo:
        return middle
    low, high = (lo - centre) / spread, (hi - centre) / spread
    # the normal law's share in the span, and its mean there (the truncated normal's)
    if high < 0:  # before the centre: the mirrored tails (no difference of two numbers near 2)
        mass = math.erfc(-high / math.sqrt(2)) - math.erfc(-low / math.sqrt(2))
    else:
        mass = math.erfc(low / math.sqrt(2)) - math.erfc(high / math.sqrt(2))
    inside = (1 - LATE) * 0.5 * mass
    mean = centre
    if inside > 0:
        density = math.exp(-low * low / 2) - math.exp(-high * high / 2)
        mean = centre + spread * density / math.sqrt(2 * math.pi) / (inside / (1 - LATE))
    # the overrun's share: evenly past the centre
    late_lo, late_hi = max(lo, centre), max(hi, centre)
    late = LATE * (late_hi - late_lo) / age
    if inside + late <= 1e-12:
        return middle
    return min(hi, max(lo, (inside * mean + late * (late_lo + late_hi) / 2) / (inside + late)))


def budget(expected: float) -> float:
    """Polls a task may use, expected to take `expected` seconds from its submission."""
    return (SHORT_BUDGET if expected < LONG_TASK else LONG_BUDGET) * expected


def _queued(timing: Timing, estimate: Estimate, now: float, base: float, maximum: float) -> float:
    """While queued: as often as the run's own spread makes worth knowing when it began, and
    sparser the longer the queue lasts (`QUEUE_STRETCH` of the time queued; all of it,
    `GUESS_STRETCH`, for a prior or a short history, whose window is a guess). A run's begin seen
    one wait late widens the predicted end by that wait over √12 in quadrature with the run's
    spread: a wait of one spread (a prior or a short history: a guess; between POLL_INTERVAL
    and POLL_INTERVAL_MAX) or two (a model with a history) widens it by 4% or 15%. Once the
    queue has lasted, the waits grow with it up to `QUEUE_MAX` times POLL_INTERVAL_MAX whatever
    the spread: a task that has waited long is old, and a second of its lag weighs less than a
    poll (`PRICE`), so an uneven queue's long waits cost a poll every few seconds."""
    spread, stretch = estimate.spread, QUEUE_STRETCH
    if estimate.samples < LEARNED:
        every, stretch = min(maximum, max(base, spread)), GUESS_STRETCH
    else:
        every = max(QUEUED_EVERY, 2 * spread)
    return min(QUEUE_MAX * maximum, max(every, stretch * (now - timing.submitted)))


def _dense(timing: Timing, span: Window, dense: float) -> float:
    """The spacing in the window: `dense`, or wider where the task's budget is short."""
    left = budget(span.centre - timing.submitted) - timing.polls
    return max(dense, 2 * CORE * span.spread / max(1.0, left))


def next_delay(
    timing: Timing, estimate: Estimate | None, now: float, base: float, maximum: float
) -> float:
    """Seconds from `now` to the next poll of the task (`base`, `maximum`: POLL_INTERVAL and
    POLL_INTERVAL_MAX, for today's schedule).

    A wait while running is never longer than the task has run so far, unless that is below
    POLL_INTERVAL_MAX (with no history: never above it); until a model has a history
    (`LEARNED` tasks: a catalogue prior is no history) never longer than today's schedule
    would wait (while queued: `_queued`). So a prediction that is far off costs a few polls,
    not a long lag. The dense spacing is never above POLL_INTERVAL, and until a model has a
    history never below it (a prior is a guess)."""
    if timing.polls == 0:
        return max(0.0, timing.submitted + min(EARLY, base) - now)
    today = poll_delay(now - timing.submitted, base, maximum)
    if estimate is None:
        return today
    predicted = _predicted_delay(timing, estimate, now, base, maximum)
    if estimate.samples >= LEARNED or timing.running_seen is None:
        return predicted
    # a prior alone is no history: never wait longer than today's schedule would, but past
    # the prior's window, where the waits thin out up to POLL_INTERVAL_MAX (`_predicted_delay`),
    # and while queued (the run has not begun: its own pace, `_queued`)
    if now > window(timing, estimate).end:
        return predicted
    return min(predicted, today)


def _predicted_delay(
    timing: Timing, estimate: Estimate, now: float, base: float, maximum: float
) -> float:
    """`next_delay` for a task polled at least once, whose model has an estimate."""
    if timing.running_seen is None:
        return _queued(timing, estimate, now, base, maximum)
    latest = timing.began()[1]
    if estimate.samples >= LEARNED:
        cap = max(maximum, now - latest)
    else:
        cap = min(maximum, max(base, now - latest))
    # a prior or a short history is a guess: no denser than POLL_INTERVAL around it
    dense = min(DENSE_MIN, base) if estimate.samples >= LEARNED else base
    span = window(timing, estimate)
    if estimate.samples >= SHAPED:
        return min(cap, _hazard_delay(timing, span, now, dense, cap, LATE))
    if now < span.start:  # far: halve the distance while it is long, then go to the window
        far = span.start - now
        # a window less than one spacing away is polled inside, not at its edge and again
        return min(cap, far / 2 if far > FAR else max(far, min(dense, span.end - now)))
    if now < span.end:
        return min(cap, _dense(timing, span, dense))
    # past the window: the longer the overrun, the sparser (an uneven queue's long tail), from
    # the window's own spacing on
    return min(cap, max(_dense(timing, span, dense), OVERRUN * (now - span.end)))


class _Law:
    """When a running task of a learned model ends: a normal law around the window's centre,
    beside a share `late` of tasks that end later. At a time t, the chance that the task runs
    on past t is S(t) = (1 - late) erfc((t - centre) / (spread √2)) / 2 + late, and the chance
    a second that it ends at t, given it has not ended before (its hazard), is
    h(t) = (1 - late) φ(t) / S(t), φ the normal density. Its constants are worked out once per
    decision; a walk (`expected_polls`, `reach`) asks it at tens of points, in one loop (no
    generator, no method call a point: a learned model's poll decision spent most of its time
    there)."""

    __slots__ = ("centre", "keep", "late", "norm", "scale", "spread", "step")

    def __init__(self, span: Window, late: float) -> None:
        self.centre, self.spread, self.late = span.centre, span.spread, late
        self.keep = 1 - late
        self.norm = math.sqrt(2 * math.pi) * span.spread
        self.scale = span.spread * math.sqrt(2)
        self.step = 0.2 * span.spread

    def expected_polls(self, start: float, stop: float, twice: float) -> float:
        """The polls expected from `start` to `stop` at the density √(hazard / `twice`), over
        the time the task likely runs on: the walk's points from `start` to `stop` (small
        steps near the likely end, longer far from it), each weighed by its step and the
        chance the task runs on past it."""
        centre, spread, scale, norm = self.centre, self.spread, self.scale, self.norm
        keep, late, least = self.keep, self.late, self.step
        erfc, exp, sqrt = math.erfc, math.exp, math.sqrt
        terms = []
        at = start
        while at < stop:
            step = max(least, 0.2 * abs(at - centre), 0.05)
            survives = keep * 0.5 * erfc((at - centre) / scale) + late
            z = (at - centre) / spread
            hazard = keep * (exp(-z * z / 2) / norm) / survives
            terms.append(step * survives * sqrt(hazard / twice))
            at += step
        return sum(terms)

    def reach(self, start: float, stop: float, twice: float) -> float | None:
        """Where, walking from `start` to `stop`, the density √(hazard / `twice`) sums to one
        poll (None: not before `stop`)."""
        centre, spread, scale, norm = self.centre, self.spread, self.scale, self.norm
        keep, late, least = self.keep, self.late, self.step
        erfc, exp, sqrt = math.erfc, math.exp, math.sqrt
        covered = 0.0
        at = start
        while at < stop:
            step = max(least, 0.2 * abs(at - centre), 0.05)
            survives = keep * 0.5 * erfc((at - centre) / scale) + late
            z = (at - centre) / spread
            density = sqrt(keep * (exp(-z * z / 2) / norm) / survives / twice)
            if covered + density * step >= 1.0:
                return at + (1.0 - covered) / density
            covered += density * step
            at += step
        return None


def _price(timing: Timing, span: Window, now: float, law: _Law) -> float:
    """A poll's price in seconds of lag: `PRICE` of the task's expected age, or more if the
    polls that price buys from now on would overspend the task's `budget`."""
    price = PRICE * max(span.centre - timing.submitted, span.spread)
    left = budget(span.centre - timing.submitted) - timing.polls
    # the expected polls at this price: the density over the time the task is likely to run
    expected = law.expected_polls(now, span.centre + 3 * span.spread, 2 * price)
    # the expected polls go as 1/sqrt(price): the price at which they fit what is left
    return price * max(1.0, expected / max(1.0, left)) ** 2


def _hazard_delay(
    timing: Timing, span: Window, now: float, dense: float, cap: float, late: float
) -> float:
    """The next poll of a running task of a learned model: one poll's worth of density ahead.

    A poll every d seconds around t costs the tasks still running 1/d polls a second and saves
    the ones ending there about d/2 of lag; with the hazard h(t) and a poll's price c (seconds
    of lag: `_price`), the cheapest density is √(h / 2c) polls a second. The wait walks ahead
    until that density sums to one poll, so a wait never jumps over the rise of the hazard.
    At least `dense`; never past the end of the window from before it; past the window at most
    `OVERRUN` of the time since the predicted end (or `dense`): an overrunning task is heard of
    within a share of its overrun. `late`: the share of tasks taken as ending past the law
    (`_Law`)."""
    law = _Law(span, late)
    twice = 2 * _price(timing, span, now, law)
    reached = law.reach(now, now + cap, twice)
    ahead = now + cap if reached is None else reached
    wait = max(dense, ahead - now)
    if now < span.end:  # the window's end is polled whatever the law says
        wait = min(wait, max(dense, span.end - now))
    else:  # overrunning: heard of within a share of the time since the predicted end
        wait = min(wait, max(dense, OVERRUN * (now - span.centre)))
    return wait


def expected_total(timing: Timing, estimate: Estimate | None) -> float | None:
    """About how long the task takes from its submission, once it runs (None: not known)."""
    if estimate is None or timing.running_seen is None:
        return None
    return window(timing, estimate).centre - timing.submitted


#: what queue times are learned as (per provider: how long its tasks wait before they run)
QUEUE_MODEL: Final = "(queue)"


def queue_time(timing: Timing) -> float | None:
    """How long the task was queued at most (to the first poll that saw it running), once
    seen running: what a durable job's wait allows for, so it errs towards one poll too late
    rather than one poll too many."""
    if timing.running_seen is None:
        return None
    return max(0.0, timing.running_seen - timing.submitted)


def job_wait(
    timing: Timing,
    run: Estimate | None,
    queue: Estimate | None,
    now: float,
    pace: float = 0.0,
) -> float | None:
    """Seconds a durable job waits before its next poll, each poll costing three state
    transitions (Wait, Poll, Check): until the task has most likely ended. None when nothing is
    known of the model (no estimate, not even a catalogue prior), or when the wait would be no
    longer than `pace` (JOB_POLL_INTERVAL: the usual pace then).

    After the submission: the typical queue and run, and one spread (a model with no history,
    `LEARNED` tasks: its prior or its few tasks, the queue's high end and two spreads). Seen
    queued: at least the run ahead. Seen running: until the latest likely end (the run begun no
    later than the typical queue's high end, two spreads). Past that, the waits thin out: a share
    of the overrun (`OVERRUN`), or of the task's age (`JOB_STRETCH`) while the model has no
    history."""
    if run is None:
        return None
    learned = run.samples >= LEARNED
    queued, queue_high = 0.0, 0.0
    if queue is not None:
        queued, queue_high = queue.seconds, queue.seconds + 2 * queue.spread
    if timing.polls == 0:
        if learned:
            target = timing.submitted + queued + run.seconds + run.spread
        else:
            target = timing.submitted + queue_high + run.seconds + 2 * run.spread
    elif timing.running_seen is None:
        target = now + run.seconds - run.spread
    else:
        latest = min(timing.running_seen, max(timing.began()[0], timing.submitted + queue_high))
        target = latest + run.seconds + 2 * run.spread
    if target > now:
        return target - now
    late = OVERRUN * (now - target) if learned else JOB_STRETCH * (now - timing.submitted)
    return late if late > pace else None
