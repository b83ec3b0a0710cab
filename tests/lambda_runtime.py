"""The Lambda Python runtime, without Docker, for booting the `sam build` output.

Lambda, with the Web Adapter layer, runs the API function's start script (`run.sh`) from
`LAMBDA_TASK_ROOT` with the layers under /opt (read-only). This module gives what that needs
here:

- a clean Python 3.13 (a venv without pip made from pyenv's 3.13: the runtime's version) whose
  site-packages holds only what the Lambda runtime ships besides the standard library (boto3
  and its dependencies, symlinked from the dev venv, bytecode included, as the runtime has it);
- the function's environment: Lambda's own variables, the template's variables (parameter
  defaults for `Ref`s) with loopback stand-ins for the outside world, the built layer's
  `python/` where /opt/python would be, and bytecode writing off (/opt cannot be written).

Shared by the deployed-build tests (tests/e2e) and the benchmarks (bench/), so both boot the
artifact the same way. Failures are `RuntimeError`s that say what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from lambdahost.build import RUNTIME_PACKAGES, InvokeError, lambda_python
from lambdahost.build import python313 as _python313

__all__ = [
    "FUNCTION",
    "LAYER",
    "RUNTIME_PACKAGES",
    "STAND_INS",
    "lambda_environment",
    "memory_default",
    "python313",
    "runtime_python",
    "template_environment",
]

FUNCTION = "ApiFunction"
LAYER = "CommonLayer"

#: environment values that must not reach the real world, whatever the template says
STAND_INS: dict[str, str] = {
    "BUCKET": "imagegw-e2e-uploads",
    # Nothing listens on the discard port: a provider call fails fast instead of leaving loopback.
    "MODELSCOPE_BASE_URL": "http://127.0.0.1:9/v1",
    "SILICONFLOW_BASE_URL": "http://127.0.0.1:9/v1",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    "GENERATION_TIMEOUT": "30",
    # durable jobs: made-up ARNs (nothing here starts a job on the build)
    "JOB_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:e2e-image-jobs",
    "JOB_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
    # the metrics' namespace names the stack (`!Sub`), which a build alone has not got
    "POWERTOOLS_METRICS_NAMESPACE": "ImageGateway/e2e-stack",
    # gateway keys (mixed mode by default): made-up names; the tests here send client tokens,
    # which are passed through without touching either
    "ACCESS_TABLE": "imagegw-e2e-access",
    "ACCESS_SECRET": "arn:aws:secretsmanager:us-east-1:123456789012:secret:e2e-access",
    "WEBHOOK_SECRET": "arn:aws:secretsmanager:us-east-1:123456789012:secret:e2e-webhooks",
}


def python313() -> Path:
    """A CPython 3.13 interpreter (`lambdahost.build.python313`)."""
    try:
        return _python313()
    except InvokeError as exc:
        raise RuntimeError(str(exc)) from None


def runtime_python(where: Path) -> Path:
    """A clean 3.13 venv in `where` whose site-packages holds only the Lambda runtime's
    packages (`lambdahost.build.lambda_python`); its bin directory (put it first on PATH:
    run.sh runs `python`)."""
    try:
        return lambda_python(where / "runtime").parent
    except InvokeError as exc:
        raise RuntimeError(str(exc)) from None


def template_environment(
    template: Mapping[str, Any], stand_ins: Mapping[str, str] = STAND_INS
) -> dict[str, str]:
    """The API function's environment variables from the built template.

    `Ref`s to parameters take the parameter's default; values not decidable offline (Refs to
    resources, other intrinsics) must have a stand-in.
    """
    parameters: Mapping[str, Any] = template.get("Parameters") or {}
    function = template["Resources"][FUNCTION]["Properties"]
    variables: Mapping[str, Any] = function.get("Environment", {}).get("Variables", {})
    env: dict[str, str] = {}
    undecided: list[str] = []
    for name, value in variables.items():
        if name in stand_ins:
            env[name] = stand_ins[name]
        elif isinstance(value, str | int | float | bool):
            env[name] = str(value)
        elif isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
            default = parameters[value["Ref"]].get("Default")
            if default is None:
                undecided.append(name)
            else:
                env[name] = str(default)
        else:
            undecided.append(name)
    if undecided:
        raise RuntimeError(f"give these template variables a stand-in: {undecided}")
    # the providers' base URLs are declared by the providers, not in the template: their
    # stand-ins apply whatever the template says
    env.update({name: value for name, value in stand_ins.items() if name.endswith("_BASE_URL")})
    return env


def memory_default(build: Path) -> int:
    """The template's FunctionMemory default (MB): what AWS_LAMBDA_FUNCTION_MEMORY_SIZE says."""
    template = yaml.safe_load((build / "template.yaml").read_text())
    return int(template["Parameters"]["FunctionMemory"]["Default"])


def lambda_environment(
    build: Path,
    python_bin: Path,
    runtime_dir: Path,
    port: int,
    stand_ins: Mapping[str, str] = STAND_INS,
) -> dict[str, str]:
    """Everything the API function's process gets on Lambda, with stand-ins."""
    template = yaml.safe_load((build / "template.yaml").read_text())
    task_root = build / FUNCTION
    env = {
        # What Lambda sets for every function (credentials are fakes: no AWS call is made).
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SESSION_TOKEN": "e2e-session-token",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "AWS_LAMBDA_FUNCTION_NAME": "lambda-image-gateway-api",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_default(build)),
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/lambda-image-gateway-api",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2025/11/22/[$LATEST]e2e",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(runtime_dir),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
        # /opt/python stand-in; run.sh appends /opt/python and LAMBDA_RUNTIME_DIR after it.
        "PYTHONPATH": str(build / LAYER / "python"),
        "PYTHONNOUSERSITE": "1",
        # /opt is read-only on Lambda: only the bytecode the build ships is there
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(template_environment(template, stand_ins))
    env["PORT"] = str(port)
    return env
