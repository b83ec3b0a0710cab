"""Run-time estimates shared by every Lambda instance through the access table (its
`estimate#...` items), so a fresh instance polls a model as well as the ones that learned it.

`SharedEstimates` is an `imagegw.core.estimates.Estimates`:

- `get` reads the key's item (one read in flight per key: a burst waits for it), cached
  CACHE_SECONDS per instance, and folds this instance's
  samples not yet written on top (it predicts with its own samples at once); with no item, this
  instance's `MemoryEstimates` answers (the priors, unless it learned the model while the table
  failed). What it folded is kept (`_Folded`): the next `get` folds only the samples recorded
  since (a burst's generations each looked up the model over up to 128 waiting samples);
- `record` folds the sample into this instance's memory at once, and writes the table at most
  once per key per FLUSH_SECONDS, one write in flight per key: a key's first sample after the
  window is written at once (a lone generation writes as it ends); samples within the window
  wait (at most MAX_PENDING, the newest) and go with the key's next record after it. A write
  folds the samples one by one into the latest value this instance knows (its cache, whatever
  its age; else a consistent read) with one update conditional on the sample count it folded
  into. When another instance wrote first, it reads again, refolds and retries once; losing
  twice drops those samples from the table (these are statistics), with one log line. Its own
  result is cached at once.

So a burst (a hundred streams of one model ending together) costs an instance one write per key,
and one more with the rest once the window has passed, not one per sample each racing the
others. There are no timers (a Lambda instance is frozen between invocations): samples waiting
go with the key's next record after the window, or with `flush` when the instance shuts down
(the API function's lifespan, on the SIGTERM Lambda sends it through the Web Adapter: every
waiting key in one write each, at once, within SHUTDOWN_BUDGET seconds of the runtime's 300 ms).
A job function gets no SIGTERM: each of its steps ends with `flush` (`stepfunctions.steps`).

The table is a help, never a need: each call runs in a worker thread within CALL_BUDGET seconds
(the client is built once before, outside it: building it is no sign of a slow table);
any failure (throttling, no endpoint, a timeout) logs one warning naming no secret, and for
PAUSE seconds this instance answers from, and learns in, its memory alone (the samples of a
failed write, or waiting then, are dropped from the table).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from imagegw.access.table import AccessTable
from imagegw.core.estimates import Estimates, MemoryEstimates, fold_all
from imagegw.core.schedule import Estimate, Key
from imagegw.infra.config import Settings
from imagegw.infra.log import logger

#: how long an instance trusts the estimates it read (its own writes are cached at once)
CACHE_SECONDS: Final = 60.0
#: the longest a table call may hold up a generation; the memory answers after that
CALL_BUDGET: Final = 0.5
#: a key's table writes are this far apart at least (per instance): a burst costs one write, not
#: one per sample, while other instances, reading through their CACHE_SECONDS cache anyway, see
#: a sample at most this much later; 6 writes a minute per key and instance at most
FLUSH_SECONDS: Final = 10.0
#: the most `flush` may take at shutdown (Lambda gives the runtime 300 ms after its SIGTERM)
SHUTDOWN_BUDGET: Final = 0.2
#: samples a key keeps waiting for its next write (the newest: the mean weighs them most)
MAX_PENDING: Final = 64
#: how long the memory alone answers after a table call failed
PAUSE: Final = 60.0
#: connect and read timeouts of the table client (it retries once)
CLIENT_TIMEOUT: Final = 1.0
#: keys longer than this (a very long model id) are learned in memory only
MAX_PK: Final = 1024
_MAX_CACHED: Final = 4096

T = TypeVar("T")


class _Unavailable(Exception):
    """The table did not answer (already logged)."""


def pk_of(key: Key) -> str:
    return f"estimate#{key.provider}#{key.model}#{key.bucket}"


@dataclass(frozen=True)
class _Folded:
    """What `SharedEstimates.get` folded for a key: the table's value, the samples being
    written, the waiting ones (their deque, how many it held and how many the key had
    recorded), and the result."""

    base: Estimate
    writing: list[float] | None
    pending: deque[float] | None
    held: int
    recorded: int
    result: Estimate | None


class SharedEstimates:
    """Estimates in the access table, cached per instance, with a memory fallback."""

    def __init__(
        self,
        table: AccessTable,
        priors: Mapping[tuple[str, str], float] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        budget: float = CALL_BUDGET,
    ) -> None:
        self.table = table
        self.memory = MemoryEstimates(priors)
        self.clock = clock
        self.budget = budget
        self._cache: dict[Key, tuple[Estimate | None, float]] = {}
        #: the read of each key in flight, which every `get` without a fresh copy waits for;
        #: by event loop too (`make run`'s job threads share one store, each on a loop of its
        #: own, and a loop cannot wait for another's future)
        self._reading: dict[
            tuple[asyncio.AbstractEventLoop, Key], asyncio.Future[tuple[Estimate | None, float]]
        ] = {}
        #: samples not in the table yet: waiting for the next write, and being written
        self._pending: dict[Key, deque[float]] = {}
        self._writing: dict[Key, list[float]] = {}
        #: when each key's last write began
        self._written: dict[Key, float] = {}
        #: samples recorded per key (their count), and what `get` folded last (`_Folded`)
        self._recorded: dict[Key, int] = {}
        self._folds: dict[Key, _Folded] = {}
        self._paused_until = -math.inf
        self._client_ready = False

    async def get(self, key: Key) -> Estimate | None:
        cached = self._cache.get(key)
        if cached is None or self.clock() - cached[1] >= CACHE_SECONDS:
            try:
                cached = await self._read_shared(key)
            except _Unavailable:
                return await self.memory.get(key)
        if cached[0] is None:
            return await self.memory.get(key)
        return self._with_own(key, cached[0])

    def _with_own(self, key: Key, base: Estimate) -> Estimate | None:
        """`base` with this instance's samples not in the table yet folded on top: those
        being written, then those waiting. When only samples were added since the last such
        fold (same base, same write, none of the waiting dropped), only those are folded."""
        writing, pending = self._writing.get(key), self._pending.get(key)
        held, recorded = len(pending or ()), self._recorded.get(key, 0)
        last = self._folds.get(key)
        if (
            last is not None
            and last.base is base
            and last.writing is writing
            and last.pending is pending
            and held - last.held == recorded - last.recorded >= 0
        ):
            if held == last.held:
                return last.result
            result = _folded(last.result, islice(pending or (), last.held, None))
        else:
            result = _folded(base, [*(writing or ()), *(pending or ())])
        if len(self._folds) >= _MAX_CACHED:
            self._folds.clear()
        self._folds[key] = _Folded(base, writing, pending, held, recorded, result)
        return result

    async def record(self, key: Key, seconds: float) -> None:
        await self.memory.record(key, seconds)
        if not math.isfinite(seconds) or seconds < 0 or len(pk_of(key)) > MAX_PK:
            return
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= _MAX_CACHED:  # many keys, each with samples waiting
                self._pending.clear()
            pending = self._pending[key] = deque(maxlen=MAX_PENDING)
        pending.append(seconds)
        if len(self._recorded) >= _MAX_CACHED:
            self._recorded.clear()
            self._folds.clear()
        self._recorded[key] = self._recorded.get(key, 0) + 1
        if key in self._writing or self.clock() - self._written.get(key, -math.inf) < FLUSH_SECONDS:
            return  # the key's next record after the window writes them
        await self._flush(key)

    async def flush(self) -> None:
        """Writes every key's waiting samples at once (at shutdown, or a job step's end),
        waiting SHUTDOWN_BUDGET at most; a write not done by then may be lost with the process
        (one log line)."""
        keys = [key for key in self._pending if key not in self._writing]
        if not keys:
            return
        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET):
                await asyncio.gather(*(self._flush(key) for key in keys))
        except TimeoutError:
            logger.warning(
                "run-time samples may be lost at shutdown: the table did not answer in time",
                extra={"keys": len(keys)},
            )

    async def _flush(self, key: Key) -> None:
        """Writes the key's waiting samples (one write in flight per key: with one already
        in flight, or none waiting, nothing; `flush` and a record, or the local runner's job
        threads sharing one store, may both come here for a key)."""
        if key in self._writing:
            return
        samples = list(self._pending.pop(key, ()))
        if not samples:
            return
        if len(self._written) >= _MAX_CACHED:
            self._written.clear()
        self._written[key] = self.clock()
        self._writing[key] = samples
        try:
            for _ in range(2):
                cached = self._cache.get(key)
                old = cached[0] if cached else (await self._read(key, consistent=True))[0]
                new = _folded(old, samples)  # (never empty: checked above)
                read = old.samples if old else 0
                write = self.table.write_estimate
                if await self._call("record", write, pk_of(key), new, read, self.clock()):
                    self._remember(key, new)
                    return
                self._cache.pop(key, None)  # another instance wrote first: read again
        except _Unavailable:
            return
        finally:
            if self._writing.get(key) is samples:
                del self._writing[key]
        logger.info(
            "run-time samples dropped: two concurrent writes won",
            extra={"key": str(key), "samples": len(samples)},
        )

    async def _read_shared(self, key: Key) -> tuple[Estimate | None, float]:
        """`_read` (eventually consistent), one at a time per key and event loop: the
        generations of a burst that find no fresh copy wait for the read in flight instead of
        each making its own (a burst of 100 made 100 reads at once). A waiter that is cancelled
        leaves the read to the others."""
        slot = (asyncio.get_running_loop(), key)
        reading = self._reading.get(slot)
        if reading is None:
            reading = asyncio.ensure_future(self._read(key, consistent=False))
            self._reading[slot] = reading

            def done(finished: asyncio.Future[tuple[Estimate | None, float]]) -> None:
                self._reading.pop(slot, None)
                if not finished.cancelled():
                    finished.exception()  # seen, even when every waiter left

            reading.add_done_callback(done)
        return await asyncio.shield(reading)

    async def _read(self, key: Key, *, consistent: bool) -> tuple[Estimate | None, float]:
        def read() -> Estimate | None:
            return self.table.estimate(pk_of(key), consistent=consistent)

        return self._remember(key, await self._call("get", read))

    def _remember(self, key: Key, found: Estimate | None) -> tuple[Estimate | None, float]:
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = entry = (found, self.clock())
        return entry

    async def _call(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker thread within the budget; `_Unavailable` when the
        table is paused or the call failed (then it pauses, with one warning)."""
        if self.clock() < self._paused_until:
            raise _Unavailable
        try:
            if not self._client_ready:
                # building the client (botocore loading its service model: most of a second
                # on a cold process) is not the table being slow: outside the budget, once
                await anyio.to_thread.run_sync(lambda: self.table.client)
                self._client_ready = True
            with anyio.fail_after(self.budget):
                return await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True)
        except Exception as exc:  # botocore's errors, throttling, the budget's timeout
            self._paused_until = self.clock() + PAUSE
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            logger.warning(
                "run-time estimates table failed; this instance's own for a while",
                extra={"call": what, "error": code or type(exc).__name__, "pause": PAUSE},
            )
            raise _Unavailable from None


def _folded(old: Estimate | None, samples: Iterable[float]) -> Estimate | None:
    return fold_all(old, samples)


def estimates_for(settings: Settings, priors: Mapping[tuple[str, str], float]) -> Estimates:
    """The instance's estimates: shared through the access table where there is one
    (ACCESS_TABLE), this instance's own otherwise. Builds no client (that is on first use)."""
    if not settings.access_table:
        return MemoryEstimates(priors)
    table = AccessTable(settings.access_table, settings.aws_region, timeout=CLIENT_TIMEOUT)
    return SharedEstimates(table, priors)
