"""A failed paid request repeated by the same caller with the same body within two minutes is
answered from the first: the same error, or, when its tasks may have finished since, an attempt
that polls them instead of submitting anew (`imagegw.frontends.replays`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

import anyio
import pytest
from pydantic import SecretStr
from starlette.requests import Request

from imagegw.access import lease
from imagegw.access.gate import Access
from imagegw.errors import (
    ClientDisconnectedError,
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    ProviderError,
    RateLimitError,
    ServiceUnavailableError,
)
from imagegw.frontends.replays import REPLAY_WAIT, REPLAY_WINDOW, Attempt, Paid, Replays
from imagegw.runners.inprocess import Event, Progress

ASKED = Paid("modelscope", "Qwen/Qwen-Image", 1, "url")
OWN = SecretStr("ms-own-token")
POOL_TOKEN = "ms-pool-token"
REF = "pool:modelscope:0123abcd"


def request(body: str = "b1", bearer: str = "Bearer one", path: str = "/v1/x") -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"authorization", bearer.encode())],
        "query_string": b"",
        "state": {},
    }
    asked = Request(scope)
    asked.state.body_sha256 = body
    return asked


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tokens:
    """The access part a repeat needs: the server-held tokens by reference."""

    def __init__(self, **tokens: str) -> None:
        self.tokens = tokens
        self.asked: list[str] = []

    async def token_by_ref(self, ref: str) -> SecretStr | None:
        self.asked.append(ref)
        token = self.tokens.get(ref)
        return None if token is None else SecretStr(token)


class Leased:
    """A lease on a pool token, as `web.authorize` makes current for a gateway key."""

    provider = "modelscope"
    ref = REF
    token = SecretStr(POOL_TOKEN)


def access(**tokens: str) -> Access:
    return cast("Access", Tokens(**tokens))


async def started(*task_ids: str, calls: int | None = None) -> AsyncIterator[Event]:
    """A run's events: its tasks started (one per call unless `calls` says more calls)."""
    yield Progress("RUNNING", 1.0, 0, calls or len(task_ids), task_ids)


async def run(
    replays: Replays,
    asked: Request,
    error: GatewayError | None,
    task_ids: Sequence[str] = ("t-1",),
    calls: int | None = None,
    tokens: Access | None = None,
) -> Attempt:
    """One request through `Replays.attempt`: its run reports `task_ids`, then ends with
    `error` (None: a success). Raises what the request answers."""
    async with replays.attempt(asked, ASKED, tokens or access(), OWN) as attempt:
        async for _ in attempt.watch(started(*task_ids, calls=calls)):
            pass
        if error is not None:
            raise error
    return attempt


def attempt_of(replays: Replays, asked: Request, tokens: Access | None = None) -> Attempt:
    """The attempt a request gets, left at once (as a run that answers at once)."""

    async def enter() -> Attempt:
        async with replays.attempt(asked, ASKED, tokens or access(), OWN) as attempt:
            return attempt

    return anyio.run(enter)


def late() -> DeadlineExceededError:
    return DeadlineExceededError(
        "ModelScope task t-1 did not finish within 5 s; it may still finish at the provider.",
        code="deadline_exceeded",
    )


def test_the_same_request_gets_the_same_failure_within_the_window() -> None:
    clock = Clock()
    replays = Replays(clock)
    failed = ProviderError("ModelScope task t-1 failed: out of memory", code="generation_failed")
    with pytest.raises(ProviderError):
        anyio.run(run, replays, request(), failed)

    clock.now += REPLAY_WINDOW - 1
    with pytest.raises(ProviderError) as again:
        attempt_of(replays, request())
    assert again.value.message == failed.message and again.value.code == "generation_failed"
    assert again.value.headers["x-gateway-replayed"] == "true"

    # another body, another caller or another path is another request: a fresh attempt
    for other in (request(body="b2"), request(bearer="Bearer two"), request(path="/v1/y")):
        fresh = attempt_of(replays, other)
        assert fresh.resume == () and fresh.headers == {}
    # and after the window it is asked anew
    clock.now += 2
    assert attempt_of(replays, request()).resume == ()


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequestError("bad"),  # nothing started, and the same body is refused again
        # a task the provider refused for its content: a person may send it again
        InvalidRequestError("Request Moderated", code="content_policy_violation"),
        ServiceUnavailableError("down"),  # retryable: nothing started
        GatewayError("odd", retryable=True),
        ClientDisconnectedError("left"),  # nobody to answer; a new request is a new one
    ],
)
def test_only_failures_that_may_follow_paid_work_are_remembered(error: GatewayError) -> None:
    replays = Replays(Clock())
    with pytest.raises(type(error)):
        anyio.run(run, replays, request(), error)
    assert attempt_of(replays, request()).resume == ()


def test_a_deadline_with_its_tasks_running_is_answered_by_polling_them() -> None:
    # Given a request that ended at the deadline while its one task ran
    replays = Replays(Clock())
    with pytest.raises(DeadlineExceededError):
        anyio.run(run, replays, request(), late())

    # When the same caller sends it again
    attempt = attempt_of(replays, request())

    # Then the attempt polls that task with the caller's own token, for at most REPLAY_WAIT
    assert attempt.resume == ("t-1",)
    assert attempt.api_key.get_secret_value() == OWN.get_secret_value()
    assert attempt.budget(None) == REPLAY_WAIT and attempt.budget(20.0) == 20.0
    # and, having answered, it is marked as a replay and forgotten: the next one is new
    assert attempt.headers == {"x-gateway-replayed": "true"}
    assert attempt_of(replays, request()).resume == ()


