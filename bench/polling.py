"""Predictive polling beside today's fixed schedule, on a simulated clock, over a realistic mix.

Method: each task is submitted at t=0, stays PENDING for a queue time drawn from U(0, 5) s,
then RUNNING for its model's run time with ±20% jitter (uniform), then SUCCEED. A poll at t sees
the state at t (polls are instantaneous on this clock; the real-time check below adds the HTTP
round trips). The schedules are the gateway's own functions (`imagegw.core.schedule`): today's
(`poll_delay` from the first poll at POLL_INTERVAL) and the predictive one (`next_delay`), which
first learns each model from 30 tasks it polls itself (`MemoryEstimates`), then is measured.
Lag = the poll that saw SUCCEED - the task's end. Polls a second = a group's polls / its
seconds of generation (submission to end, queue included).
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from imagegw.config import Settings
from imagegw.core.estimates import MemoryEstimates
from imagegw.core.schedule import Estimate, Key, Timing, next_delay, poll_delay

SEED: Final = 20261130
QUEUE: Final = (0.0, 5.0)
JITTER: Final = 0.2
#: model -> typical run time (s): with ±20% the short ones span 2-12 s, the long 20-60 s
SHORT: Final = {"turbo": 2.5, "fast": 4.0, "image": 6.5, "flux": 8.5, "edit": 10.0}
LONG: Final = {"image-2k": 25.0, "hd": 35.0, "hd-edit": 50.0}
WARM_UP: Final = 30
MEASURED: Final = 300


@dataclass(frozen=True)
class Task:
    model: str
    queue: float
    run: float

    @property
    def end(self) -> float:
        return self.queue + self.run

    def state(self, at: float) -> str | None:
        """PENDING, RUNNING, or None once done."""
        if at >= self.end:
            return None
        return "PENDING" if at < self.queue else "RUNNING"


@dataclass(frozen=True)
class Outcome:
    lag: float
    polls: int
    seconds: float


Delay = Callable[[Timing, float], float]


def draw(models: dict[str, float], count: int, rng: random.Random) -> list[Task]:
    return [
        Task(model, rng.uniform(*QUEUE), typical * rng.uniform(1 - JITTER, 1 + JITTER))
        for model, typical in models.items()
        for _ in range(count)
    ]


def simulate(task: Task, delay: Delay) -> tuple[Outcome, Timing, float]:
    """Poll `task` on the simulated clock until done."""
    timing, now = Timing(submitted=0.0), 0.0
    while True:
        now += delay(timing, now)
        state = task.state(now)
        if state is None:
            polls = timing.polls + 1
            return Outcome(now - task.end, polls, task.end), timing, now
        timing = timing.seen(now, state)


def today(settings: Settings) -> Delay:
    """The fixed schedule before this change: the first poll after POLL_INTERVAL."""

    def delay(timing: Timing, now: float) -> float:
        return poll_delay(now, settings.poll_interval, settings.poll_interval_max)

    return delay


def predictive(settings: Settings, estimate: Estimate | None) -> Delay:
    def delay(timing: Timing, now: float) -> float:
        base, maximum = settings.poll_interval, settings.poll_interval_max
        return next_delay(timing, estimate, now, base, maximum)

    return delay


async def run_predictive(tasks: list[Task], settings: Settings, learn: bool) -> list[Outcome]:
    store = MemoryEstimates()
    outcomes = []
    for task in tasks:
        key = Key("sim", task.model)
        outcome, timing, seen = simulate(task, predictive(settings, await store.get(key)))
        await store.record(key, timing.run_time(seen))
        outcomes.append(outcome)
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, float]:
    lags = [o.lag for o in outcomes]
    return {
        "median_lag": statistics.median(lags),
        "p90_lag": sorted(lags)[int(0.9 * len(lags))],
        "polls_per_s": sum(o.polls for o in outcomes) / sum(o.seconds for o in outcomes),
        "polls_per_task": statistics.mean(o.polls for o in outcomes),
    }


async def compare(models: dict[str, float], settings: Settings) -> dict[str, dict[str, float]]:
    rng = random.Random(SEED)
    warm = draw(models, WARM_UP, rng)
    measured = draw(models, MEASURED, rng)
    rng.shuffle(warm)
    rng.shuffle(measured)
    learned = await run_predictive(warm + measured, settings, learn=True)
    fixed = [simulate(task, today(settings))[0] for task in measured]
    return {"today": summary(fixed), "predictive": summary(learned[len(warm) :])}


if __name__ == "__main__":
    settings = Settings()
    for name, models in (("short", SHORT), ("long", LONG)):
        print(name, asyncio.run(compare(models, settings)))
    instant = Task("instant", 0.0, 0.0)
    print("instant", simulate(instant, predictive(settings, None))[0])
