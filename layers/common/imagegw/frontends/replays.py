"""Repeated requests answered from the paid work they already caused, not a new submission.

Some clients retry every 5xx (and 408/409/429) whatever `x-should-retry` says: Cherry Studio's
client library (the Vercel AI SDK) three times in all. A generation that failed after the
provider started its paid task (a 502 `generation_failed`, a 504 deadline: the answers the
gateway marks `x-should-retry: false`) would then be submitted, and paid, again. So such an
answer is remembered for REPLAY_WINDOW seconds under the caller (a hash of its Authorization
header) and the request (method, path and a hash of the body as read), with what it takes to
ask the provider about its tasks again (`Paid`: the provider, the model, the task ids, the
reference `pool:<provider>:<id>` of the server-held token that started them, never a token;
the images asked for; the answer's shape). The same request from the same caller within the
window is answered from those tasks, marked `x-gateway-replayed: true`, and nothing is
submitted:

- tasks that were still running when the error was given (the deadline's 504, or a 502 after
  their polls failed: `lifecycle.may_still_finish`) are polled again through the in-process
  runner (`generate(resume=...)`: the one lifecycle and the provider's `check`), for at most
  REPLAY_WAIT seconds (less when the client waits less, or GENERATION_TIMEOUT is shorter).
  Finished since: the normal 200, the images stored or linked as any answer's, the key's quota
  reserved and settled as for any success (the failed request gave it back), the memory
  forgotten. Still running: the same error again, remembered afresh (the window starts again).
  Failed: the provider's error (a refusal of the content a 400).
- any other remembered failure (the task failed, or nothing started, or the token that started
  the tasks was removed since): the same error at once.

A 4xx is never remembered: a task the provider refused for its content or parameters is a 400
that no client retries on its own, and a person who sends the same request again gets a new
submission, not the old refusal. A remembered failure blocks a retry for REPLAY_WINDOW at most;
changing the request (one character of the prompt) submits anew at once.

This instance's memory only (a Lambda instance serves one request at a time, and a client's
retry follows its failed request at once, usually to the same warm instance). Answers of
streamed requests are not remembered: they began with a 200 and are not retried. While one
repeat polls the tasks, another identical one gets the remembered error (the tasks are never
answered, nor counted, twice at once).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from pydantic import SecretStr
from starlette.requests import Request

from imagegw.access import lease
from imagegw.access.gate import Access
from imagegw.core.lifecycle import may_still_finish
from imagegw.errors import GatewayError, render
from imagegw.infra.log import logger
from imagegw.runners.inprocess import Progress
from imagegw.runners.pipeline import Event

#: how long a failed paid request is answered from memory (seconds)
REPLAY_WINDOW: Final = 120.0
#: the longest a repeated request waits for tasks still running (seconds)
REPLAY_WAIT: Final = 60.0
#: the most remembered answers (the oldest forgotten first)
MAX_REMEMBERED: Final = 1024
REPLAYED_HEADER: Final = "x-gateway-replayed"

#: how the answer is given: a chat completion, or the Images API's `url` or `b64_json` items
Shape = Literal["chat", "url", "b64_json"]


@dataclass(frozen=True)
class Paid:
    """What a request asked for and the paid work it started: enough to ask the provider
    about that work again. No secret: a server-held token by its reference only."""

    provider: str
    model: str
    #: images asked for
    n: int
    shape: Shape
    #: the provider's ids of the tasks started, in the order of the calls
    task_ids: tuple[str, ...] = ()
    #: how many calls the job made (`Provider.split`)
    calls: int = 0
    #: the server-held token that started them (`pool:<provider>:<id>`); None: the caller's
    #: own, which the repeated request carries again
    token_ref: str | None = None

    def resumes(self, asked: Paid) -> bool:
        """Whether a request asking `asked` can be answered by polling these tasks: the same
        job, every call of which started a task."""
        same = (self.provider, self.model, self.n, self.shape) == (
            asked.provider,
            asked.model,
            asked.n,
            asked.shape,
        )
        return same and bool(self.task_ids) and len(self.task_ids) == self.calls


@dataclass(frozen=True)
class _Answer:
    error: GatewayError
    at: float
    paid: Paid
    #: whether the tasks may still finish (they were running when the error was given)
    pending: bool = False


@dataclass
class Attempt:
    """One non-streamed request, fresh or answered from a failed twin's tasks (`resumed`):
    what it runs with, and what it saw of the tasks it ran."""

    asked: Paid
    #: the token the provider gets: the request's, or the one that started the resumed tasks
    api_key: SecretStr
    resumed: _Answer | None = None
    #: the latest task ids and call count the run reported (`Progress`)
    seen: tuple[tuple[str, ...], int] = ((), 0)
    #: whether the run began (an error after that is the tasks' answer)
    ran: bool = False
    #: headers for a successful answer
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def resume(self) -> tuple[str, ...]:
        """The tasks to poll instead of starting new ones (none: a fresh request)."""
        return self.resumed.paid.task_ids if self.resumed is not None else ()

    def budget(self, client: float | None) -> float | None:
        """Seconds the run may take: the client's (`web.client_budget`), and for a repeat at
        most REPLAY_WAIT."""
        if self.resumed is None:
            return client
        return min(REPLAY_WAIT, client if client is not None else math.inf)

    async def watch(self, events: AsyncIterator[Event]) -> AsyncGenerator[Event, None]:
        """`events`, noting the tasks they report (closed when this is)."""
        try:
            async for event in events:
                self.ran = True
                if isinstance(event, Progress) and event.task_ids:
                    self.seen = (event.task_ids, event.total)
                yield event
        finally:
            closer = getattr(events, "aclose", None)
            if closer is not None:
                await closer()

    def paid(self) -> Paid:
        """What this attempt started (a repeat: what its twin started)."""
        if self.resumed is not None:
            return self.resumed.paid
        leased = lease.current()  # the token the calls went out with, after any failover
        task_ids, calls = self.seen
        ref = leased.ref if leased is not None else None
        return replace(self.asked, task_ids=task_ids, calls=calls, token_ref=ref)


class Replays:
    """The failed paid requests of this instance, for REPLAY_WINDOW seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        #: the requests whose tasks a repeat is polling now
        self._resuming: set[str] = set()

    @staticmethod
    def key(request: Request) -> str | None:
        """Who asked what: None before the body was read (nothing to compare)."""
        body = getattr(request.state, "body_sha256", None)
        if body is None:
            return None
        caller = request.headers.get("authorization", "")
        asked = f"{caller}\0{request.method}\0{request.url.path}\0{body}"
        return hashlib.sha256(asked.encode("utf-8", "surrogateescape")).hexdigest()

    @asynccontextmanager
    async def attempt(
        self, request: Request, asked: Paid, access: Access, api_key: SecretStr
    ) -> AsyncIterator[Attempt]:
        """The run of a non-streamed request that asks `asked` with `api_key`. Raises at once
        the error a failed twin got when nothing can have changed it; gives an `Attempt` that
        polls the twin's tasks when they may have finished since (`Attempt.resume`), else a
        fresh one. A failure of the run is remembered when it may have followed paid work."""
        key = self.key(request)
        found = self.found(key)
        run = Attempt(asked, api_key)
        if key is not None and found is not None:
            run = await self._resumed(key, found, asked, access, api_key)
            self._resuming.add(key)
        try:
            yield run
        except GatewayError as error:
            self._failed(key, run, error)
            raise
        else:
            if key is not None and run.resumed is not None:
                self._answers.pop(key, None)
                run.headers[REPLAYED_HEADER] = "true"
                logger.info("repeated request answered from the tasks of the failed one")
        finally:
            if key is not None and run.resumed is not None:
                self._resuming.discard(key)

    def found(self, key: str | None) -> _Answer | None:
        """The failure remembered for `key` within the window, if any."""
        if key is None:
            return None
        self._forget_old()
        return self._answers.get(key)

    async def _resumed(
        self, key: str, found: _Answer, asked: Paid, access: Access, api_key: SecretStr
    ) -> Attempt:
        """A repeat's attempt on its twin's tasks; the twin's error raised again when they
        cannot have changed, are being polled by another repeat, or cannot be polled."""
        paid = found.paid
        if not found.pending or key in self._resuming or not paid.resumes(asked):
            raise self._again(found)
        if paid.token_ref is not None:
            token = await access.token_by_ref(paid.token_ref)
            if token is None:  # the owner removed it: the tasks cannot be asked about
                raise self._again(found)
            api_key = token
        return Attempt(asked, api_key, resumed=found)

    def _again(self, found: _Answer) -> GatewayError:
        """The remembered error, marked as a replay."""
        logger.info(
            "repeated request answered from the failed one",
            extra={"code": found.error.code, "ago": round(self.clock() - found.at, 1)},
        )
        return replayed(found.error)

    def _failed(self, key: str | None, run: Attempt, error: GatewayError) -> None:
        """Remember a failure that may have followed paid work: a 5xx the client is told not
        to retry. A repeat's failure that is its tasks' answer is marked as a replay."""
        if run.resumed is not None and run.ran:
            error.headers[REPLAYED_HEADER] = "true"
        status, _, headers = render(error)
        if key is None or status < 500 or headers.get("x-should-retry") != "false":
            return
        paid = run.paid()
        pending = bool(paid.task_ids) and may_still_finish(error)
        self._answers[key] = _Answer(error, self.clock(), paid, pending)
        self._answers.move_to_end(key)
        while len(self._answers) > MAX_REMEMBERED:
            self._answers.popitem(last=False)

    def _forget_old(self) -> None:
        now = self.clock()
        while self._answers:
            oldest = next(iter(self._answers.values()))
            if now - oldest.at <= REPLAY_WINDOW:
                break
            self._answers.popitem(last=False)


def replayed(error: GatewayError) -> GatewayError:
    """A copy of `error` marked `x-gateway-replayed: true`."""
    return type(error)(
        error.message,
        param=error.param,
        code=error.code,
        headers={**error.headers, REPLAYED_HEADER: "true"},
        retryable=error.retryable,
    )


def replays_of(request: Request) -> Replays:
    """The app's remembered answers (one per app, made on first use)."""
    state = request.app.state
    found = getattr(state, "replays", None)
    if not isinstance(found, Replays):
        found = state.replays = Replays()
    return found
