"""A webhook receiver on loopback: records every delivery (headers, raw body) and answers the
status codes it is told, in order (then 200), as a customer's endpoint would."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class WebhookReceiver:
    """An ASGI app: `POST /hook` records the delivery and answers the next of `answers`."""

    answers: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        with self.lock:
            self.deliveries.append(Delivery(dict(request.headers), body, time.monotonic()))
            status = self.answers.pop(0) if self.answers else 200
        await Response(b"", status_code=status)(scope, receive, send)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.deliveries)} deliveries, not {count}, in {timeout} s")

    def headers_of(self, index: int) -> Any:
        return self.deliveries[index].headers
