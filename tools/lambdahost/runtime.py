"""What Lambda's Python bootstrap does, as a host process (`make invoke`, and the emulator
level's host executor `tests/aws/executor/host_executor.py`; their side is `process.py`).

Run as a script, it imports the function's handler (`_HANDLER`, e.g. `app.lambda_handler`) from
the task root once, then calls it for each invocation with a Lambda context, setting
`_X_AMZN_TRACE_ID` per invocation as the runtime does (the X-Ray SDK reads it). A handler's
exception becomes Lambda's error payload (`errorType` is the exception's class name: Step
Functions matches its retriers on it).

`serve` is the protocol, shared with the emulator's stub Web Adapter: invocations arrive as JSON
lines on stdin, each answer goes as one JSON line to the descriptor in HOST_EXECUTOR_FD; the
process ends with its input. Nothing but the standard library (it runs on the Lambda runtime's
Python, as a script: `python runtime.py`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


class Context:
    """The parts of Lambda's context object that handlers and Powertools read."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.aws_request_id = request["request_id"]
        self.invoked_function_arn = request["function_arn"]
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = int(request["deadline_ms"])

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)


def error_payload(exc: BaseException, request_id: str = "") -> str:
    """Lambda's error shape for an exception."""
    return json.dumps(
        {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "requestId": request_id,
            "stackTrace": traceback.format_tb(exc.__traceback__),
        }
    )


def serve(
    ready: Callable[[], str | None], handle: Callable[[dict[str, Any]], tuple[bool, str]]
) -> None:
    """Report `ready()` (None, or an init error), then answer invocations until stdin ends."""
    channel = os.fdopen(int(os.environ["HOST_EXECUTOR_FD"]), "w")

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    error = ready()
    send({"ready": error is None, "error": error})
    if error is not None:
        return
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("trace_id"):
            os.environ["_X_AMZN_TRACE_ID"] = request["trace_id"]
        ok, payload = handle(request)
        sys.stdout.flush()
        sys.stderr.flush()
        send({"ok": ok, "payload": payload})


def main() -> None:
    handler: Callable[[Any, Context], Any] | None = None

    def load() -> str | None:
        nonlocal handler
        module, _, name = os.environ["_HANDLER"].rpartition(".")
        try:
            handler = getattr(importlib.import_module(module), name)
        except Exception as exc:
            traceback.print_exc()
            return f"Runtime.ImportModuleError: {exc}"
        return None

    def handle(request: dict[str, Any]) -> tuple[bool, str]:
        assert handler is not None
        try:
            result = handler(json.loads(request["payload"] or "null"), Context(request))
            return True, json.dumps(result)
        except Exception as exc:
            traceback.print_exc()
            return False, error_payload(exc, request["request_id"])

    serve(load, handle)


if __name__ == "__main__":
    main()
