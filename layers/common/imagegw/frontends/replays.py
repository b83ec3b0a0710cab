"""Repeated requests answered from the paid work they already caused, not a new submission.

Some clients retry every 5xx (and 408/409/429) whatever `x-should-retry` says: Cherry Studio's
client library (the Vercel AI SDK) three times in all. A generation that failed after the
provider started its paid task (a 502 `generation_failed`, a 504 deadline: the answers the
gateway marks `x-should-retry: false`) would then be submitted, and paid, again. So such an
answer is remembered for REPLAY_WINDOW seconds under the caller (a hash of its Authorization
header) and the request (method, path and a hash of the body as read), and the same request
from the same caller within the window gets the same answer at once, marked
`x-gateway-replayed: true`, with nothing submitted.

This instance's memory only (a Lambda instance serves one request at a time, and a client's
retry follows its failed request at once, usually to the same warm instance). Answers of
streamed requests are not remembered: they began with a 200 and are not retried.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

from imagegw.errors import GatewayError, render
from imagegw.infra.log import logger

#: how long a failed paid request is answered from memory (seconds)
REPLAY_WINDOW: Final = 120.0
#: the most remembered answers (the oldest forgotten first)
MAX_REMEMBERED: Final = 1024
REPLAYED_HEADER: Final = "x-gateway-replayed"


@dataclass(frozen=True)
class _Answer:
    error: GatewayError
    at: float


class Replays:
    """The failed paid requests of this instance, for REPLAY_WINDOW seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._answers: OrderedDict[str, _Answer] = OrderedDict()

    @staticmethod
    def key(request: Request) -> str | None:
        """Who asked what: None before the body was read (nothing to compare)."""
        body = getattr(request.state, "body_sha256", None)
        if body is None:
            return None
        caller = request.headers.get("authorization", "")
        asked = f"{caller}\0{request.method}\0{request.url.path}\0{body}"
        return hashlib.sha256(asked.encode("utf-8", "surrogateescape")).hexdigest()

    def replay(self, request: Request) -> None:
        """Raise the answer a failed paid request just like this one got, if any."""
        key = self.key(request)
        if key is None:
            return
        self._forget_old()
        found = self._answers.get(key)
        if found is None:
            return
        logger.info(
            "repeated request answered from the failed one",
            extra={"code": found.error.code, "ago": round(self.clock() - found.at, 1)},
        )
        again = type(found.error)(
            found.error.message,
            param=found.error.param,
            code=found.error.code,
            headers={**found.error.headers, REPLAYED_HEADER: "true"},
            retryable=found.error.retryable,
        )
        raise again

    def remember(self, request: Request, error: GatewayError) -> None:
        """Keep `error` for the request when it may have followed paid work: a 5xx the client
        is told not to retry."""
        status, _, headers = render(error)
        if status < 500 or headers.get("x-should-retry") != "false":
            return
        key = self.key(request)
        if key is None:
            return
        self._answers[key] = _Answer(error, self.clock())
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


def replays_of(request: Request) -> Replays:
    """The app's remembered answers (one per app, made on first use)."""
    state = request.app.state
    found = getattr(state, "replays", None)
    if not isinstance(found, Replays):
        found = state.replays = Replays()
    return found
