"""The gateway's AWS clients are botocore's, from one session per process (`imagegw.infra.aws`),
not boto3's: what they sign must be exactly what boto3's client signs with the same settings,
credentials and clock (the links the gateway hands out, the upload form S3 checks), and a chat
whose links are the provider's builds no S3 client at all."""

from __future__ import annotations

import asyncio
import threading
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegw.infra import aws
from imagegw.infra.config import Settings
from imagegw.infra.storage import POLICY_MAX_BYTES, POLICY_SECONDS, ImageStore
from imagegw.runners.gateway import Gateway

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1")
ENDPOINTS = (None, "http://127.0.0.1:5000", "https://minio.example.com:9000")
#: bucket names: DNS labels, dots now and then (virtual hosting cannot use those over HTTPS)
BUCKETS = st.from_regex(r"[a-z0-9][a-z0-9.-]{1,40}[a-z0-9]", fullmatch=True)
KEYS = st.text(min_size=1, max_size=80)
TRIES = 5


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The role's credentials as Lambda gives them (with a session token): the process's
    session reads them when it first needs them (it may have read others before)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")


@cache
def stores(region: str, endpoint: str | None) -> tuple[ImageStore, Any]:
    """The gateway's store for the region and endpoint, and boto3's client with the same
    settings and the credentials the gateway's session holds."""
    store = ImageStore(Settings(bucket="b", aws_region=region, s3_endpoint_url=endpoint))
    ours = store.s3
    held = aws.session().get_credentials()
    assert held is not None
    frozen = held.get_frozen_credentials()
    theirs = boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        config=ours.meta.config,
        aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key,
        aws_session_token=frozen.token,
    )
    return store, theirs


def _signed_at(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Date"][0]


def _same_second(make: Any, when: Any) -> tuple[Any, Any]:
    """`make()` (ours, theirs) until both were signed within the same second (`when`)."""
    for _ in range(TRIES):
        ours, theirs = make()
        if when(ours) == when(theirs):
            return ours, theirs
    raise AssertionError("never signed within one second")


@settings(max_examples=60, deadline=None)
@given(
    region=st.sampled_from(REGIONS),
    endpoint=st.sampled_from(ENDPOINTS),
    bucket=BUCKETS,
    key=KEYS,
    ttl=st.integers(min_value=60, max_value=604800),
)
def test_a_presigned_link_is_the_one_boto3s_client_signs(
    region: str, endpoint: str | None, bucket: str, key: str, ttl: int
) -> None:
    # Given the gateway's store and boto3's client, same settings, credentials and clock
    store, theirs = stores(region, endpoint)
    store.settings = store.settings.model_copy(update={"bucket": bucket})

    def make() -> tuple[str, str]:
        ours = asyncio.run(store.presign(key, ttl))
        params = {"Bucket": bucket, "Key": key}
        return ours, theirs.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)

    # When each presigns a GET of the key
    ours, boto3s = _same_second(make, _signed_at)

    # Then the links are the same, byte for byte
    assert ours == boto3s


@settings(max_examples=60, deadline=None)
@given(
    region=st.sampled_from(REGIONS),
    endpoint=st.sampled_from(ENDPOINTS),
    bucket=BUCKETS,
    prefix=st.sampled_from(("uploads/", "images/")),
)
def test_an_upload_form_is_the_one_boto3s_client_signs(
    region: str, endpoint: str | None, bucket: str, prefix: str
) -> None:
    # Given the gateway's S3 client and boto3's, same settings, credentials and clock
    store, theirs = stores(region, endpoint)

    def make() -> tuple[dict[str, Any], dict[str, Any]]:
        # the form the store signs (`ImageStore._sign_form`), by each client
        def post(client: Any) -> dict[str, Any]:
            signed: dict[str, Any] = client.generate_presigned_post(
                bucket,
                prefix + "${filename}",
                Conditions=[
                    ["starts-with", "$Content-Type", "image/"],
                    ["content-length-range", 1, POLICY_MAX_BYTES],
                ],
                ExpiresIn=POLICY_SECONDS,
            )
            return signed

        return post(store.s3), post(theirs)

    # When each signs the upload form of a prefix
    ours, boto3s = _same_second(make, lambda form: form["fields"]["x-amz-date"])

    # Then the URL, the policy and its signature are the same, the session token among them
    # when the credentials have one (the process's session reads them once: another test may
    # have made it with credentials of its own)
    assert ours == boto3s
    held = aws.session().get_credentials()
    assert held is not None
    token = held.get_frozen_credentials().token
    assert ours["fields"].get("x-amz-security-token") == token


def test_clients_made_at_once_from_many_threads_all_work() -> None:
    # Given clients of two services asked for from many threads at once (the S3 client is
    # built in the background while a worker thread builds the table's)
    made: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def build(service: str) -> None:
        start.wait()
        try:
            made.append(aws.client(service, region_name="eu-west-1"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=build, args=("s3" if i % 2 else "dynamodb",)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then each was made, for its service and region, from one session
    assert errors == []
    assert sorted(client.meta.service_model.service_name for client in made) == (
        ["dynamodb"] * 4 + ["s3"] * 4
    )
    assert {client.meta.region_name for client in made} == {"eu-west-1"}


class Store:
    """A stand-in for the bucket that counts the gateway's warm-ups of its client."""

    def __init__(self) -> None:
        self.warmed = 0

    def warm(self) -> None:
        self.warmed += 1


@pytest.mark.anyio
@pytest.mark.parametrize(("links", "warmed"), [("provider", 0), ("stored", 1), ("inline", 1)])
async def test_the_first_provider_call_builds_the_s3_client_only_where_results_are_stored(
    links: str, warmed: int
) -> None:
    # Given a gateway with a bucket whose results are delivered as IMAGE_LINKS says
    store = Store()
    gateway = Gateway(Settings(bucket="b", image_links=links), store=store)  # type: ignore[arg-type]
    try:
        # When its provider client sends its first call
        request = gateway.client.build_request("POST", "http://127.0.0.1:9/v1/images")
        for hook in gateway.client.event_hooks["request"]:
            await hook(request)
    finally:
        await gateway.client.aclose()

    # Then the S3 client is built in the background where results are copied into the bucket,
    # and not at all where the provider's links are passed on
    assert store.warmed == warmed
