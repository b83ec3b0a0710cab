"""The cyclic garbage collector's pace in the API function's long-running process.

CPython collects its youngest generation every 2,000 new container objects (3.13; 700 before).
A streamed generation makes thousands: most are freed at once by reference counting, but those
that live through a request (its tasks, coroutines and provider calls, for seconds) are walked
by every young collection while they live. 200 concurrent 3-s streams spent 5-7% of the server's
CPU in the collector, about a millisecond a young collection; collecting the youngest generation
every 10,000 allocations cut that to about 1% (docs/benchmarks.md). Nothing freed by reference
counting waits for it; only garbage in reference cycles waits a little longer.

While the API function starts (`loading`: its modules imported, its app made), the collector is
off: importing makes tens of thousands of objects that live as long as the process (modules,
classes, functions), and some 30 collections walked them again and again (about 13 ms of a cold
start on a loaded 2-core machine). What start-up made is then frozen (`gc.freeze()`: kept out
of every later collection, which walks only what requests make) and the collector switched
back on. (As a cure for the streams' collections, freezing changed nothing measurable: those
walk what the streams make.)

What the process loads later, for good, is frozen too once loaded (`Requests`): the routes'
modules (imported at their first request), botocore with its service models (the
S3 and access table clients, built at the first generation): some 60,000 objects a young
collection and then a middle one walked again while the first streams ran (a burst of 200
streams after one warm-up spent some 50 ms more in the collector). After a request that ends
with no other in flight, when modules were imported since the last freeze, what exists is
frozen. Such a request's own objects are freed by reference counting as ever; only garbage in
reference cycles among them would stay (a request's, a few times in a process's life).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

#: new container objects between two collections of the youngest generation
YOUNG_THRESHOLD: Final = 10_000


class Requests:
    """The requests in flight (`began`, `ended`: the app's envelope calls them), and, once
    `settling` (the API function's process: `pace_for_server`), what the process loaded since
    the last freeze frozen after a request that ends with none other in flight (module
    docstring)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.settling = False
        self.modules = 0  # imported at the last freeze

    def began(self) -> None:
        self.in_flight += 1

    def ended(self) -> None:
        self.in_flight -= 1
        if self.settling and not self.in_flight and len(sys.modules) != self.modules:
            self.modules = len(sys.modules)
            gc.freeze()


#: the process's requests
requests = Requests()


def pace_for_server() -> None:
    """Collect the youngest generation every `YOUNG_THRESHOLD` allocations at most (never more
    often than the interpreter would); the older generations' pace is kept. A collector
    switched off (threshold 0) is left off. What the server loads later for good is frozen
    once loaded (`Requests`)."""
    young, *older = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *older)
    requests.modules = len(sys.modules)
    requests.settling = True


@contextmanager
def loading() -> Iterator[None]:
    """The collector off while the block runs (the app's modules imported, the app made), then
    what exists frozen out of later collections and the collector on. The API function's start
    script (functions/api/serve.py) switches it off from the process's first line, so that
    importing uvicorn is not collected either. Garbage in cycles made meanwhile is kept: an
    import's few cycles (a module, its classes and functions) live as long as the process."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
