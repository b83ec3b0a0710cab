"""Run an ASGI app under uvicorn on a free loopback port in a daemon thread, for tests."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Literal

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

LifespanMode = Literal["auto", "on", "off"]
#: uvicorn's event loop: "auto" is uvloop when installed (the dev venv has it, as the layer does)
LoopMode = Literal["auto", "asyncio"]


class ServerThread:
    """Serve ``app`` on ``127.0.0.1`` at an OS-chosen port; ``url`` is ``http://127.0.0.1:PORT``.
    ``backlog`` is the listen backlog (uvicorn's default unless given).

    ``start()`` returns once the server accepts connections; ``stop()`` asks uvicorn to exit and
    joins the thread. Also usable as a context manager.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifespan: LifespanMode = "off",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
        backlog: int = 2048,
        loop: LoopMode = "auto",
    ) -> None:
        self.app = app
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then;
        # without it every keep-alive answer waits ~40 ms for a delayed ACK
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            ws="none",
            lifespan=lifespan,
            timeout_graceful_shutdown=1,
            # connections the kernel completes before the app accepts them (listen(2)); a
            # small one stands in for a busy provider that refuses or drops new connections
            backlog=backlog,
            loop=loop,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self) -> ServerThread:
        """Start the thread and wait until the server is accepting connections."""
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server thread exited during startup: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server at {self.url} did not start in time")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit, join the thread and release the socket."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(self.shutdown_timeout)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SwappableApp:
    """An ASGI app that forwards to ``self.app``, so one server can host a fresh fake per test."""

    def __init__(self, app: ASGIApp | None = None) -> None:
        self.app = app
        #: requests the app is still serving (an answer's last bytes go out before its app
        #: returns, e.g. before a gateway writes the request's log line)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            raise RuntimeError("SwappableApp has no app to forward to")
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def settle(self, timeout: float = 10.0) -> None:
        """Wait (at most `timeout` seconds) until no request is being served, so what a test's
        requests still do after their answers (log lines, clean-up) ends inside that test."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
