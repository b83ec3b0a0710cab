"""The instruments that watch the gateway under fuzz.

- `Tripwire`: a process-wide audit hook (`sys.addaudithook`) that, while armed, refuses every
  connection to an address that is not loopback and every DNS look-up of a name (so nothing the
  fuzz generates reaches another machine, whatever client the gateway fetches with), and
  records every connection the gateway makes other than to its providers and its bucket: a
  fetch on a client's behalf (SSRF).
- `Canary`: a loopback server the generated image URLs point at (an image, a fake credentials
  document, a redirect): what an SSRF would reach.
- `Quiescence`: wraps the app to tell when it is done with every request (and has logged all
  it logs about them).
- `LogCapture`: every log record of the gateway (Powertools' JSON, as it prints), uvicorn and
  asyncio, for the key and traceback checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fakes.png import make_png
from imagegw.infra.log import logger as gateway_logger

#: what the canary's fake metadata endpoint answers (must never reach a client)
CANARY_SECRET = "CANARY-SECRET-AKIAFUZZ0000"


# ---------------------------------------------------------------------------- tripwire


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _resolves_locally(host: str) -> bool:
    """Whether looking `host` up needs no DNS: an address in any form glibc parses, or
    localhost."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


@dataclass
class Tripwire:
    """Refuses, while armed, every connection that would leave loopback and every DNS look-up;
    records the gateway's connections to loopback ports that are not its providers'."""

    armed: bool = False
    #: threads whose connections are not the gateway's (the fakes', the test's own)
    other_threads: set[str] = field(default_factory=set)
    #: ports the gateway may connect to: its providers (fakes) and the bucket
    allowed_ports: set[int] = field(default_factory=set)
    records: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed or not event.startswith("socket."):
            return
        if event == "socket.getaddrinfo":
            host = args[0]
            if isinstance(host, bytes):
                host = host.decode("latin-1")
            if isinstance(host, str) and not _resolves_locally(host):
                with self.lock:
                    self.refused.append(f"DNS {host!r} ({threading.current_thread().name})")
                raise socket.gaierror(socket.EAI_NONAME, f"fuzz tripwire: no DNS for {host!r}")
        elif event == "socket.connect":
            address = args[1]
            if not isinstance(address, tuple) or len(address) < 2:
                return
            host, port = str(address[0]), int(address[1])
            thread = threading.current_thread()
            gateway = (
                thread.name not in self.other_threads and thread is not threading.main_thread()
            )
            loopback = _is_loopback(host)
            if gateway and not (loopback and port in self.allowed_ports):
                with self.lock:
                    self.records.append(f"{host}:{port} (thread {thread.name})")
            if not loopback:
                with self.lock:
                    self.refused.append(f"connect {host}:{port} ({thread.name})")
                raise ConnectionRefusedError(f"fuzz tripwire: {host}:{port} is not loopback")


TRIPWIRE = Tripwire()
_HOOKED = False


def install_tripwire() -> Tripwire:
    """The process's tripwire (the audit hook is added once; hooks cannot be removed)."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(TRIPWIRE.hook)
        _HOOKED = True
    return TRIPWIRE


# ---------------------------------------------------------------------------- canary


class Canary:
    """A loopback server for generated image URLs; records every hit."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/image.png", self._image),
                Route("/latest/meta-data/{rest:path}", self._metadata),
                Route("/redirect", self._redirect),
                Route("/{rest:path}", self._other),
            ]
        )

    def _hit(self, request: Request) -> None:
        with self.lock:
            self.hits.append(f"{request.method} {request.url.path}")

    async def _image(self, request: Request) -> Response:
        self._hit(request)
        return Response(make_png(4, 4, (1, 2, 3)), media_type="image/png")

    async def _metadata(self, request: Request) -> Response:
        self._hit(request)
        return JSONResponse({"AccessKeyId": CANARY_SECRET, "Code": "Success"})

    async def _redirect(self, request: Request) -> Response:
        self._hit(request)
        return RedirectResponse("/latest/meta-data/iam/security-credentials/role", 302)

    async def _other(self, request: Request) -> Response:
        self._hit(request)
        return Response(CANARY_SECRET, media_type="text/plain")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------- requests


class Quiescence:
    """Wraps the gateway's app and counts the HTTP requests it began and ended. The end is
    counted on the event loop's next turn, after whatever uvicorn logs when the app raised,
    so once `ended == begun` every log line of those requests has been written."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.begun = 0
        self.ended = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.begun += 1
        loop = asyncio.get_running_loop()
        try:
            await self.app(scope, receive, send)
        finally:
            loop.call_soon(self._end)

    def _end(self) -> None:
        self.ended += 1

    def settled(self, since: int) -> bool:
        """Whether a request began after `since` began requests, and every request ended."""
        return self.begun > since and self.ended >= self.begun


# ---------------------------------------------------------------------------- logs


class LogCapture(logging.Handler):
    """Log records as (level, logger name, text as printed); the gateway's in Powertools'
    JSON, others with their traceback."""

    LOGGERS = ("", "image-gateway", "uvicorn", "uvicorn.error", "asyncio")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[int, str, str]] = []
        self._mutex = threading.Lock()
        self._seen: dict[int, logging.LogRecord] = {}
        self.plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
        self.powertools = gateway_logger.registered_formatter

    def emit(self, record: logging.LogRecord) -> None:
        with self._mutex:
            if id(record) in self._seen:
                return  # the same record through a second logger
            self._seen[id(record)] = record
            if len(self._seen) > 2000:
                self._seen.pop(next(iter(self._seen)))
        try:
            formatter = self.powertools if record.name == "image-gateway" else self.plain
            text = formatter.format(record)
        except Exception as exc:  # a record that cannot be printed is itself a finding
            text = f"Traceback: unprintable log record {record.msg!r}: {exc!r}"
        with self._mutex:
            self.lines.append((record.levelno, record.name, text))

    def attach(self) -> None:
        for name in self.LOGGERS:
            target = logging.getLogger(name)
            if self not in target.handlers:
                target.addHandler(self)

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def since(self, index: int) -> list[tuple[int, str, str]]:
        with self._mutex:
            return self.lines[index:]
