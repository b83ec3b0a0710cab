"""Waiting for a task with a time limit (`imagegw.infra.waits.done_within`)."""

from __future__ import annotations

import asyncio

import pytest

from imagegw.infra.waits import done_within

pytestmark = pytest.mark.anyio


async def test_a_task_done_in_time_is_reported_done() -> None:
    task = asyncio.create_task(asyncio.sleep(0, result="made"))
    assert await done_within(task, 30)
    assert task.result() == "made"


async def test_a_task_not_done_in_time_runs_on() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(release.wait())
    assert not await done_within(task, 0.05)
    assert not task.done()  # not cancelled: it runs on
    release.set()
    assert await done_within(task, 30)


async def test_a_waiter_cancelled_leaves_the_task_running() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(release.wait())
    waiting = asyncio.create_task(done_within(task, 30))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not task.done()
    release.set()
    assert await task
