"""A failed paid request repeated by the same caller with the same body within two minutes is
answered from the first (`imagegw.frontends.replays`)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from imagegw.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    ProviderError,
    ServiceUnavailableError,
)
from imagegw.frontends.replays import REPLAY_WINDOW, Replays


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


def test_the_same_request_gets_the_same_failure_within_the_window() -> None:
    clock = Clock()
    replays = Replays(clock)
    failed = ProviderError("ModelScope task t-1 failed: out of memory", code="generation_failed")
    replays.remember(request(), failed)

    clock.now += REPLAY_WINDOW - 1
    with pytest.raises(ProviderError) as again:
        replays.replay(request())
    assert again.value.message == failed.message and again.value.code == "generation_failed"
    assert again.value.headers["x-gateway-replayed"] == "true"

    # another body, another caller or another path is another request
    for other in (request(body="b2"), request(bearer="Bearer two"), request(path="/v1/y")):
        replays.replay(other)
    # and after the window it is asked anew
    clock.now += 2
    replays.replay(request())


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequestError("bad"),  # nothing started, and the same body is refused again
        ServiceUnavailableError("down"),  # retryable: nothing started
        GatewayError("odd", retryable=True),
    ],
)
def test_only_failures_that_may_follow_paid_work_are_remembered(error: GatewayError) -> None:
    replays = Replays(Clock())
    replays.remember(request(), error)
    replays.replay(request())


def test_a_deadline_after_the_task_started_is_remembered() -> None:
    replays = Replays(Clock())
    replays.remember(request(), DeadlineExceededError("late", code="deadline_exceeded"))
    with pytest.raises(DeadlineExceededError):
        replays.replay(request())


def test_a_request_whose_body_was_not_read_is_never_replayed() -> None:
    replays = Replays(Clock())
    unread = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "state": {}})
    replays.remember(unread, ProviderError("x"))
    replays.replay(unread)
