"""Owner commands (README "Sharing a deployment"), also as make targets:

    python -m imagegw.frontends.admin key NAME [--quota N] [--models a,b] [--providers a,b]
        [--days N]
    python -m imagegw.frontends.admin keys | revoke NAME
    python -m imagegw.frontends.admin token PROVIDER TOKEN | tokens | untoken PROVIDER TOKEN
    python -m imagegw.frontends.admin rotate-webhook-secret

They work on a deployed stack (`--stack NAME`, or STACK: its AccessTableName and AccessSecretArn
outputs, with the caller's AWS credentials), else on ACCESS_TABLE and ACCESS_SECRET, else on
`make run`'s stand-ins while it runs (`imagegw.frontends.local.LOCAL_ACCESS_FILE`). A new key is
printed once, as the last line; only its keyed hash is stored. Tokens are listed masked (the first
and last few characters: `gatekeys.masked`), each with whether it is set aside and until
when. `TOKEN` given as `-` is read from standard input (no shell history).

`rotate-webhook-secret` replaces the deployment's webhook secret (the stack's WebhookSecretArn
output, else WEBHOOK_SECRET, else `make run`'s): every caller's signing secret changes with it,
within SECRET_CACHE_TTL (README "Webhooks"); callers fetch theirs again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any

from imagegw.access.gate import iso
from imagegw.access.gatekeys import SHOWN, key_hash, masked, new_key, token_id
from imagegw.access.secret import Pools
from imagegw.access.table import AccessTable, KeyRecord
from imagegw.providers import lookup


class AdminError(Exception):
    """A command that cannot be done; its message is for the owner."""


@dataclass
class Target:
    table: AccessTable
    secret_id: str
    secrets: Any

    def pools(self) -> Pools:
        value = self.secrets.get_secret_value(SecretId=self.secret_id)["SecretString"]
        return Pools.parse(value)

    def save(self, pools: Pools) -> None:
        self.secrets.put_secret_value(SecretId=self.secret_id, SecretString=pools.dump())


def target(stack: str | None) -> Target:
    """Where the commands act: a stack's outputs, the environment, or `make run`."""
    import boto3

    from imagegw.frontends.local import LOCAL_ACCESS_FILE

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if stack:
        (described,) = boto3.client("cloudformation", region_name=region).describe_stacks(
            StackName=stack
        )["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        if "AccessTableName" not in outputs:
            raise AdminError(f"stack {stack} has no gateway keys (AccessMode=open)")
        table_name, secret_id = outputs["AccessTableName"], outputs["AccessSecretArn"]
    elif os.environ.get("ACCESS_TABLE") and os.environ.get("ACCESS_SECRET"):
        table_name, secret_id = os.environ["ACCESS_TABLE"], os.environ["ACCESS_SECRET"]
    elif LOCAL_ACCESS_FILE.exists():
        local = json.loads(LOCAL_ACCESS_FILE.read_text())
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SECRETS_MANAGER"):
            os.environ[name] = local[name]
        region = local.get("AWS_REGION", region)
        table_name, secret_id = local["ACCESS_TABLE"], local["ACCESS_SECRET"]
    else:
        raise AdminError(
            "no gateway to act on: give STACK=<name> (a deployed stack), or start `make run`"
        )
    return Target(
        table=AccessTable(table_name, region),
        secret_id=secret_id,
        secrets=boto3.client("secretsmanager", region_name=region),
    )


def webhook_secret_target(stack: str | None) -> tuple[str, Any]:
    """The deployment's webhook secret (its id) and a Secrets Manager client to write it."""
    import boto3

    from imagegw.frontends.local import LOCAL_ACCESS_FILE

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if stack:
        (described,) = boto3.client("cloudformation", region_name=region).describe_stacks(
            StackName=stack
        )["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        secret_id = outputs.get("WebhookSecretArn")
    elif os.environ.get("WEBHOOK_SECRET"):
        secret_id = os.environ["WEBHOOK_SECRET"]
    elif LOCAL_ACCESS_FILE.exists():
        local = json.loads(LOCAL_ACCESS_FILE.read_text())
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        os.environ["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = local["AWS_ENDPOINT_URL_SECRETS_MANAGER"]
        region = local.get("AWS_REGION", region)
        secret_id = local.get("WEBHOOK_SECRET")
    else:
        secret_id = None
    if not secret_id:
        raise AdminError("no webhook secret to rotate: give STACK=<name>, or start `make run`")
    return secret_id, boto3.client("secretsmanager", region_name=region)


def rotate_webhook_secret(secret_id: str, client: Any) -> None:
    """A new random deployment webhook secret (never printed)."""
    client.put_secret_value(SecretId=secret_id, SecretString=secrets.token_urlsafe(48))


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def create_key(
    where: Target,
    name: str,
    quota: int | None = None,
    models: tuple[str, ...] = (),
    providers: tuple[str, ...] = (),
    days: int | None = None,
    now: float | None = None,
) -> str:
    """Issue a key named `name`; the key (shown once: only its keyed hash is kept)."""
    if not name.strip() or len(name) > 64:
        raise AdminError("NAME must be 1 to 64 characters")
    if any(record.name == name for record in where.table.key_records()):
        raise AdminError(f"a key named {name} exists: revoke it first")
    for provider in providers:
        lookup(provider)  # an unknown provider is refused here, not at use
    pools = where.pools()
    key = new_key()
    at = int(now if now is not None else time.time())
    where.table.put_key(
        KeyRecord(
            hash=key_hash(key, pools.pepper),
            name=name,
            created=at,
            quota=quota,
            models=models,
            providers=providers,
            expires=at + days * 86400 if days else None,
        )
    )
    return key


def list_keys(where: Target) -> list[str]:
    now = time.time()
    lines = [f"{'NAME':<20} {'HASH':<13} {'QUOTA':>6} {'TODAY':>6} {'MONTH':>6}  EXPIRES  MODELS"]
    for record in where.table.key_records():
        day, month = where.table.usage(record.hash, now)
        expires = time.strftime("%Y-%m-%d", time.gmtime(record.expires)) if record.expires else "-"
        lines.append(
            f"{record.name:<20} {record.hash[:SHOWN]:<13} {record.quota or '-':>6} "
            f"{day.images:>6} {month.images:>6}  {expires:<8} {','.join(record.models) or '*'}"
        )
    return lines


def revoke(where: Target, name: str) -> int:
    found = [record for record in where.table.key_records() if record.name == name]
    if not found:
        raise AdminError(f"no key named {name}")
    for record in found:
        where.table.delete_key(record.hash)
    return len(found)


def add_token(where: Target, provider: str, token: str) -> None:
    lookup(provider)
    if not token.strip() or token != token.strip():
        raise AdminError("TOKEN must be the token itself, without spaces")
    pools = where.pools()
    pool = pools.pool(provider)
    if token in pool:
        raise AdminError(f"this token is in the {provider} pool already")
    where.save(Pools(pools.pepper, {**pools.tokens, provider: (*pool, token)}))


def remove_token(where: Target, provider: str, token: str) -> None:
    pools = where.pools()
    pool = pools.pool(provider)
    if token not in pool:
        raise AdminError(f"this token is not in the {provider} pool")
    where.save(
        Pools(pools.pepper, {**pools.tokens, provider: tuple(t for t in pool if t != token)})
    )


def _state(token: str, asides: dict[str, float], now: float) -> str:
    """Whether the gateway uses `token` now, or until when it is set aside (refused, out of
    quota or rate limited: `imagegw.access.gate`)."""
    mine = token_id(token)
    until = max(
        (u for ref, u in asides.items() if ref == mine or ref.startswith(mine + "#")),
        default=0.0,
    )
    if until <= now:
        return "in use"
    if until - now > 365 * 86400:
        return "set aside until you change it (refused by the provider)"
    left = until - now
    wait = f"{left / 3600:.1f} h" if left >= 3600 else f"{math.ceil(left / 60)} min"
    return f"set aside until {iso(until)} (in {wait})"


def list_tokens(where: Target, now: float | None = None) -> list[str]:
    """Each pool's tokens, masked (`gatekeys.masked`), each with whether it is in use or set
    aside and until when."""
    pools = where.pools()
    at = time.time() if now is None else now
    lines = []
    for provider in sorted(pools.tokens):
        tokens = pools.tokens[provider]
        lines.append(f"{provider}: {len(tokens)} token(s){'' if tokens else ': (none)'}")
        asides = where.table.asides(provider) if tokens else {}
        lines += [f"  {masked(t):<14} {_state(t, asides, at)}" for t in tokens]
    return lines or ["no provider tokens"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imagegw.frontends.admin", description=__doc__)
    parser.add_argument("--stack", default=os.environ.get("STACK") or None)
    commands = parser.add_subparsers(dest="command", required=True)
    key = commands.add_parser("key", help="issue a gateway key (printed once, last line)")
    key.add_argument("name")
    key.add_argument("--quota", type=int, default=None, help="images a day")
    key.add_argument("--models", default="", help="allowed model ids, comma-separated")
    key.add_argument("--providers", default="", help="allowed providers, comma-separated")
    key.add_argument("--days", type=int, default=None, help="days until it expires")
    commands.add_parser("keys", help="list keys")
    revoke_cmd = commands.add_parser("revoke", help="revoke a key by name")
    revoke_cmd.add_argument("name")
    for name in ("token", "untoken"):
        cmd = commands.add_parser(name, help=f"{'add' if name == 'token' else 'remove'} a token")
        cmd.add_argument("provider")
        cmd.add_argument("token", help="the token, or - to read it from standard input")
    commands.add_parser("tokens", help="list token pools (masked)")
    commands.add_parser(
        "rotate-webhook-secret", help="new webhook signing secrets for every caller"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "rotate-webhook-secret":
            rotate_webhook_secret(*webhook_secret_target(args.stack))
            print("webhook secret rotated: callers get new signing secrets within 5 minutes")
            return 0
        where = target(args.stack)
        if args.command == "key":
            if args.quota is not None and args.quota < 0:
                raise AdminError("QUOTA must be 0 or more")
            key = create_key(
                where,
                args.name,
                args.quota,
                _list(args.models),
                _list(args.providers),
                args.days,
            )
            print(f"gateway key for {args.name} (shown once; give it as the API key):")
            print(key)
        elif args.command == "keys":
            print("\n".join(list_keys(where)))
        elif args.command == "revoke":
            revoke(where, args.name)
            print(f"revoked {args.name} (refused everywhere within KEY_CACHE_TTL)")
        elif args.command in ("token", "untoken"):
            given: str = args.token
            token = sys.stdin.readline().strip() if given == "-" else given
            if args.command == "token":
                add_token(where, args.provider, token)
                print(f"added {masked(token)} to the {args.provider} pool")
            else:
                remove_token(where, args.provider, token)
                print(f"removed {masked(token)} from the {args.provider} pool")
        else:
            print("\n".join(list_tokens(where)))
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
