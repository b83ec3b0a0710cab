"""Fixtures of the functional tests: a mocked AWS account (moto) for the durable-job steps, and
the state machine run whole in it (`machine.World`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import boto3
import pytest

from fakes.aws import ENDPOINT_VARIABLES, REGION, MockedAws, mocked_aws
from fakes.faulty_jobs import FaultyModelScope
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from functional.machine import World, make_world


@pytest.fixture
def aws(
    monkeypatch: pytest.MonkeyPatch, fake_ms: FakeModelScope, s3_env: dict[str, str]
) -> Iterator[MockedAws]:
    """moto's mock (`fakes.aws`), with the environment the task handlers read on Lambda: the
    bucket, the KMS key, the fake ModelScope. Uploads to the bucket are plain HTTP POSTs, which
    moto's in-process mock does not see: they go to the session's moto server on loopback
    (`s3_env`), which keeps its buckets in the same moto backends as the mock."""
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with mocked_aws() as account:
        for name, value in {
            "BUCKET": account.bucket,
            "S3_ENDPOINT_URL": s3_env["S3_ENDPOINT_URL"],
            "AWS_REGION": account.region,
            "MODELSCOPE_BASE_URL": fake_ms.base_url,  # type: ignore[attr-defined]
            "JOB_KEY_ID": account.key_id,
            "POWERTOOLS_METRICS_DISABLED": "true",
        }.items():
            monkeypatch.setenv(name, value)
        yield account


@pytest.fixture
def world(
    aws: MockedAws, monkeypatch: pytest.MonkeyPatch, fake_ms: FakeModelScope
) -> Callable[..., World]:
    """A state machine in the mocked account, its tasks dispatched to the real handlers."""
    return make_world(aws, monkeypatch, fake_ms)


@pytest.fixture
def faulty_ms(
    _fake_ms_server: tuple[ServerThread, SwappableApp], fake_ms: FakeModelScope
) -> FaultyModelScope:
    """The fake ModelScope the tasks talk to, with fault knobs (same server, same URL)."""
    fake = FaultyModelScope()
    fake.base_url = fake_ms.base_url  # type: ignore[attr-defined]
    _fake_ms_server[1].app = fake
    return fake


@pytest.fixture
def hooked(
    world: Callable[..., World], aws: MockedAws, monkeypatch: pytest.MonkeyPatch
) -> tuple[World, str]:
    """A world whose deployment has a webhook secret (the API side and the task functions)."""
    deployment = "d" * 48
    arn = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name=f"webhooks-{uuid.uuid4().hex}", SecretString=deployment
    )["ARN"]
    monkeypatch.setenv("WEBHOOK_SECRET", arn)
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")  # the receiver is on loopback
    return world(webhook_secret=arn, allow_private_urls=True), deployment
