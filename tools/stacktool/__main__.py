"""`python -m stacktool <command>`: what `make deploy`, `make logs` and `make delete` ask of AWS.

- `credentials --for deploy|logs|delete`: stop with a clear message, before anything is built
  or sent, when boto3 finds no AWS credentials (no AWS CLI is needed: environment variables,
  ~/.aws files, SSO or a profile), when AWS refuses them, or when AWS cannot be reached (a
  network failure is told as one, not as refused credentials).
- `architecture [--built ARCH]`: the stack's Architecture as `sam deploy` will use it (what
  `sam deploy --guided` saved in samconfig.toml, else the template's default), which `make
  build` builds for; with `--built`, exit 3 (and say so) when the build was for another one.
- `parameters`: before the build and the deploy, refuse saved parameters that CloudFormation
  takes but that cannot work together (a GenerationTimeout not below FunctionTimeout; the
  template cannot compare two parameters: docs/configuration.md "Parameters checked together"),
  and tell how a JobTimeout too long for JobPollInterval is polled.
- `outputs`: after a deploy, the address to paste into a chat client, the dashboard's address
  and the bucket, from the stack's outputs.
- `logs`: follow the API's and the job functions' log groups (CloudWatch Logs, from now on, or
  from `--since` minutes back), one line an event, until Ctrl-C.
- `bucket`: before `sam delete`, the stack's state (a failed first deploy, ROLLBACK_COMPLETE,
  is deleted like any other), the bucket it keeps (DeletionPolicy Retain) and how to empty and
  remove it; exit 1 only when there is no stack to delete.

The stack's name and region come from samconfig.toml (what `sam deploy --guided` saved), unless
STACK / AWS_REGION say otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

SAMCONFIG = Path(__file__).resolve().parents[2] / "samconfig.toml"
TEMPLATE = SAMCONFIG.parent / "template.yaml"
DEFAULT_STACK = "lambda-image-gateway"
#: what each command did not do for want of credentials
NOT_DONE = {
    "deploy": "nothing was built or deployed",
    "logs": "no logs were read",
    "delete": "nothing was deleted",
}
NO_CREDENTIALS = """\
No AWS credentials found, so {not_done}.
Give boto3 and the SAM CLI credentials in one of the usual ways, then run the command again:
  - environment: export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... (and AWS_SESSION_TOKEN
    for temporary ones)
  - a profile in ~/.aws/credentials or ~/.aws/config: export AWS_PROFILE=<name>
  - IAM Identity Center (SSO): a profile with sso_* settings, signed in
See https://docs.aws.amazon.com/sdkref/latest/guide/standardized-credentials.html"""


class StackError(Exception):
    """A failure to tell the user in one line (no traceback)."""


def saved_settings(path: Path = SAMCONFIG) -> tuple[str, str | None]:
    """(stack name, region) that `sam deploy` uses: samconfig.toml's, default environment."""
    if not path.exists():
        return DEFAULT_STACK, None
    config = tomllib.loads(path.read_text())
    default = config.get("default", {})
    stack = default.get("global", {}).get("parameters", {}).get("stack_name")
    deploy = default.get("deploy", {}).get("parameters", {})
    return str(deploy.get("stack_name") or stack or DEFAULT_STACK), deploy.get("region")


def session(region: str | None) -> Any:
    import boto3

    return boto3.session.Session(region_name=region) if region else boto3.session.Session()


def no_credentials(command: str = "deploy") -> str:
    return NO_CREDENTIALS.format(not_done=NOT_DONE.get(command, "nothing was done"))


#: how long the credentials check may wait for AWS (seconds to connect and to read, one retry)
CHECK_TIMEOUT = 10


