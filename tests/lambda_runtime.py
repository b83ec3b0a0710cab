"""The Lambda Python runtime, without Docker, for booting the `sam build` output.

Lambda, with the Web Adapter layer, runs the API function's start script (`run.sh`) from
`LAMBDA_TASK_ROOT` with the layers under /opt (read-only). This module gives what that needs
here:

- a clean Python 3.13 (a venv without pip made from pyenv's 3.13: the runtime's version) whose
  site-packages holds only what the Lambda runtime ships besides the standard library (boto3
  and its dependencies, symlinked from the dev venv, bytecode included, as the runtime has it);
- the function's environment, built by the same code as `make invoke`'s
  (`tools/lambdahost/build.py`): Lambda's own variables, the template's variables (parameter
  defaults for `Ref`s) with loopback stand-ins for the outside world, the built layer's
  `python/` where /opt/python would be, and bytecode writing off (/opt cannot be written).

Shared by the deployed-build tests (tests/e2e) and the benchmarks (bench/), so both boot the
artifact the same way. Failures are `RuntimeError`s that say what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from lambdahost.build import (
    RUNTIME_PACKAGES,
    InvokeError,
    Resolver,
    Template,
    lambda_python,
    lambda_variables,
    resolve_variables,
)
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

#: the function role's credentials, as Lambda sets them (fakes)
CREDENTIALS: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "e2e-session-token",
}
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
    # batches: the same (nothing here starts one)
    "BATCH_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:e2e-batches",
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


def template_environment(build: Path, stand_ins: Mapping[str, str] = STAND_INS) -> dict[str, str]:
    """The API function's variables from the built template, decided as `make invoke` decides
    them (`lambdahost.build`: the Globals merged in, `Ref`s to parameters as their defaults,
    conditions evaluated); a variable with a stand-in takes it, and one that needs a deployed
    resource must have one. The providers' base URLs take their stand-ins whatever the
    template says (the providers declare them, not the template)."""
    try:
        template = Template(build)
        function = template.function(FUNCTION)
        resolver = Resolver(
            parameters=template.parameter_defaults(), refs={}, conditions=template.conditions
        )
        own = {k: v for k, v in function.variables.items() if k not in stand_ins}
        env = resolve_variables(replace(function, variables=own), resolver)
    except InvokeError as exc:
        raise RuntimeError(f"give these template variables a stand-in: {exc}") from None
    env.update({k: v for k, v in stand_ins.items() if k in function.variables})
    env.update({k: v for k, v in stand_ins.items() if k.endswith("_BASE_URL")})
    return env


def memory_default(build: Path) -> int:
    """The template's FunctionMemory default (MB): what AWS_LAMBDA_FUNCTION_MEMORY_SIZE says."""
    return Template(build).function(FUNCTION).memory


def lambda_environment(
    build: Path,
    python_bin: Path,
    runtime_dir: Path,
    port: int,
    stand_ins: Mapping[str, str] = STAND_INS,
) -> dict[str, str]:
    """Everything the API function's process gets on Lambda (`lambdahost.build.lambda_variables`,
    as `make invoke` gives it), with stand-ins; credentials are fakes: no AWS call is made."""
    function = Template(build).function(FUNCTION)
    env = lambda_variables(
        function,
        python_bin / "python",
        runtime_dir,
        "us-east-1",
        CREDENTIALS,
        name="lambda-image-gateway-api",
    )
    env.update(template_environment(build, stand_ins))
    env["PORT"] = str(port)
    return env
