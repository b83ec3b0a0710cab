"""A key's daily quota under concurrency on `make run`'s DynamoDB stand-in (moto's server):
DynamoDB applies the writes to one item one at a time, so a conditional update reserving images
cannot overshoot; moto's server answers each request in a thread of its own and its update
reads, checks and writes without a lock. `imagegw.frontends.local.serialize_dynamodb_writes`
makes the stand-in do what DynamoDB does; the end-to-end race (`tests/e2e/test_gateway_keys.py`)
goes through the gateway, this one straight at the table, with threads switching as often as
the interpreter allows so that an unserialized update is all but sure to overshoot.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import boto3
import pytest

from imagegw.access.table import AccessTable, QuotaFull
from imagegw.frontends.local import create_access_table, serialize_dynamodb_writes, start_moto

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
    create_access_table(client, "race")
    try:
        yield AccessTable("race", "us-east-1", client=client)
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
