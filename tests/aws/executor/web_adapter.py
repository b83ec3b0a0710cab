#!/usr/bin/env python3
"""Stand-in for the AWS Lambda Web Adapter layer's `/opt/bootstrap` (test code), buffered.

The real adapter (awslabs/aws-lambda-web-adapter) is a Rust extension published as a public
layer in AWS's own account; the emulator's free edition cannot use layers of other accounts.
The emulator level publishes this file, as `bootstrap`, in a layer of its own (with
`lambda_events.py` and `host_runtime.py`) and passes its ARN as the template's
WebAdapterLayerArn. Like the adapter, it starts the function's handler script (`_HANDLER`,
`run.sh`) from the task root, waits until the readiness path (AWS_LWA_READINESS_CHECK_PATH) on
PORT answers below 500, then turns each invocation's HTTP event (Function URL or REST API) into
an HTTP request to the app (`lambda_events.to_http_request`, the adapter's mapping) and the
app's answer into the proxy response.

Unlike it, the answer is buffered: the emulator has no response streaming, so
AWS_LWA_INVOKE_MODE=response_stream is not honoured. And the app gets a free loopback port in
PORT instead of the configured one: on Lambda each execution environment has a network of its
own, on a host they share one (two environments, or anything else on the machine, would
collide on 8000). It speaks the host executor's protocol (`host_runtime.serve`), so it only
runs under the host executor.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (the bootstrap's own folder, the layer's root, is on sys.path: it runs as a script)
from host_runtime import error_payload, serve

from lambda_events import to_http_request

READINESS_PATH = os.environ.get("AWS_LWA_READINESS_CHECK_PATH", "/")
READY_TIMEOUT = 20.0
#: hop-by-hop headers the adapter does not hand back
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding"})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PORT = _free_port()


def _connection(timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)


def _start() -> subprocess.Popen[bytes]:
    root = Path(os.environ["LAMBDA_TASK_ROOT"])
    env = {**os.environ, "PORT": str(PORT)}
    env.pop("AWS_LWA_PORT", None)
    return subprocess.Popen([str(root / os.environ["_HANDLER"])], cwd=root, env=env)


def _wait_ready(app: subprocess.Popen[bytes]) -> str | None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if app.poll() is not None:
            return f"the handler script exited with {app.returncode} before it was ready"
        try:
            connection = _connection(1.0)
            connection.request("GET", READINESS_PATH)
            if connection.getresponse().status < 500:
                return None
        except OSError:
            time.sleep(0.1)
    return f"{READINESS_PATH} on port {PORT} did not answer within {READY_TIMEOUT:.0f} s"


def _forward(event: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = to_http_request(event)
    connection = _connection(timeout)
    connection.request(request.method, request.target, body=request.body, headers=request.headers)
    response = connection.getresponse()
    body = response.read()
    pairs = [(k.lower(), v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
    answer: dict[str, Any] = {
        "statusCode": response.status,
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }
    if event.get("version") == "2.0":  # Function URL / HTTP API: payload format 2.0
        headers: dict[str, str] = {}
        for name, value in pairs:
            if name != "set-cookie":
                headers[name] = f"{headers[name]},{value}" if name in headers else value
        answer["headers"] = headers
        answer["cookies"] = [value for name, value in pairs if name == "set-cookie"]
    else:  # REST API: payload format 1.0
        multi: dict[str, list[str]] = {}
        for name, value in pairs:
            multi.setdefault(name, []).append(value)
        answer["multiValueHeaders"] = multi
    return answer


def main() -> None:
    app = _start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def handle(request: dict[str, Any]) -> tuple[bool, str]:
        timeout = max(request["deadline_ms"] / 1000 - time.time(), 1.0)
        try:
            return True, json.dumps(_forward(json.loads(request["payload"]), timeout))
        except Exception as exc:
            return False, error_payload(exc, request["request_id"])

    try:
        serve(lambda: _wait_ready(app), handle)
    finally:
        app.terminate()
        try:
            app.wait(timeout=5)
        except subprocess.TimeoutExpired:
            app.kill()


if __name__ == "__main__":
    main()