def test_a_repeat_still_late_is_remembered_afresh_and_a_failed_task_ends_it() -> None:
    clock = Clock()
    replays = Replays(clock)
    with pytest.raises(DeadlineExceededError):
        anyio.run(run, replays, request(), late())

    # When the repeat finds the task still running, after most of the window
    clock.now += REPLAY_WINDOW - 10
    with pytest.raises(DeadlineExceededError) as still:
        anyio.run(run, replays, request(), late())

    # Then its error is the tasks' answer, marked as a replay, and remembered from now on
    assert still.value.headers["x-gateway-replayed"] == "true"
    clock.now += REPLAY_WINDOW - 10
    assert attempt_of(replays, request()).resume == ("t-1",)

    # and when a repeat finds the task failed, that error stands, without polling again
    with pytest.raises(DeadlineExceededError):
        anyio.run(run, replays, request(), late())
    broke = ProviderError("ModelScope task t-1 failed: out of memory", code="generation_failed")
    with pytest.raises(ProviderError):
        anyio.run(run, replays, request(), broke)
    with pytest.raises(ProviderError) as again:
        attempt_of(replays, request())
    assert again.value.code == "generation_failed"


def test_a_poll_failure_is_answered_by_polling_again() -> None:
    replays = Replays(Clock())
    unpollable = ProviderError(
        "ModelScope could not be polled for 60 s (task t-1): last error: answered 503.",
        code="provider_unavailable",
    )
    with pytest.raises(ProviderError):
        anyio.run(run, replays, request(), unpollable)
    assert attempt_of(replays, request()).resume == ("t-1",)


def test_a_repeat_polls_with_the_pool_token_that_started_the_tasks_never_holding_it() -> None:
    # Given a gateway key's request whose lease (after any failover) was the pool token REF
    replays = Replays(Clock())

    async def leased_run() -> None:
        lease.use(Leased())
        try:
            await run(replays, request(), late())
        finally:
            lease.use(None)

    with pytest.raises(DeadlineExceededError):
        anyio.run(leased_run)

    # Then the memory names the token by reference only
    remembered = replays.found(Replays.key(request()))
    assert remembered is not None and remembered.paid.token_ref == REF
    assert POOL_TOKEN not in repr(remembered)

    # and the repeat polls with that token, whichever token its own lease got
    tokens = Tokens(**{REF: POOL_TOKEN})
    attempt = attempt_of(replays, request(), cast("Access", tokens))
    assert attempt.api_key.get_secret_value() == POOL_TOKEN and tokens.asked == [REF]


def test_tasks_that_cannot_be_polled_again_get_the_same_error() -> None:
    # a task whose token the owner removed since
    replays = Replays(Clock())
    lease.use(Leased())
    try:
        with pytest.raises(DeadlineExceededError):
            anyio.run(run, replays, request(), late())
    finally:
        lease.use(None)
    with pytest.raises(DeadlineExceededError) as removed:
        attempt_of(replays, request(), access())
    assert removed.value.headers["x-gateway-replayed"] == "true"

    # a job some of whose calls started no task (the rest was refused): not the whole job
    partial = Replays(Clock())
    with pytest.raises(DeadlineExceededError):
        anyio.run(run, partial, request(), late(), ("t-1",), 2)
    with pytest.raises(DeadlineExceededError):
        attempt_of(partial, request())

    # a deadline before any task started (a synchronous provider's call)
    unstarted = Replays(Clock())
    with pytest.raises(DeadlineExceededError):
        anyio.run(run, unstarted, request(), late(), ())
    with pytest.raises(DeadlineExceededError):
        attempt_of(unstarted, request())


def test_one_repeat_at_a_time_polls_the_tasks() -> None:
    replays = Replays(Clock())
    with pytest.raises(DeadlineExceededError):
        anyio.run(run, replays, request(), late())

    async def two_at_once() -> None:
        async with replays.attempt(request(), ASKED, access(), OWN) as first:
            assert first.resume == ("t-1",)
            # a second identical request meanwhile gets the remembered error
            with pytest.raises(DeadlineExceededError) as second:
                async with replays.attempt(request(), ASKED, access(), OWN):
                    pass
            assert second.value.headers["x-gateway-replayed"] == "true"
            raise RateLimitError("quota", code="quota_exceeded")  # refused before polling

    with pytest.raises(RateLimitError) as refused:
        anyio.run(two_at_once)
    # a refusal before the tasks were polled is no replay, and leaves the memory as it was
    assert "x-gateway-replayed" not in refused.value.headers
    assert attempt_of(replays, request()).resume == ("t-1",)


def test_a_request_whose_body_was_not_read_is_never_replayed() -> None:
    replays = Replays(Clock())
    unread = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "state": {}})
    with pytest.raises(ProviderError):
        anyio.run(run, replays, unread, ProviderError("x"))
    assert attempt_of(replays, unread).resume == ()
