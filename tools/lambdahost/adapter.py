"""The AWS Lambda Web Adapter's job, on this host: start the app, wait until it is ready, turn an
event into an HTTP request to it and its answer back into Lambda's (standard library only: the
emulator level's stub adapter layer carries this file).

The real adapter (awslabs/aws-lambda-web-adapter, a Rust extension run as /opt/bootstrap through
AWS_LAMBDA_EXEC_WRAPPER) starts the function's handler script (`run.sh`) from the task root,
polls AWS_LWA_READINESS_CHECK_PATH on PORT until it answers below 500, then forwards each
invocation (`events.to_http_request`). Here the app gets a free loopback port in PORT instead of
the configured one: on Lambda each execution environment has a network of its own, on a host
they share one (`make run`, or another function, may hold 8000).

`send` gives the answer as it comes: its status and headers, then its body chunk by chunk, so a
caller can print a `response_stream` answer as the app writes it (`make invoke`) or buffer it
(the emulator's stub, which has no response streaming).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lambdahost.events import to_http_request

READY_TIMEOUT = 20.0
CHUNK = 1 << 16


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_app(
    task_root: Path,
    handler: str,
    env: Mapping[str, str],
    port: int,
    output: IO[Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start the function's handler script (`_HANDLER`, run.sh) as the adapter does, listening
    on `port`."""
    app_env = {**env, "PORT": str(port)}
    app_env.pop("AWS_LWA_PORT", None)
    return subprocess.Popen(
        [str(task_root / handler)],
        cwd=task_root,
        env=app_env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
    )


def wait_ready(
    app: subprocess.Popen[bytes], port: int, path: str, timeout: float = READY_TIMEOUT
) -> str | None:
    """Poll the readiness path until it answers below 500; None when ready, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.poll() is not None:
            return f"the handler script exited with {app.returncode} before it was ready"
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            connection.request("GET", path)
            if connection.getresponse().status < 500:
                return None
        except OSError:
            time.sleep(0.1)
    return f"{path} on port {port} did not answer within {timeout:.0f} s"


def stop_app(app: subprocess.Popen[bytes]) -> None:
    """SIGTERM the app (as Lambda does at shutdown), SIGKILL it if it lingers."""
    if app.poll() is not None:
        return
    app.terminate()
    try:
        app.wait(timeout=5)
    except subprocess.TimeoutExpired:
        app.kill()
        app.wait(timeout=5)


@dataclass
class Answer:
    """The app's answer to a forwarded event: status and headers at once, the body as it
    comes (`chunks`, once)."""

    status: int
    headers: list[tuple[str, str]]
    chunks: Iterator[bytes]


def send(event: Mapping[str, Any], port: int, timeout: float) -> Answer:
    """Forward `event` to the app on `port` as the adapter does; `timeout` bounds each wait
    for the app."""
    request = to_http_request(event)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request(request.method, request.target, body=request.body, headers=request.headers)
    response = connection.getresponse()

    def chunks() -> Iterator[bytes]:
        try:
            while data := response.read1(CHUNK):
                yield data
        finally:
            connection.close()

    return Answer(response.status, response.getheaders(), chunks())
