"""Where run times are learned: an `Estimates` store, by `schedule.Key`.

`MemoryEstimates` keeps them in the process (one Lambda instance learns from its own tasks).
Where the gateway has its access table (ACCESS_TABLE),
`imagegw.access.shared_estimates.SharedEstimates`
shares them across instances with the same two calls: `get` reads the key's item (cached 60 s
per instance), `record` folds samples in with one update conditional on the sample count, at
most once per key every 10 s per instance (samples meanwhile wait for the next; a lost race reads
again and retries once, then drops them: these are statistics); a table
that fails leaves each instance its own `MemoryEstimates`. Priors for the providers' catalogue
models (`ModelInfo.seconds`) answer until a model has a history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from imagegw.core.schedule import QUEUE_MODEL, Estimate, Key, Timing, queue_time

#: the weight of a new sample, once a model has this many (earlier ones weigh 1/n)
WEIGHT: Final = 0.2
#: a prior's spread, as a share of its seconds (priors are guesses)
PRIOR_SPREAD: Final = 0.3
#: the spread assumed after one sample, as a share of it
FIRST_SPREAD: Final = 0.15


class Estimates(Protocol):
    """Learned run times, shared by every driver of the same store."""

    async def get(self, key: Key) -> Estimate | None: ...

    async def record(self, key: Key, seconds: float) -> None: ...

    async def flush(self) -> None:
        """Stores what waits to be stored (at shutdown)."""


def fold(old: Estimate | None, seconds: float) -> Estimate:
    """`old` with one more sample: an exponentially weighted mean and deviation (`fold_all`)."""
    folded = fold_all(old, (seconds,))
    assert folded is not None  # one sample folded: an estimate
    return folded


def fold_all(old: Estimate | None, samples: Iterable[float]) -> Estimate | None:
    """`old` with each of `samples` folded in turn: an exponentially weighted mean and
    deviation (a prior, `samples` 0, gives way to the first sample), one `Estimate` made, not
    one a sample: a key's waiting samples (up to 64) are folded again on every look-up once its
    queue is full (`imagegw.access.shared_estimates`)."""
    seconds, spread, count = (old.seconds, old.spread, old.samples) if old else (0.0, 0.0, 0)
    for sample in samples:
        if count == 0:
            seconds, spread, count = sample, FIRST_SPREAD * sample, 1
            continue
        weight = max(WEIGHT, 1.0 / (count + 1))
        delta = sample - seconds
        variance = (1 - weight) * (spread**2 + weight * delta**2)
        seconds, spread, count = seconds + weight * delta, math.sqrt(variance), count + 1
    if count == 0 or (old is not None and count == old.samples):
        return old
    return Estimate(seconds, spread, count)


class MemoryEstimates:
    """Per-process estimates; `priors` (model id -> seconds) answer for unseen models."""

    def __init__(self, priors: Mapping[tuple[str, str], float] | None = None) -> None:
        self.priors = dict(priors or {})
        self.learned: dict[Key, Estimate] = {}

    async def get(self, key: Key) -> Estimate | None:
        found = self.learned.get(key)
        if found is not None:
            return found
        prior = self.priors.get((key.provider, key.model))
        return None if prior is None else Estimate(prior, PRIOR_SPREAD * prior, 0)

    async def record(self, key: Key, seconds: float) -> None:
        self.learned[key] = fold(self.learned.get(key), seconds)

    async def flush(self) -> None:
        """Nothing waits: the process's memory is the store."""


async def learn(
    estimates: Estimates | None,
    key: Key,
    timing: Timing,
    ended_seen: float,
    estimate: Estimate | None = None,
) -> None:
    """A task of `key` ended (seen at `ended_seen`): its run time is one more sample (its likely
    end within the span it ended in under `estimate`, the model's estimate it was polled by:
    `Timing.run_time`), and its queue time one of the provider's queue."""
    if estimates is None:
        return
    await estimates.record(key, timing.run_time(ended_seen, estimate))
    queued = queue_time(timing)
    if queued is not None:
        await estimates.record(Key(key.provider, QUEUE_MODEL), queued)


async def queue_of(estimates: Estimates, provider: str) -> Estimate | None:
    """How long the provider's tasks wait before they run, as learned."""
    return await estimates.get(Key(provider, QUEUE_MODEL))
