"""One execution environment as a host process: the caller's side of `runtime.py`'s protocol.

The process (`runtime.py` for a plain handler, or a Web Adapter stand-in speaking the same
protocol) reports once that it is ready, then answers invocations: each request goes as a JSON
line on its stdin, each answer comes as a JSON line on a pipe whose descriptor it finds in
HOST_EXECUTOR_FD; it ends with its input. `make invoke` and the emulator level's host executor
(`tests/aws/executor/host_executor.py`) both drive functions through this class. Standard
library only (the emulator runs it in its own virtualenv).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

#: the variable naming the answer pipe's descriptor (`runtime.serve` reads it)
ANSWER_FD = "HOST_EXECUTOR_FD"
#: seconds a function may take to import its handler (Lambda's init phase allows 10)
INIT_TIMEOUT = 30.0


class StartError(Exception):
    """The process did not report ready; the message says why (its output says more)."""


def request(
    request_id: str,
    function_arn: str,
    payload: str,
    timeout: float,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """An invocation as `runtime.serve` reads it: the event as JSON text, and the deadline."""
    return {
        "request_id": request_id,
        "function_arn": function_arn,
        "payload": payload,
        "trace_id": trace_id,
        "deadline_ms": int((time.time() + timeout) * 1000),
    }


def timed_out(timeout: float, exited: bool) -> dict[str, str]:
    """Lambda's error payload for an invocation that got no answer."""
    if exited:
        return {"errorType": "Runtime.ExitError", "errorMessage": "the runtime exited"}
    return {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"Task timed out after {timeout:.2f} seconds",
    }


class RuntimeProcess:
    """A process speaking the protocol: `start` it, `invoke` it, `stop` it."""

    def __init__(
        self, command: Sequence[str], env: Mapping[str, str], cwd: Path, output: IO[Any] | int
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None
        self.answers: int | None = None

    def start(self, timeout: float) -> str | None:
        """Start the process and wait for its ready report; None when ready, else why not
        (the process is stopped then)."""
        read_end, write_end = os.pipe()
        self.answers = read_end
        try:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env={**self.env, ANSWER_FD: str(write_end)},
                stdin=subprocess.PIPE,
                stdout=self.output,
                stderr=subprocess.STDOUT,
                pass_fds=(write_end,),
            )
        except OSError:
            self.stop()
            raise
        finally:
            os.close(write_end)
        ready = self._answer(timeout)
        if ready is None or not ready.get("ready"):
            self.stop()
            return str((ready or {}).get("error") or "it exited or did not report in time")
        return None

    def invoke(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send one invocation; the answer (`ok`, `payload`), or None when the process exited or
        did not answer within `timeout` seconds."""
        process = self.process
        if process is None or process.stdin is None:
            return None
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            return self._answer(timeout)
        except (OSError, ValueError):  # it exited, or was stopped meanwhile
            return None

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def stop(self) -> None:
        """End the process (its input first: the runtime exits at its end), then close."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            if process.stdin:
                process.stdin.close()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.answers is not None:
            os.close(self.answers)
            self.answers = None

    def _answer(self, timeout: float) -> dict[str, Any] | None:
        """The process's next JSON line; None when it exited or the time ran out."""
        if self.answers is None:
            return None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.answers], [], [], remaining)[0]:
                return None
            chunk = os.read(self.answers, 1 << 20)
            if not chunk:
                return None
            line += chunk
        answer: dict[str, Any] = json.loads(line)
        return answer


def invoke_once(
    runtime: RuntimeProcess,
    event: Any,
    function_arn: str,
    timeout: float,
    trace_id: str | None = None,
) -> tuple[bool, Any]:
    """Start `runtime`, invoke it once with `event`, stop it: whether the function succeeded,
    and its result or Lambda's error payload. Raises StartError when it did not start."""
    error = runtime.start(INIT_TIMEOUT)
    if error is not None:
        raise StartError(error)
    try:
        invocation = request(str(uuid.uuid4()), function_arn, json.dumps(event), timeout, trace_id)
        answer = runtime.invoke(invocation, timeout + 1)
        if answer is None:
            return False, timed_out(timeout, runtime.exited())
        return bool(answer["ok"]), json.loads(answer["payload"])
    finally:
        runtime.stop()
