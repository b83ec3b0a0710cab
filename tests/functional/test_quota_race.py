"""A key's quota under concurrency on `make run`'s DynamoDB stand-in (moto's server):
DynamoDB applies the writes to one item one at a time, so a conditional update reserving images
cannot overshoot; moto's server answers each request in a thread of its own and its update
reads, checks and writes without a lock. `imagegw.frontends.local.serialize_dynamodb_writes`
makes the stand-in do what DynamoDB does; the end-to-end race (`tests/e2e/test_gateway_keys.py`)
goes through the gateway, this one straight at the table, with threads switching as often as
the interpreter allows so that an unserialized update is all but sure to overshoot.

Settlements at once: DynamoDB cancels a transaction (a job's settlement) or refuses an update
(a request's count) while another transaction writes the same item, which moto never does;
`fakes.aws.TransactionConflicts` does, and every image made must still be counted once.
"""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from collections.abc import Iterator

import anyio
import boto3
import pytest

from fakes.aws import TransactionConflicts
from imagegw.access.gate import Access, Reservation
from imagegw.access.table import AccessTable, KeyRecord, QuotaFull
from imagegw.frontends.local import create_access_table, serialize_dynamodb_writes, start_moto
from imagegw.infra.config import Settings

pytestmark = pytest.mark.functional
NOON = 1_764_504_000


@pytest.fixture
def table() -> Iterator[AccessTable]:
    """The access table on a moto server of this process, its writes serialized as the local
    run serializes them."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    serialize_dynamodb_writes()
    server, endpoint = start_moto()
    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    name = f"race-{uuid.uuid4().hex[:8]}"
    create_access_table(client, name)
    try:
        yield AccessTable(name, "us-east-1", client=client)
    finally:
        server.stop()


def reserve_at_once(table: AccessTable, key: str, requests: int, quota: int) -> int:
    """`requests` one-image reservations on `key` released together; how many got through."""
    granted: list[int] = []
    start = threading.Barrier(requests)

    def one() -> None:
        start.wait()
        try:
            table.reserve(key, "m", 1, quota, NOON)
            granted.append(1)
        except QuotaFull:
            pass

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(granted)


def test_fifty_concurrent_reservations_on_a_quota_of_five_never_overshoot(
    table: AccessTable,
) -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show at once
    try:
        granted = [reserve_at_once(table, f"key-{run}", 50, 5) for run in range(3)]
    finally:
        sys.setswitchinterval(interval)

    assert granted == [5, 5, 5]
    day = table.usage("key-0", NOON)[0]
    assert day.images == 5 and day.by_model == {"m": 5}


def test_jobs_and_requests_of_one_key_settling_at_once_count_every_image_once(
    table: AccessTable,
) -> None:
    # Given a key with six durable jobs of 2 images each and two requests of 2, all reserved,
    # on a table that refuses writes to items a transaction is writing, as DynamoDB does
    key = "key-settle"
    record = KeyRecord(hash=key, name="pat", created=1, quota=100)
    for _ in range(8):
        table.reserve(key, "m", 2, 100, NOON)
    conflicting = TransactionConflicts(table.client)
    access = Access(
        Settings(),
        table=AccessTable(table.name, table.region, client=conflicting),
        clock=lambda: NOON,
    )

    # When they all end at once, each having made 1 of its 2 images, and one job's settling
    # step runs twice (Step Functions runs a task at least once)
    async def settle_all() -> None:
        async with anyio.create_task_group() as group:
            for job in [*range(6), 0]:
                group.start_soon(access.settle_job, f"job-{job}", key, "m", 2, 1, NOON)
            for _ in range(2):
                group.start_soon(Reservation(access, record, "m", 2, NOON).settle, 1)

    anyio.run(settle_all)

    # Then DynamoDB refused some writes meanwhile, and still every image made is counted once
    # in the month and every image not made is given back to the day
    assert conflicting.conflicts > 0
    day, month = table.usage(key, NOON)
    assert month.images == 8 and month.by_model == {"m": 8}
    assert day.images == 8 and day.by_model == {"m": 8}
