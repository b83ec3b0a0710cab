"""A mocked AWS account (moto) for the durable-job steps: a bucket and a KMS key; access tables.

moto's mock is started and stopped by hand *without a reset*: a reset would wipe every moto
backend of the test process, the session's S3 stand-in server (`conftest.s3_env`) included.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import boto3
from moto import mock_aws

REGION: Final = "us-east-1"
BUCKET: Final = "image-jobs-under-moto"
#: moto's configuration for running state machines: its interpreter on, no Docker for Lambda
CONFIG: Final[Any] = {  # moto types it as a TypedDict
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
}
#: variables that would send AWS calls past the mock (to a stand-in server)
ENDPOINT_VARIABLES: Final = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SFN",
    "AWS_ENDPOINT_URL_KMS",
    "S3_ENDPOINT_URL",
)


@dataclass(frozen=True)
class MockedAws:
    s3: Any
    key_id: str
    bucket: str = BUCKET
    region: str = REGION


@contextmanager
def mocked_aws() -> Iterator[MockedAws]:
    """moto's mock for the duration, with a bucket and a KMS key in it."""
    mock = mock_aws(config=CONFIG)
    mock.start(reset=False)
    try:
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
        yield MockedAws(s3=s3, key_id=key_id)
    finally:
        mock.stop(remove_data=False)


#: the call budget of the tests' shared run-time estimate stores: moto on a busy CI machine may
#: take longer than the 0.5 s a deployed call gets (`shared_estimates.CALL_BUDGET`; a call over it
#: makes the store learn in memory alone for a while), and the budget is tested on its own (a
#: table that hangs, tests/unit/test_shared_estimates.py)
TABLE_BUDGET: Final = 30.0


def new_access_table() -> str:
    """A fresh access table in the mocked account, as the template declares it
    (`imagegw.frontends.local.create_access_table`); its name."""
    from imagegw.frontends.local import create_access_table

    name = f"access-{uuid.uuid4().hex[:12]}"
    create_access_table(boto3.client("dynamodb", region_name=REGION), name)
    return name


@contextmanager
def mocked_dynamodb() -> Iterator[None]:
    """moto's mock for the duration (no bucket, no key: for `new_access_table`)."""
    with mocked_account():
        yield


@contextmanager
def mocked_account() -> Iterator[None]:
    """moto's mock for the duration, empty but for what earlier tests left. Use it, never
    `with mock_aws():`, whose start and stop both wipe every moto backend of the process: the
    session's S3 stand-in would lose its bucket, and a later test that stores an image would
    fail with NoSuchBucket, depending on the order the tests ran in."""
    mock = mock_aws()
    mock.start(reset=False)
    try:
        yield
    finally:
        mock.stop(remove_data=False)


@contextmanager
def s3_stand_in_env(bucket: str) -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with one bucket
    (`imagegw.frontends.local.start_s3_stand_in`); the env that points at it. Its AWS_*
    credentials are in os.environ meanwhile, for boto3 in an in-process gateway; the previous
    values come back afterwards."""
    from imagegw.frontends.local import start_s3_stand_in

    server, env = start_s3_stand_in(bucket)
    try:
        with aws_credentials(env):
            yield env
    finally:
        server.stop()


@contextmanager
def aws_credentials(env: dict[str, str]) -> Iterator[None]:
    """The AWS_* values of `env` in os.environ meanwhile (for boto3 in this process); the
    previous values come back afterwards."""
    credentials = {k: v for k, v in env.items() if k.startswith("AWS_")}
    saved = {k: os.environ.get(k) for k in credentials}
    os.environ.update(credentials)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TransactionConflicts:
    """A DynamoDB client (moto's) that refuses writes as DynamoDB does while a transaction is
    writing one of their items, which moto never does: another transaction is cancelled
    (`TransactionCanceledException`, reason `TransactionConflict` for that item), an UpdateItem
    fails (`TransactionConflictException`). Nothing of a refused write is applied. The first
    transaction stays in progress until a write has run into it (or 10 s), so a test of
    concurrent writes meets a conflict every run. `conflicts` counts the refusals."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._writing: set[str] = set()
        self._first = True
        self._collided = threading.Event()
        self.conflicts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _refuse(self, items: list[str]) -> bool:
        """Whether one of `items` is being written by a transaction (counted when so)."""
        if self._writing.isdisjoint(items):
            return False
        self.conflicts += 1
        self._collided.set()
        return True

    def transact_write_items(self, **kwargs: Any) -> Any:
        items = [next(iter(op.values()))["Key"]["pk"]["S"] for op in kwargs["TransactItems"]]
        with self._lock:
            if self._refuse(items):
                reasons = [
                    {"Code": "TransactionConflict" if i in self._writing else "None"} for i in items
                ]
                error = {
                    "Error": {
                        "Code": "TransactionCanceledException",
                        "Message": "Transaction cancelled, please refer cancellation reasons",
                    },
                    "CancellationReasons": reasons,
                }
                raise self._client.exceptions.TransactionCanceledException(
                    error, "TransactWriteItems"
                )
            self._writing.update(items)
            first, self._first = self._first, False
        try:
            if first:
                self._collided.wait(10)
            return self._client.transact_write_items(**kwargs)
        finally:
            with self._lock:
                self._writing.difference_update(items)

    def update_item(self, **kwargs: Any) -> Any:
        with self._lock:
            if self._refuse([kwargs["Key"]["pk"]["S"]]):
                error = {
                    "Error": {
                        "Code": "TransactionConflictException",
                        "Message": "Transaction is ongoing for the item",
                    }
                }
                raise self._client.exceptions.TransactionConflictException(error, "UpdateItem")
        return self._client.update_item(**kwargs)
