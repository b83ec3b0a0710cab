"""`make invoke`: one function of the `sam build` output invoked with one event, the way the
Lambda runtime would run it, without Docker.

The function runs as a process of a clean CPython 3.13 (`build.lambda_python`) with its task
root, the built layers where Lambda mounts them (/opt/python: on PYTHONPATH here) and this
environment, each layer over the one before:

1. what Lambda sets (`build.lambda_variables`), with the region and credentials of the target;
2. where AWS is (`Target.aws`): `make run`'s stand-ins (`standins`: their endpoints and dummy
   credentials), or a deployed stack's region and your credentials (`stack`);
3. the template's variables, decided from the template's parameter defaults (a stack's own
   parameter values) and the target's resources (`build.Resolver`);
4. as `sam local invoke` does: a declared variable set in your shell takes its value from
   there, and an `--env-vars` file in SAM's format overrides declared variables (`Parameters`
   for every function, then the function's own entry). A name the template does not declare
   is ignored, as SAM ignores it, and said so; except a provider's own setting
   (`MODELSCOPE_BASE_URL`, ...: `imagegw.providers`), which the template takes through
   `PROVIDER_SETTINGS`: set in your shell or the file, it is added to the function's
   `PROVIDER_SETTINGS` (`NAME=value;...`; it wins over the same name there), and said so.

A handler function (`app.lambda_handler`) runs under `runtime.py`, as Lambda's Python bootstrap
runs it; its result (or Lambda's error payload) is printed as JSON. A function the Web Adapter
runs (AWS_LAMBDA_EXEC_WRAPPER) gets the adapter's job done here instead (`adapter`): its
handler script starts, the event becomes an HTTP request, and the answer is printed as Lambda
gives it: in `response_stream` mode first a line with the head (status, headers), then the body
chunk by chunk as the app writes it; otherwise the whole proxy response as JSON. What the
function logs goes to the log stream (stderr), never mixed with the answer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from lambdahost import adapter
from lambdahost.build import (
    Function,
    InvokeError,
    Resolver,
    Template,
    check_architecture,
    lambda_python,
    lambda_variables,
    resolve_variables,
)
from lambdahost.events import lambda_response, response_head
from lambdahost.process import RuntimeProcess, StartError, invoke_once
from lambdahost.standins import StandIns

RUNTIME: Final = Path(__file__).resolve().parent / "runtime.py"
ACCOUNT: Final = "123456789012"
#: stand-in resource values, by CloudFormation type: (Ref, {attribute: value})
#: the made-up name of the gateway keys' table (and secret) in the stand-in target
ACCESS_TABLE: Final = "image-gateway-invoke-access"
STAND_IN_TYPES: Final = {
    "AWS::S3::Bucket": "bucket",
    "AWS::KMS::Key": "key",
    "AWS::Serverless::StateMachine": "state_machine",
    "AWS::StepFunctions::StateMachine": "state_machine",
    # gateway keys' table and secret (mixed/keys AccessMode): names only, made in no stand-in;
    # the sample events' client tokens pass through without touching either
    "AWS::DynamoDB::Table": "access_table",
    "AWS::SecretsManager::Secret": "access_secret",
}
#: the template's secrets that the stand-ins hold, by logical id (rather than by type)
STAND_IN_SECRETS: Final = {"WebhookSecret": "webhook_secret"}


@dataclass(frozen=True)
class Target:
    """Where a function's AWS resources are: the values of the template's references to
    them, and the AWS variables that point the function's SDK there."""

    resolver: Resolver
    aws: Mapping[str, str]
    description: str


