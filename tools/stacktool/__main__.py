"""`python -m stacktool <command>`: what `make deploy`, `make logs` and `make delete` ask of AWS.

- `credentials`: stop with a clear message, before anything is sent, when boto3 finds no AWS
  credentials (no AWS CLI is needed: environment variables, ~/.aws files, SSO or a profile).
- `outputs`: after a deploy, the address to paste into a chat client, the dashboard's address
  and the bucket, from the stack's outputs.
- `logs`: follow the API's and the job functions' log groups (CloudWatch Logs, from now on, or
  from `--since` minutes back), one line an event, until Ctrl-C.
- `bucket`: after `sam delete`, the bucket the stack kept (DeletionPolicy Retain) and how to
  empty and remove it.

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
DEFAULT_STACK = "lambda-image-gateway"
NO_CREDENTIALS = """\
No AWS credentials found, so nothing was deployed (the build above is ready).
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


def check_credentials(boto: Any) -> str:
    """The caller's account id; StackError with the how-to when there are no credentials."""
    if boto.get_credentials() is None:
        raise StackError(NO_CREDENTIALS)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        identity = boto.client("sts").get_caller_identity()
    except (BotoCoreError, ClientError) as exc:
        raise StackError(f"AWS did not accept the credentials found: {exc}") from None
    return str(identity["Account"])


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


def retained_bucket(boto: Any, stack: str) -> str:
    """How to remove what `sam delete` keeps: the bucket, by its name from the stack."""
    name = stack_outputs(boto, stack).get("UploadsBucketName")
    if not name:
        raise StackError(f"the stack {stack!r} names no bucket")
    return (
        f"The stack keeps its bucket {name} when deleted (stored images, uploads).\n"
        f"After `make delete`, empty and remove it (this deletes every image in it):\n"
        f"  .venv/bin/python -c \"import boto3; b = boto3.resource('s3').Bucket('{name}'); "
        f'b.objects.all().delete(); b.delete()"'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stacktool")
    parser.add_argument("command", choices=["credentials", "outputs", "logs", "bucket"])
    parser.add_argument("--stack", default="", help="stack name (default: samconfig.toml's)")
    parser.add_argument("--region", default="", help="region (default: samconfig.toml's)")
    parser.add_argument("--since", type=float, default=10.0, help="logs: minutes back")
    args = parser.parse_args(argv)
    stack, region = saved_settings()
    stack = args.stack or stack
    boto = session(args.region or region)
    try:
        if args.command == "credentials":
            account = check_credentials(boto)
            print(f"AWS account {account}, region {boto.region_name}, stack {stack}")
        elif args.command == "outputs":
            print(describe(stack_outputs(boto, stack)))
        elif args.command == "bucket":
            print(retained_bucket(boto, stack))
        else:
            check_credentials(boto)
            follow_logs(boto, stack, args.since)
    except StackError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
