"""The job steps' instances (`imagegw.runners.stepfunctions.steps`): one event loop and one
`Gateway` per thread, reused by its steps, closed once its thread has ended (`make run`'s Step
Functions runs each execution on a thread of its own) and at exit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from imagegw.infra.config import Settings
from imagegw.runners.gateway import Gateway
from imagegw.runners.stepfunctions import steps

SETTINGS = Settings()


class Seen:
    """A step that notes the loop it ran on and the gateway's provider client."""

    def __init__(self) -> None:
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.clients: list[httpx.AsyncClient] = []

    async def __call__(self, event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
        self.loops.append(asyncio.get_running_loop())
        self.clients.append(kit.client)
        return {"ran": True}


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(steps, "ESTIMATES", None)
    steps.close_instances()
    yield
    steps.close_instances()


def on_a_thread(step: Seen) -> None:
    thread = threading.Thread(target=steps.run_step, args=(step, {}, SETTINGS))
    thread.start()
    thread.join(30)
    assert not thread.is_alive()


def test_the_steps_of_one_thread_share_its_loop_and_gateway() -> None:
    step = Seen()

    assert steps.run_step(step, {}, SETTINGS) == {"ran": True}
    steps.run_step(step, {}, SETTINGS)

    first, second = step.loops
    assert first is second and not first.is_closed()
    assert step.clients[0] is step.clients[1] and not step.clients[0].is_closed


def test_an_ended_threads_loop_and_clients_are_closed_by_the_next_step() -> None:
    # Given an execution's step run on a thread of its own, which has ended
    ended = Seen()
    on_a_thread(ended)
    (loop,), (client,) = ended.loops, ended.clients
    assert not loop.is_closed()

    # When the next step starts, on another thread
    step = Seen()
    steps.run_step(step, {}, SETTINGS)

    # Then the ended thread's provider client and loop are closed; this thread's are open
    assert client.is_closed and loop.is_closed()
    assert not step.loops[0].is_closed() and not step.clients[0].is_closed


def test_every_instance_is_closed_at_exit() -> None:
    step = Seen()
    steps.run_step(step, {}, SETTINGS)

    steps.close_instances()

    assert step.loops[0].is_closed() and step.clients[0].is_closed
    # and a step after that gets a new loop
    steps.run_step(step, {}, SETTINGS)
    assert not step.loops[1].is_closed()
