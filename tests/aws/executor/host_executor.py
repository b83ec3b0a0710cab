"""A Lambda executor for the emulator that runs Python functions as host processes (test code).

The emulator's free edition (localstack-core) can only run Lambda functions in Docker
containers, which this machine and CI do not have. This plugin replaces that executor: each
execution environment is one process of a given Python 3.13 (HOST_EXECUTOR_PYTHON: the test
harness makes one that holds only what the Lambda runtime ships) with the function's code as the
task root and its layers' `python/` folders where /opt/python would be, and the environment the
emulator computed for the function (its variables, role credentials, AWS_ENDPOINT_URL).

- A plain handler (`app.lambda_handler`) runs under `lambdahost/runtime.py` (tools/), which
  imports it once and calls it per invocation, like the runtime's own bootstrap; the process
  stays warm. `lambdahost.process.RuntimeProcess` drives it (as `make invoke` does).
- A function with `AWS_LAMBDA_EXEC_WRAPPER=/opt/...` runs that file from its layers instead (the
  stub Web Adapter layer's `bootstrap`), as Lambda does.

The process and the executor speak JSON lines (`lambdahost.process`): invocations on its stdin,
answers on a pipe whose descriptor is in HOST_EXECUTOR_FD; everything the function prints goes
to a log file under HOST_EXECUTOR_LOG_DIR. An invocation that outlives the function's timeout
kills the process and fails with `Sandbox.Timedout`. HOST_EXECUTOR_XRAY_DAEMON (host:port), when
set, replaces the X-Ray daemon address the emulator gives (nothing listens there on a host).

It is registered as the `host` executor through `host_executor.dist-info/entry_points.txt`
beside it (importlib.metadata finds it with this folder on PYTHONPATH); the emulator uses it
with LAMBDA_RUNTIME_EXECUTOR=host. It is not a sandbox: the functions run as this user.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from localstack import config
from localstack.services.lambda_.invocation.lambda_models import (
    FunctionVersion,
    InvocationResult,
)
from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin
from localstack.services.lambda_.invocation.runtime_executor import (
    LambdaRuntimeException,
    RuntimeExecutor,
)

from lambdahost.process import RuntimeProcess, request, timed_out

LOG = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
#: the runtime side of the protocol (`lambdahost`, under tools/, is on the emulator's PYTHONPATH)
RUNTIME = HERE.parents[2] / "tools" / "lambdahost" / "runtime.py"
#: seconds an environment may take to import its handler (Lambda's init phase allows 10)
INIT_TIMEOUT = 30.0


def _python() -> str:
    python = os.environ.get("HOST_EXECUTOR_PYTHON", "")
    if not python or not os.access(python, os.X_OK):
        raise LambdaRuntimeException(f"HOST_EXECUTOR_PYTHON is not an interpreter: {python!r}")
    return python


class HostRuntimeExecutor(RuntimeExecutor):
    """One execution environment: a warm host process serving one invocation at a time."""

    def __init__(self, id: str, function_version: FunctionVersion) -> None:
        super().__init__(id=id, function_version=function_version)
        self.runtime: RuntimeProcess | None = None
        self.log = Path(os.environ.get("HOST_EXECUTOR_LOG_DIR", "/tmp")) / (
            f"{function_version.id.function_name}-{id}.log"
        )
        self.lock = threading.Lock()

    # the environment's process -------------------------------------------------------------

    def _layers(self) -> list[Path]:
        return [
            Path(layer.code.get_unzipped_code_location())
            for layer in self.function_version.config.layers
            if layer.code is not None
        ]

    def _opt(self, path: str) -> Path:
        """A path under /opt: the file of that name in the last layer holding it."""
        relative = path.removeprefix("/opt/")
        for layer in reversed(self._layers()):
            if (layer / relative).exists():
                return layer / relative
        raise LambdaRuntimeException(f"no layer of the function holds {path}")

    def _environment(self, env_vars: dict[str, Any]) -> dict[str, str]:
        code = Path(self.function_version.config.code.get_unzipped_code_location())
        python = _python()
        env = {key: str(value) for key, value in env_vars.items()}
        env.update(
            {
                "LAMBDA_TASK_ROOT": str(code),
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{self.function_version.config.runtime}",
                "PATH": f"{Path(python).parent}:/usr/local/bin:/usr/bin:/bin",
                # the task root, then the layers where /opt/python would be
                "PYTHONPATH": ":".join(
                    [str(code), *(str(layer / "python") for layer in self._layers())]
                ),
                "PYTHONNOUSERSITE": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
                "LANG": "en_US.UTF-8",
            }
        )
        daemon = os.environ.get("HOST_EXECUTOR_XRAY_DAEMON")
        if daemon:
            host, _, port = daemon.rpartition(":")
            env["AWS_XRAY_DAEMON_ADDRESS"] = daemon
            env["_AWS_XRAY_DAEMON_ADDRESS"] = host
            env["_AWS_XRAY_DAEMON_PORT"] = port
        return env

    def start(self, env_vars: dict[str, str]) -> None:
        env = self._environment(env_vars)
        wrapper = env.get("AWS_LAMBDA_EXEC_WRAPPER")
        command = [str(self._opt(wrapper))] if wrapper else [_python(), str(RUNTIME)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            runtime = RuntimeProcess(command, env, Path(env["LAMBDA_TASK_ROOT"]), log)
            error = runtime.start(INIT_TIMEOUT)
        if error is not None:
            raise LambdaRuntimeException(
                f"{self.function_version.id.function_name} failed to start: "
                f"{error}\n{self.get_logs()[-2000:]}"
            )
        self.runtime = runtime

    def stop(self) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.stop()

    # RuntimeExecutor ---------------------------------------------------------------------

    def invoke(self, payload: dict[str, str]) -> InvocationResult:
        request_id = payload["invoke-id"]
        timeout = float(self.function_version.config.timeout)
        invocation = request(
            request_id,
            payload["invoked-function-arn"],
            payload["payload"],
            timeout,
            payload.get("trace-id"),
        )
        with self.lock:
            runtime = self.runtime
            if runtime is None:
                raise LambdaRuntimeException("the execution environment is not running")
            logged = self._log_size()
            answer = runtime.invoke(invocation, timeout + 1)
        if answer is None:
            error = timed_out(timeout, runtime.exited())
            self.stop()
            return InvocationResult(
                request_id, json.dumps(error).encode(), True, self._log_since(logged)
            )
        return InvocationResult(
            request_id, answer["payload"].encode(), not answer["ok"], self._log_since(logged)
        )

    def _log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        """What the process printed from `offset` on (one invocation's log)."""
        try:
            with self.log.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def get_address(self) -> str:
        return "127.0.0.1"

    def get_endpoint_from_executor(self) -> str:
        # the functions reach the emulator where it listens (loopback)
        return config.GATEWAY_LISTEN[0].host

    def get_runtime_endpoint(self) -> str:
        # only the Docker executor's init binary calls back; nothing here does
        return f"http://{self.get_endpoint_from_executor()}:{config.GATEWAY_LISTEN[0].port}"

    def get_logs(self) -> str:
        return self._log_since(0)

    @classmethod
    def prepare_version(cls, function_version: FunctionVersion) -> None:
        if function_version.config.code is None:
            raise LambdaRuntimeException("container images need the Docker executor")
        function_version.config.code.prepare_for_execution()
        for layer in function_version.config.layers:
            if layer.code is not None:
                layer.code.prepare_for_execution()

    @classmethod
    def cleanup_version(cls, function_version: FunctionVersion) -> None:
        pass

    @classmethod
    def validate_environment(cls) -> bool:
        try:
            _python()
        except LambdaRuntimeException as exc:
            LOG.warning("%s", exc)
            return False
        return True


class HostRuntimeExecutorPlugin(RuntimeExecutorPlugin):
    name = "host"

    def load(self, *args: Any, **kwargs: Any) -> type[HostRuntimeExecutor]:
        return HostRuntimeExecutor
