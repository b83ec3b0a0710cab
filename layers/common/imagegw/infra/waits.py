"""Waiting for a task with a time limit, cheaply: what a stream does for each of its events, all
its life (`imagegw.runners.inprocess`)."""

from __future__ import annotations

import asyncio
from typing import Any


async def done_within(task: asyncio.Future[Any], seconds: float) -> bool:
    """Whether `task` is done within `seconds`; it runs on either way. `asyncio.wait` of one
    task, with one future and one timer, without the set, the two coroutines and the counter
    that call makes."""
    if task.done():
        return True
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(seconds, wake)
    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()
