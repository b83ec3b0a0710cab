"""A stand-in for the X-Ray daemon: it keeps what the X-Ray SDK sends it over UDP on loopback.

The SDK sends each (sub)segment as one datagram, a JSON header line
(`{"format": "json", "version": 1}`) and the entity's JSON document; in Lambda it streams each
subsegment as it ends. Point the SDK at `address` with AWS_XRAY_DAEMON_ADDRESS.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from types import TracebackType
from typing import Any

HEADER = {"format": "json", "version": 1}


class XRayDaemon:
    """Collects the entities sent to `address` (`host:port`); use as a context manager."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        host, port = self._socket.getsockname()[:2]
        self.address = f"{host}:{port}"
        self.datagrams: list[bytes] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="xray-daemon", daemon=True)

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self._socket.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams.append(data)

    def settle(self, quiet: float = 0.3, timeout: float = 5.0) -> None:
        """Wait until nothing has arrived for `quiet` seconds (datagrams sent just before may
        still be on their way to the receiving thread), at most `timeout`."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            with self._lock:
                count = len(self.datagrams)
            if count == seen:
                return
            seen = count
            time.sleep(quiet)

    def entities(self) -> list[dict[str, Any]]:
        """Every entity received so far, in arrival order (each datagram checked for the
        header the daemon requires)."""
        with self._lock:
            datagrams = list(self.datagrams)
        found = []
        for data in datagrams:
            header, _, body = data.decode().partition("\n")
            assert json.loads(header) == HEADER, header
            found.append(json.loads(body))
        return found

    def raw(self) -> str:
        """Everything received, as text (to search for what must not be there)."""
        with self._lock:
            return "\n".join(d.decode(errors="replace") for d in self.datagrams)

    def __enter__(self) -> XRayDaemon:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join(2)
        self._socket.close()


def handler_subsegments(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Powertools' `## lambda_handler` subsegments among `entities`."""
    return [e for e in entities if e.get("name", "").startswith("## ")]


def http_subsegments(entities: list[dict[str, Any]], url_part: str) -> list[dict[str, Any]]:
    """Subsegments of HTTP requests whose URL contains `url_part`."""
    return [
        e
        for e in entities
        if e.get("namespace") == "remote"
        and url_part in e.get("http", {}).get("request", {}).get("url", "")
    ]
