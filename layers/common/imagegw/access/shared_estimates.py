"""Run-time estimates shared by every Lambda instance through the access table (its
`estimate#...` items), so a fresh instance polls a model as well as the ones that learned it.

`SharedEstimates` is an `imagegw.core.estimates.Estimates`:

- `get` reads the key's item, cached CACHE_SECONDS per instance; with no item, this instance's
  `MemoryEstimates` answers (the priors, unless it learned the model while the table failed);
- `record` folds the sample into the latest value this instance knows (its cache, whatever its
  age; else a consistent read) and writes it with one update conditional on the sample count it
  folded into. When another instance wrote first, it reads again and retries once; losing twice
  drops the sample from the table (these are statistics). Its own result is cached at once.

The table is a help, never a need: each call runs in a worker thread within CALL_BUDGET seconds
(the client is built once before, outside it: building it is no sign of a slow table);
any failure (throttling, no endpoint, a timeout) logs one warning naming no secret, and for
PAUSE seconds this instance answers from, and learns in, its memory alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from imagegw.access.table import AccessTable
from imagegw.core.estimates import Estimates, MemoryEstimates, fold
from imagegw.core.schedule import Estimate, Key
from imagegw.infra.config import Settings
from imagegw.infra.log import logger

#: how long an instance trusts the estimates it read (its own writes are cached at once)
CACHE_SECONDS: Final = 60.0
#: the longest a table call may hold up a generation; the memory answers after that
CALL_BUDGET: Final = 0.5
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
        self._paused_until = -math.inf
        self._client_ready = False

    async def get(self, key: Key) -> Estimate | None:
        cached = self._cache.get(key)
        if cached is None or self.clock() - cached[1] >= CACHE_SECONDS:
            try:
                cached = await self._read(key, consistent=False)
            except _Unavailable:
                return await self.memory.get(key)
        return cached[0] or await self.memory.get(key)

    async def record(self, key: Key, seconds: float) -> None:
        await self.memory.record(key, seconds)
        if not math.isfinite(seconds) or seconds < 0 or len(pk_of(key)) > MAX_PK:
            return
        try:
            for _ in range(2):
                cached = self._cache.get(key)
                old = cached[0] if cached else (await self._read(key, consistent=True))[0]
                new = fold(old, seconds)
                read = old.samples if old else 0
                write = self.table.write_estimate
                if await self._call("record", write, pk_of(key), new, read, self.clock()):
                    self._remember(key, new)
                    return
                self._cache.pop(key, None)  # another instance wrote first: read again
        except _Unavailable:
            return
        logger.info("run-time sample dropped: two concurrent writes won", extra={"key": str(key)})

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


def estimates_for(settings: Settings, priors: Mapping[tuple[str, str], float]) -> Estimates:
    """The instance's estimates: shared through the access table where there is one
    (ACCESS_TABLE), this instance's own otherwise. Builds no client (that is on first use)."""
    if not settings.access_table:
        return MemoryEstimates(priors)
    table = AccessTable(settings.access_table, settings.aws_region, timeout=CLIENT_TIMEOUT)
    return SharedEstimates(table, priors)