def check_credentials(boto: Any, command: str = "deploy") -> str:
    """The caller's account id; StackError with the how-to when there are no credentials, with
    what failed when AWS refused them or could not be reached (told apart)."""
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    not_done = NOT_DONE.get(command, "nothing was done")
    try:
        if boto.get_credentials() is None:
            raise NoCredentialsError
        config = Config(
            connect_timeout=CHECK_TIMEOUT,
            read_timeout=CHECK_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        identity = boto.client("sts", config=config).get_caller_identity()
    except NoCredentialsError:
        raise StackError(no_credentials(command)) from None
    except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
        raise StackError(
            f"AWS could not be reached ({type(exc).__name__}), so {not_done}; the credentials "
            f"were not checked. Check the network (a proxy: HTTPS_PROXY) and the region "
            f"({boto.region_name}), then run the command again."
        ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise StackError(
            f"AWS refused the credentials found ({code}), so {not_done}. Renew them (an "
            f"expired session, `aws sso login`) or choose others (AWS_PROFILE)."
        ) from None
    except BotoCoreError as exc:  # e.g. an SSO profile not signed in, a bad config file
        raise StackError(f"The AWS credentials cannot be used ({exc}), so {not_done}.") from None
    return str(identity["Account"])


#: the template's Architecture when nothing else is saved (template.yaml)
DEFAULT_ARCHITECTURE = "arm64"
ARCHITECTURES = ("arm64", "x86_64")


def overrides(value: Any) -> dict[str, str]:
    """samconfig.toml's `parameter_overrides`, as `sam deploy --guided` writes it (one string of
    `Name="value"` pairs) or as a list of `Name=value` strings."""
    import shlex

    if isinstance(value, str):
        pairs = shlex.split(value)
    elif isinstance(value, list):
        pairs = [str(item) for item in value]
    else:
        return {}
    found = {}
    for pair in pairs:
        name, sep, given = pair.partition("=")
        if sep:
            found[name.strip()] = given.strip().strip('"')
    return found


def saved_overrides(path: Path = SAMCONFIG) -> dict[str, str]:
    """The template parameters `sam deploy` will be given: the deploy parameters' (what `sam
    deploy --guided` saved) over the global ones'."""
    if not path.exists():
        return {}
    default = tomllib.loads(path.read_text()).get("default", {})
    found: dict[str, str] = {}
    for section in ("global", "deploy"):
        found |= overrides(
            default.get(section, {}).get("parameters", {}).get("parameter_overrides")
        )
    return found


def saved_architecture(path: Path = SAMCONFIG) -> str:
    """The Architecture `sam deploy` will use: the saved one, else the template's default."""
    saved = saved_overrides(path).get("Architecture", "")
    return saved if saved in ARCHITECTURES else DEFAULT_ARCHITECTURE


def template_parameters(path: Path = TEMPLATE) -> dict[str, dict[str, Any]]:
    """The template's Parameters section."""
    import yaml  # type: ignore[import-untyped,unused-ignore]

    class Loader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
        """YAML with CloudFormation's short tags (`!Ref x`), read as plain values."""

    def plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        return None

    Loader.add_multi_constructor("!", plain)
    params: dict[str, dict[str, Any]] = yaml.load(path.read_text(), Loader)["Parameters"]  # noqa: S506
    return params


def template_defaults(path: Path = TEMPLATE) -> dict[str, str]:
    """Each template parameter's Default, as text."""
    return {k: str(p["Default"]) for k, p in template_parameters(path).items() if "Default" in p}


def parameter_problems(values: dict[str, str]) -> tuple[list[str], list[str]]:
    """(what cannot work, what is only told) about parameters that depend on each other, by
    the gateway's own rules (imagegw.infra.config, imagegw.runners.stepfunctions.service)."""
    from imagegw.infra.config import Settings
    from imagegw.runners.stepfunctions.service import MAX_POLLS, poll_wait

    problems: list[str] = []
    notes: list[str] = []
    function, generation = values["FunctionTimeout"], values["GenerationTimeout"]
    timeout, interval = values["JobTimeout"], values["JobPollInterval"]
    try:
        held = Settings.from_env({"FUNCTION_TIMEOUT": function, "GENERATION_TIMEOUT": generation})
        float(generation)
        jobs = Settings(job_timeout=int(timeout), job_poll_interval=int(interval))
    except ValueError as exc:  # CloudFormation refuses it too; say which before it does
        return [f"The saved parameters are not numbers where numbers are needed: {exc}"], []
    if held.generation_timeout < float(generation):
        problems.append(
            f"GenerationTimeout {generation} does not fit FunctionTimeout {function}: a "
            f"generation may wait at most {held.generation_timeout:g} s (FunctionTimeout less "
            f"30 s; less a quarter of it below 120 s), so the client hears the timeout before "
            f"Lambda ends the call. Set "
            f"GenerationTimeout to {int(held.generation_timeout)} or less, or raise "
            f"FunctionTimeout (sam deploy --guided, or samconfig.toml's parameter_overrides)."
        )
    if poll_wait(jobs) > jobs.job_poll_interval:
        notes.append(
            f"JobTimeout {timeout} at JobPollInterval {interval} would be more than "
            f"{MAX_POLLS:,} polls, more than an execution's history holds: jobs poll every "
            f"{poll_wait(jobs)} s instead, and still get their whole JobTimeout."
        )
    return problems, notes


def architecture_mismatch(built: str, saved: str) -> str | None:
    """What to tell when the build was for another Architecture than the stack's; None when
    they agree."""
    if built == saved:
        return None
    return (
        f"The stack's Architecture is {saved} (samconfig.toml) but the build was for "
        f"{built or 'none'}: building for {saved} before the deploy, so the functions get "
        f"wheels they can import."
    )


def stack_outputs(boto: Any, stack: str) -> dict[str, str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        (found,) = boto.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    except (BotoCoreError, ClientError) as exc:
        raise StackError(f"cannot read the stack {stack!r}: {exc}") from None
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in found.get("Outputs", [])}


#: the outputs a user needs after a deploy, and what each is for
SHOWN = (
    ("FunctionUrl", "API address for Cherry Studio, Open WebUI, LobeChat"),
    ("OpenAIBaseUrl", "OpenAI SDK base_url"),
    ("DashboardUrl", "CloudWatch dashboard"),
    ("UploadsBucketName", "Image bucket (kept by `make delete`)"),
)


def describe(outputs: dict[str, str]) -> str:
    """What a user needs after a deploy, from the stack's outputs."""
    width = max(len(label) for _, label in SHOWN) + 1
    # the Function URL without its trailing slash: Cherry Studio then appends /v1/... itself
    shown = {**outputs, "FunctionUrl": outputs.get("FunctionUrl", "").rstrip("/")}
    return "\n".join(
        f"{label + ':':{width}} {shown[key]}" for key, label in SHOWN if outputs.get(key)
    )


def log_groups(stack: str) -> list[str]:
    """The stack's two log groups (template.yaml: ApiLogGroup, JobsLogGroup)."""
    return [f"/aws/lambda/{stack}-api", f"/aws/lambda/{stack}-jobs"]


def follow_logs(boto: Any, stack: str, since_minutes: float, interval: float = 2.0) -> None:
    """Print the log groups' new events, oldest first, until interrupted."""
    logs = boto.client("logs")
    start = int((time.time() - since_minutes * 60) * 1000)
    seen: set[str] = set()
    groups = log_groups(stack)
    print(f"following {', '.join(groups)} (Ctrl-C to stop)", file=sys.stderr)
    while True:
        events = []
        for group in groups:
            pages = logs.get_paginator("filter_log_events").paginate(
                logGroupName=group, startTime=start
            )
            try:
                for page in pages:
                    events += [(e["timestamp"], group, e) for e in page["events"]]
            except logs.exceptions.ResourceNotFoundException:
                continue
        for stamp, group, event in sorted(events, key=lambda item: item[0]):
            if event["eventId"] in seen:
                continue
            seen.add(event["eventId"])
            start = max(start, stamp)
            name = "api" if group.endswith("-api") else "jobs"
            print(f"{name:4} {event['message'].rstrip()}", flush=True)
        time.sleep(interval)


#: the retained bucket's logical id (template.yaml), found among the resources of a stack
#: whose outputs are missing (a failed first deploy)
BUCKET_RESOURCE = "UploadsBucket"


def delete_notes(stack: str, status: str, bucket: str | None) -> str:
    """What `make delete` tells before `sam delete`: a failed deploy's state (deleted all the
    same), and the bucket that stays, with how to empty and remove it."""
    lines = []
    if status.endswith("_FAILED") or status in ("ROLLBACK_COMPLETE", "REVIEW_IN_PROGRESS"):
        lines.append(
            f"The stack {stack} is in {status} (a deploy that failed): `sam delete` removes it, "
            f"so the next `make deploy` starts afresh."
        )
    if bucket:
        lines += [
            f"The stack keeps its bucket {bucket} when deleted (stored images, uploads).",
            "After `make delete`, empty and remove it (this deletes every image in it):",
            f"  .venv/bin/python -c \"import boto3; b = boto3.resource('s3').Bucket('{bucket}'); "
            f'b.objects.all().delete(); b.delete()"',
        ]
    else:
        lines.append(f"The stack {stack} made no image bucket: nothing stays after it.")
    return "\n".join(lines)


def retained_bucket(boto: Any, stack: str) -> str:
    """`delete_notes` for the stack as AWS describes it: its status, and its bucket from its
    outputs or, when it has none (a failed first deploy), from its resources. StackError only
    when there is no such stack."""
    from botocore.exceptions import BotoCoreError, ClientError

    cloudformation = boto.client("cloudformation")
    try:
        (found,) = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            raise StackError(
                f"There is no stack {stack!r} in this region: nothing to delete."
            ) from None
        raise StackError(f"cannot read the stack {stack!r}: {exc}") from None
    except BotoCoreError as exc:
        raise StackError(f"cannot read the stack {stack!r}: {exc}") from None
    outputs = {str(o["OutputKey"]): str(o["OutputValue"]) for o in found.get("Outputs", [])}
    bucket = outputs.get("UploadsBucketName")
    if not bucket:
        try:
            resources = cloudformation.describe_stack_resources(StackName=stack)
        except (BotoCoreError, ClientError):
            resources = {}
        bucket = next(
            (
                str(r["PhysicalResourceId"])
                for r in resources.get("StackResources", [])
                if r.get("LogicalResourceId") == BUCKET_RESOURCE and r.get("PhysicalResourceId")
            ),
            None,
        )
    return delete_notes(stack, str(found.get("StackStatus", "")), bucket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stacktool")
    parser.add_argument(
        "command",
        choices=["credentials", "outputs", "logs", "bucket", "architecture", "parameters"],
    )
    parser.add_argument("--stack", default="", help="stack name (default: samconfig.toml's)")
    parser.add_argument("--region", default="", help="region (default: samconfig.toml's)")
    parser.add_argument("--since", type=float, default=10.0, help="logs: minutes back")
    parser.add_argument("--for", dest="purpose", default="deploy", choices=sorted(NOT_DONE))
    parser.add_argument("--built", default=None, help="architecture: what the build was for")
    args = parser.parse_args(argv)
    if args.command == "architecture":
        saved = saved_architecture()
        if args.built is None:
            print(saved)
            return 0
        told = architecture_mismatch(args.built.strip(), saved)
        if told:
            print(told, file=sys.stderr)
            return 3
        return 0
    if args.command == "parameters":
        given = template_defaults(TEMPLATE) | saved_overrides(SAMCONFIG)
        problems, notes = parameter_problems(given)
        for told in problems + notes:
            print(told, file=sys.stderr)
        return 1 if problems else 0
    stack, region = saved_settings()
    stack = args.stack or stack
    boto = session(args.region or region)
    try:
        if args.command == "credentials":
            account = check_credentials(boto, args.purpose)
            print(f"AWS account {account}, region {boto.region_name}, stack {stack}")
        elif args.command == "outputs":
            print(describe(stack_outputs(boto, stack)))
        elif args.command == "bucket":
            print(retained_bucket(boto, stack))
        else:
            check_credentials(boto, "logs")
            follow_logs(boto, stack, args.since)
    except StackError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
