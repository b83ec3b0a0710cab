"""A server on a loopback socket for what uvicorn will not do on purpose (close or reset a
connection at a chosen moment, answer raw bytes, speak TLS with a test certificate): it accepts
connections in a thread and serves each in a thread of its own (`serve`, for a subclass)."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class LoopbackServer:
    """Listens on 127.0.0.1 (`port`, `url`) while used as a context manager; counts the
    connections it accepted."""

    def __init__(self, backlog: int = 64) -> None:
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self._listener.settimeout(0.05)  # so that the accepting thread sees the stop
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._thread.join(2)
        self._listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                # closed by a stop this thread was too slow to see (a loaded machine), or a
                # connection the client dropped before it was accepted
                if self.stopping.is_set():
                    return
                continue
            connection.settimeout(5)
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        # the client going away mid-answer is not the server's failure: the tests assert what
        # the client saw
        with contextlib.suppress(ConnectionError):
            self.serve(connection)

    def serve(self, connection: socket.socket) -> None:
        raise NotImplementedError
