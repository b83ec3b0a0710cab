"""A mocked AWS account (moto) for the durable-job steps: a bucket and a KMS key; access tables.

moto's mock is started and stopped by hand *without a reset*: a reset would wipe every moto
backend of the test process, the session's S3 stand-in server (`conftest.s3_env`) included.
"""

from __future__ import annotations

import os
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
    credentials = {k: v for k, v in env.items() if k.startswith("AWS_")}
    saved = {k: os.environ.get(k) for k in credentials}
    os.environ.update(credentials)
    try:
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
