"""Added latency of gateway keys (`keys` mode) per request, against `make run`'s stand-ins
(moto's DynamoDB and Secrets Manager on loopback, as `imagegw.frontends.local` serves them).

Measured in process, on what a keyed request adds to an open one: the key lookup and token
lease with warm caches (the usual case: KEY_CACHE_TTL, the secret's Powertools cache and the
set-aside cache all warm), the same with cold caches (a GetItem, a GetSecretValue), and the
quota reservation (two conditional UpdateItems before the provider is called). Real AWS adds
its own round trips (single-digit ms within a region) to the uncached and reservation rows.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import boto3

from bench.common import Report, Table, fmt_ms, percentile
from imagegw.access.gate import Access
from imagegw.access.gatekeys import key_hash, new_key
from imagegw.access.secret import SecretSource
from imagegw.access.table import AccessTable, KeyRecord
from imagegw.frontends.local import start_moto
from imagegw.infra.config import Settings

ROUNDS = 400
REGION = "us-east-1"


def _clients(endpoint: str) -> tuple[Any, Any]:
    options: dict[str, Any] = {
        "region_name": REGION,
        "endpoint_url": endpoint,
        "aws_access_key_id": "local",
        "aws_secret_access_key": "local",
    }
    return boto3.client("dynamodb", **options), boto3.client("secretsmanager", **options)


async def _time(rounds: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    took = []
    for _ in range(rounds):
        began = time.perf_counter()
        await call()
        took.append(time.perf_counter() - began)
    return took


async def _measure(endpoint: str) -> dict[str, list[float]]:
    dynamodb, secrets = _clients(endpoint)
    dynamodb.create_table(
        TableName="bench-access",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    secret = secrets.create_secret(
        Name="bench-access",
        SecretString=json.dumps({"pepper": "p" * 48, "tokens": {"modelscope": ["ms-a", "ms-b"]}}),
    )["ARN"]
    table = AccessTable("bench-access", REGION, dynamodb)
    key = new_key()
    table.put_key(KeyRecord(key_hash(key, "p" * 48), "bench", int(time.time()), quota=10**9))

    def access(mode: str, key_ttl: float, secret_ttl: int) -> Access:
        settings = Settings(
            access_mode=mode,
            access_table="bench-access",
            access_secret=secret,
            key_cache_ttl=key_ttl,
            secret_cache_ttl=secret_ttl,
        )
        source = SecretSource(secret, secret_ttl, REGION, secrets)
        return Access(settings, table=table, secret=source)

    async def authorize(gate: Access, bearer: str) -> None:
        caller = await gate.caller(bearer, "modelscope")
        if caller.keyed:
            await gate.lease("modelscope")

    warm, cold, open_ = access("keys", 300, 300), access("keys", 0, 0), access("open", 300, 300)
    await authorize(warm, key)  # fills the caches
    results = {
        "open mode (client token)": await _time(ROUNDS, lambda: authorize(open_, "ms-client")),
        "keys mode, caches warm": await _time(ROUNDS, lambda: authorize(warm, key)),
        "keys mode, caches cold": await _time(ROUNDS // 4, lambda: authorize(cold, key)),
    }
    caller = await warm.caller(key, "modelscope")

    reservations: list[Any] = []

    async def reserve() -> None:
        reservations.append(await warm.reserve(caller, "Qwen/Qwen-Image", 1))

    results["quota reservation, before the call"] = await _time(ROUNDS // 4, reserve)
    pending = iter(reservations)

    async def settle() -> None:
        await next(pending).settle(1)

    results["usage settled, after the images"] = await _time(len(reservations), settle)
    return results


def run() -> Report:
    server, endpoint = start_moto()
    try:
        results = asyncio.run(_measure(endpoint))
    finally:
        server.stop()
    rows = [
        [name, str(len(took)), fmt_ms(percentile(took, 50)), fmt_ms(percentile(took, 99))]
        for name, took in results.items()
    ]
    warm = results["keys mode, caches warm"]
    reserve = results["quota reservation, before the call"]
    added = percentile(warm, 50) + percentile(reserve, 50)
    return Report(
        name="keys",
        title="added latency of gateway keys per request (moto stand-ins on loopback)",
        tables=[Table("Per request", ["step", "n", "p50", "p99"], rows)],
        notes=[
            "warm: key record, secret and set-aside records cached (KEY_CACHE_TTL, "
            "SECRET_CACHE_TTL, 5 s); cold: a GetItem, a GetSecretValue and a GetItem each time",
            "a generation also reserves its images before the call (one conditional UpdateItem) "
            "and settles after them (give-back and month count, two UpdateItems at once)",
        ],
        data={name: took for name, took in results.items()},
        summary=[
            (
                "keys mode: cached key lookup and token lease, p50",
                fmt_ms(percentile(warm, 50)),
                "< 5 ms",
            ),
            ("keys mode: lookup + quota reservation before the call, p50", fmt_ms(added), "-"),
        ],
    )


if __name__ == "__main__":
    print(run().markdown())