def stand_in_target(template: Template, stand_ins: StandIns) -> Target:
    """The template's resources as `make run`'s stand-ins: each bucket is the stand-in bucket,
    each KMS key the job key, each state machine the stand-in's."""
    key_id = stand_ins.key_arn.rsplit("/", 1)[-1]
    region = stand_ins.region
    access_secret = f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{ACCESS_TABLE}"
    machine_name = stand_ins.state_machine_arn.rsplit(":", 1)[-1]
    values = {
        "bucket": (stand_ins.bucket, {"Arn": f"arn:aws:s3:::{stand_ins.bucket}"}),
        "key": (key_id, {"Arn": stand_ins.key_arn, "KeyId": key_id}),
        "state_machine": (
            stand_ins.state_machine_arn,
            {"Arn": stand_ins.state_machine_arn, "Name": machine_name},
        ),
        "access_table": (
            ACCESS_TABLE,
            {"Arn": f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{ACCESS_TABLE}"},
        ),
        "access_secret": (access_secret, {"Id": access_secret}),
        "webhook_secret": (stand_ins.webhook_secret_arn, {"Id": stand_ins.webhook_secret_arn}),
    }
    refs: dict[str, str] = {}
    attributes: dict[tuple[str, str], str] = {}
    for logical_id, resource in template.resources.items():
        kind = STAND_IN_SECRETS.get(logical_id) or STAND_IN_TYPES.get(str(resource.get("Type")))
        if kind is None:
            continue
        ref, attrs = values[kind]
        refs[logical_id] = ref
        attributes.update({(logical_id, name): value for name, value in attrs.items()})
    return Target(
        resolver=Resolver(
            template.parameter_defaults(),
            refs,
            attributes,
            stand_ins.region,
            ACCOUNT,
            conditions=template.conditions,
        ),
        aws=stand_ins.aws_environment(),
        description=(
            f"make run's stand-ins at {stand_ins.endpoint} (bucket {stand_ins.bucket}, the local "
            "job key, a Step Functions state machine whose executions are recorded, not run)"
        ),
    )


# ------------------------------------------------------------------------------ environment


def sam_value(value: Any) -> str:
    """A value of an --env-vars file as SAM passes it: lists, objects and null blank,
    booleans `true`/`false`."""
    if isinstance(value, dict | list | tuple) or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def env_vars_overrides(env_vars: Mapping[str, Any], logical_id: str) -> dict[str, str]:
    """The overrides an --env-vars file (SAM's format) gives the function: `Parameters` (every
    function), then the function's own entry. Raises InvokeError for a malformed file, as SAM
    refuses one."""
    for name, entry in env_vars.items():
        if not isinstance(entry, dict):
            raise InvokeError(
                f"the env-vars file's {name!r} is not an object of variables (SAM's format: "
                '{"Parameters": {...}, "<function logical id>": {...}})'
            )
    overrides = {k: sam_value(v) for k, v in (env_vars.get("Parameters") or {}).items()}
    overrides.update({k: sam_value(v) for k, v in (env_vars.get(logical_id) or {}).items()})
    return overrides


@dataclass
class Environment:
    """A function's environment and what the caller should be told about how it was made."""

    values: dict[str, str]
    notes: list[str] = field(default_factory=list)


def function_environment(
    function: Function,
    target: Target,
    python: Path,
    runtime_dir: Path,
    env_vars: Mapping[str, Any] | None = None,
    shell: Mapping[str, str] | None = None,
) -> Environment:
    """The function's environment, layered as the module says."""
    credentials = {
        k: v
        for k, v in target.aws.items()
        if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    }
    region = target.aws.get("AWS_REGION", target.resolver.region)
    values = lambda_variables(function, python, runtime_dir, region, credentials)
    values["AWS_SAM_LOCAL"] = "true"  # as under `sam local`: Powertools' Tracer stays off
    values.update(target.aws)
    declared = resolve_variables(function, target.resolver)
    notes: list[str] = []
    from_shell = sorted(name for name in declared if name in (shell or {}))
    if from_shell:
        notes.append(
            "taken from your shell, as `sam local invoke` takes declared variables: "
            + ", ".join(from_shell)
        )
        declared.update({name: (shell or {})[name] for name in from_shell})
    overrides = env_vars_overrides(env_vars or {}, function.logical_id)
    settings = provider_setting_names() if PROVIDER_SETTINGS in declared else frozenset()
    ignored = sorted(name for name in overrides if name not in declared and name not in settings)
    if ignored:
        notes.append(
            f"the env-vars file sets {', '.join(ignored)}, which {function.logical_id} does not "
            "declare in the template: ignored, as `sam local invoke` ignores them"
        )
    declared.update({k: v for k, v in overrides.items() if k in function.variables})
    given = {name: (shell or {})[name] for name in settings if (shell or {}).get(name)}
    given.update({name: overrides[name] for name in settings if overrides.get(name)})
    if given:
        declared[PROVIDER_SETTINGS] = fold_provider_settings(declared[PROVIDER_SETTINGS], given)
        notes.append(
            f"{', '.join(sorted(given))}: a provider setting, passed in {PROVIDER_SETTINGS} "
            "(how the template's ProviderSettings parameter gives it to the function)"
        )
    values.update(declared)
    return Environment(values, notes)


PROVIDER_SETTINGS = "PROVIDER_SETTINGS"


def provider_setting_names() -> frozenset[str]:
    """Every registered provider's own settings (`MODELSCOPE_BASE_URL`, ...)."""
    from imagegw.infra.config import declared
    from imagegw.providers import PROVIDERS

    assert PROVIDERS  # the registrations have run
    return frozenset(declared())


def fold_provider_settings(current: str, given: Mapping[str, str]) -> str:
    """`PROVIDER_SETTINGS` (`NAME=value;...`) with the settings `given` over the same names."""
    pairs = [
        p for p in current.split(";") if p.strip() and p.partition("=")[0].strip() not in given
    ]
    pairs += [f"{name}={value}" for name, value in sorted(given.items())]
    return ";".join(pairs)


# ------------------------------------------------------------------------------ invoking


@dataclass(frozen=True)
class Request:
    """One `make invoke`."""

    function: str
    event: Path
    build: Path
    env_vars: Path | None = None
    #: where the clean runtime Python is kept between runs
    runtime_cache: Path | None = None
    #: the caller's environment (declared variables set there win, as under SAM)
    shell: Mapping[str, str] = field(default_factory=dict)


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise InvokeError(f"cannot read the {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvokeError(f"the {what} {path} is not JSON: {exc}") from None


def invoke(
    spec: Request,
    target: Target,
    out: Callable[[bytes], Any],
    notes: Callable[[str], Any],
    log: IO[Any] | int,
) -> int:
    """Invoke `spec.function` with `spec.event` against `target`: the answer goes to `out` (as
    it comes), what the tool says to `notes`, what the function prints to `log`. The exit
    status: 0, or 1 when the function failed (its error payload is the answer)."""
    template = Template(spec.build)
    function = template.function(spec.function)
    event = _load_json(spec.event, "event file")
    env_vars = _load_json(spec.env_vars, "env-vars file") if spec.env_vars else None
    if env_vars is not None and not isinstance(env_vars, dict):
        raise InvokeError(f"the env-vars file {spec.env_vars} is not a JSON object")
    for layer in function.layers:
        check_architecture(layer / "python")
    python = lambda_python(spec.runtime_cache or template.build.parent / "lambda-python")
    with tempfile.TemporaryDirectory(prefix="lambda-runtime-") as runtime_dir:
        environment = function_environment(
            function, target, python, Path(runtime_dir), env_vars, spec.shell
        )
        notes(f"{function.logical_id} ({function.handler}) against {target.description}")
        for note in environment.notes:
            notes(note)
        if function.wrapper:
            return _through_web_adapter(function, environment.values, event, out, notes, log)
        return _through_runtime(function, python, environment.values, event, out, log)


def _through_runtime(
    function: Function,
    python: Path,
    env: dict[str, str],
    event: Any,
    out: Callable[[bytes], Any],
    log: IO[Any] | int,
) -> int:
    runtime = RuntimeProcess([str(python), str(RUNTIME)], env, function.task_root, log)
    arn = f"arn:aws:lambda:{env['AWS_REGION']}:{ACCOUNT}:function:{function.logical_id}"
    try:
        ok, payload = invoke_once(runtime, event, arn, function.timeout)
    except StartError as exc:
        raise InvokeError(
            f"{function.logical_id} did not start: {exc} (its log says why)"
        ) from None
    out(json.dumps(payload, indent=2).encode() + b"\n")
    return 0 if ok else 1


def _through_web_adapter(
    function: Function,
    env: dict[str, str],
    event: Any,
    out: Callable[[bytes], Any],
    notes: Callable[[str], Any],
    log: IO[Any] | int,
) -> int:
    env = {k: v for k, v in env.items() if k != "AWS_LAMBDA_EXEC_WRAPPER"}
    streamed = env.get("AWS_LWA_INVOKE_MODE", "buffered").lower() == "response_stream"
    notes(
        f"the Web Adapter's part ({function.wrapper}) is done here: {function.handler} on a "
        f"free loopback port, the event forwarded as an HTTP request, the answer "
        + ("streamed as it comes (head line, then the body)" if streamed else "buffered")
    )
    port = adapter.free_port()
    app = adapter.start_app(function.task_root, function.handler, env, port, log)
    try:
        error = adapter.wait_ready(app, port, env.get("AWS_LWA_READINESS_CHECK_PATH", "/"))
        if error is not None:
            raise InvokeError(f"{function.logical_id} did not start: {error} (see its log)")
        answer = adapter.send(event, port, function.timeout)
        if streamed:
            out(json.dumps(response_head(event, answer.status, answer.headers)).encode() + b"\n")
            for chunk in answer.chunks:
                out(chunk)
        else:
            body = b"".join(answer.chunks)
            whole = lambda_response(event, answer.status, answer.headers, body)
            out(json.dumps(whole, indent=2).encode() + b"\n")
    finally:
        adapter.stop_app(app)
    return 0
