#!/usr/bin/env python3
"""Stand-in for the AWS Lambda Web Adapter layer's `/opt/bootstrap` (test code), buffered.

The real adapter (awslabs/aws-lambda-web-adapter) is a Rust extension published as a public
layer in AWS's own account; the emulator's free edition cannot use layers of other accounts.
The emulator level publishes this file, as `bootstrap`, in a layer of its own (with the
`lambdahost` modules it imports) and passes its ARN as the template's WebAdapterLayerArn. It
does the adapter's job with `lambdahost.adapter` (as `make invoke` does): starts the function's
handler script (`_HANDLER`, `run.sh`) from the task root on a free loopback port, waits until
the readiness path (AWS_LWA_READINESS_CHECK_PATH) answers below 500, then turns each
invocation's HTTP event (Function URL or REST API) into an HTTP request to the app and the
app's answer into the proxy response.

Unlike it, the answer is buffered: the emulator has no response streaming, so
AWS_LWA_INVOKE_MODE=response_stream is not honoured. It speaks the host executor's protocol
(`lambdahost.runtime.serve`), so it only runs under the host executor.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# (the bootstrap's own folder, the layer's root, is on sys.path: it runs as a script)
from lambdahost.adapter import free_port, send, start_app, stop_app, wait_ready
from lambdahost.events import lambda_response
from lambdahost.runtime import error_payload, serve

READINESS_PATH = os.environ.get("AWS_LWA_READINESS_CHECK_PATH", "/")


def main() -> None:
    port = free_port()
    root = Path(os.environ["LAMBDA_TASK_ROOT"])
    app = start_app(root, os.environ["_HANDLER"], os.environ, port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def handle(request: dict[str, Any]) -> tuple[bool, str]:
        timeout = max(request["deadline_ms"] / 1000 - time.time(), 1.0)
        try:
            event = json.loads(request["payload"])
            answer = send(event, port, timeout)
            body = b"".join(answer.chunks)
            return True, json.dumps(lambda_response(event, answer.status, answer.headers, body))
        except Exception as exc:
            return False, error_payload(exc, request["request_id"])

    try:
        serve(lambda: wait_ready(app, port, READINESS_PATH), handle)
    finally:
        stop_app(app)


if __name__ == "__main__":
    main()
