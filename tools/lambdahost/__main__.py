"""`python -m lambdahost invoke|events|env-json` (the Makefile's `invoke`, `events` and
`env-json` targets; run with layers/common and tools on PYTHONPATH)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from lambdahost.build import InvokeError, Template
from lambdahost.invoke import Request, Target, invoke, stand_in_target
from lambdahost.standins import SAMPLE_TOKEN, stand_ins

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = REPO_ROOT / "events"
COPIES = REPO_ROOT / ".aws-sam" / "events"


def _note(text: str) -> None:
    print(f"[invoke] {text}", file=sys.stderr, flush=True)


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _session() -> Any:
    import boto3

    return boto3.session.Session()


def _target(template: Template, stack: str | None) -> Target:
    if stack:
        from lambdahost.stack import stack_target

        return stack_target(stack, template, _session(), os.environ)
    return stand_in_target(template, stand_ins())


def _invoke(args: argparse.Namespace) -> int:
    build = Path(args.build_dir)
    spec = Request(
        function=args.function,
        event=Path(args.event),
        build=build,
        env_vars=Path(args.env_vars) if args.env_vars else None,
        shell=dict(os.environ),
    )
    return invoke(spec, _target(Template(build), args.stack), _write, _note, sys.stderr)


def _events(args: argparse.Namespace) -> int:
    from imagegw.infra.sealer import KeySealer
    from lambdahost.samples import seal

    given = os.environ.get("PROVIDER_KEY", "")
    token = SecretStr(given or SAMPLE_TOKEN)
    private = bool(given) or bool(args.stack)
    out = Path(args.out) if args.out else (COPIES / (args.stack or "local") if private else EVENTS)
    if private and out.resolve() == EVENTS.resolve():
        raise InvokeError(
            "a key of your own (PROVIDER_KEY) or one sealed for a stack is never written into "
            "events/: name another folder with OUT"
        )
    if args.stack:
        from lambdahost.stack import job_key_arn, stack_resolver

        session = _session()
        template = Template(REPO_ROOT)
        resolver = stack_resolver(args.stack, template, session.client("cloudformation"))
        sealer = KeySealer(job_key_arn(template, resolver), resolver.region, session.client("kms"))
    else:
        running = stand_ins()
        sealer = KeySealer(running.key_arn, running.region, running.client("kms"))
    written = seal(EVENTS, out, sealer, token, keep_current=not private)
    for path in written:
        _note(f"wrote {path}")
    if not written:
        _note(f"the job events in {out} already carry the sample key, sealed with the job key")
    return 0


def _env_json(args: argparse.Namespace) -> int:
    from lambdahost.stack import env_vars_file, stack_resolver

    template = Template(REPO_ROOT)
    resolver = stack_resolver(args.stack, template, _session().client("cloudformation"))
    entries = env_vars_file(template, resolver)
    out = Path(args.out) if args.out else REPO_ROOT / ".aws-sam" / f"env-vars-{args.stack}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries, indent=2) + "\n")
    _note(f"wrote {out} for {', '.join(entries)}; use it as")
    _note(f"  sam local invoke <function> -e <event> --env-vars {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lambdahost")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("invoke", help="invoke a built function with an event")
    run.add_argument("--function", required=True, help="the function's logical id")
    run.add_argument("--event", required=True, help="the event file (JSON)")
    run.add_argument("--build-dir", default=str(REPO_ROOT / ".aws-sam" / "build-local"))
    run.add_argument("--env-vars", help="overrides, in the format of sam local --env-vars")
    run.add_argument("--stack", help="a deployed stack's resources instead of the stand-ins")
    events = commands.add_parser("events", help="seal the job events' provider key")
    events.add_argument("--stack", help="seal with this deployed stack's key")
    events.add_argument("--out", help="where to write the events")
    env_json = commands.add_parser("env-json", help="sam local --env-vars JSON for a stack")
    env_json.add_argument("--stack", required=True)
    env_json.add_argument("--out", help="the file to write")
    args = parser.parse_args(argv)
    handlers = {"invoke": _invoke, "events": _events, "env-json": _env_json}
    try:
        return handlers[args.command](args)
    except InvokeError as exc:
        print(f"[invoke] {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
