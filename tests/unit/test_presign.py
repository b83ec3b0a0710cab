"""Presigned GET URLs signed by the gateway (`imagegw.infra.presign`) are botocore's, byte for
byte: the same key, lifetime, credentials and clock give the same link, for AWS's virtual-host
URLs in any region, a custom endpoint's path-style URLs, and temporary credentials (a session
token); and the store hands such links out without a worker thread."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from fakes.png import make_png
from imagegw.infra.config import Settings
from imagegw.infra.media import check_image
from imagegw.infra.presign import PROBE_KEY, Presigner
from imagegw.infra.storage import RESULTS, ImageStore

NOW = dt.datetime(2026, 12, 7, 23, 59, 58)
KEYS = ["images/AbC_d-e0123456789abcdefghijklm.png", "uploads/2026/12/07/x_Y-z.webp"]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    """botocore's signing clock, set by the test."""
    now = [NOW]
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: now[0])

    def set_to(when: dt.datetime) -> None:
        now[0] = when

    return set_to


def _client(region: str, endpoint: str | None, token: str | None) -> tuple[object, Credentials]:
    session = boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        region_name=region,
    )
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint else "virtual"},
        ),
    )
    credentials = session.get_credentials()
    assert credentials is not None
    return client, credentials


@pytest.mark.parametrize(
    ("region", "endpoint", "token"),
    [
        ("us-east-1", None, None),
        ("eu-west-1", None, None),
        ("ap-southeast-2", None, "FwoGZXIvYXdzE+session/token=="),
        ("us-east-1", "http://127.0.0.1:5123", None),
        ("eu-central-1", "https://minio.internal", "tok"),
    ],
)
def test_a_link_is_the_one_botocore_signs(
    region: str, endpoint: str | None, token: str | None, clock: Callable[[dt.datetime], None]
) -> None:
    # Given a client and the presigner learnt from one link botocore signed
    client, credentials = _client(region, endpoint, token)
    probe = client.generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": "my-bucket", "Key": PROBE_KEY}, ExpiresIn=60
    )
    signer = Presigner.learn(probe, credentials)
    assert signer is not None

    # When both sign the same keys, at the same instants (across midnight: a new signing key)
    for when in (NOW, NOW + dt.timedelta(seconds=5)):
        clock(when)
        for key in KEYS:
            for ttl in (900, 3600):
                ours = signer.url(key, ttl, when)
                theirs = client.generate_presigned_url(  # type: ignore[attr-defined]
                    "get_object", Params={"Bucket": "my-bucket", "Key": key}, ExpiresIn=ttl
                )
                # Then the links are the same, byte for byte
                assert ours == theirs


def test_keys_the_gateway_does_not_make_are_left_to_botocore() -> None:
    assert Presigner.fits(KEYS[0])
    for key in ("images/a b.png", "images/é.png", "images/../x.png", "images/a%2F.png", ""):
        assert not Presigner.fits(key)


def test_a_stored_result_link_is_signed_without_botocore_and_serves_it(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stored result in the stand-in bucket
    store = ImageStore(make_settings())
    image = check_image(make_png(16, 16), max_bytes=1 << 20)

    async def save_and_link() -> tuple[str, str, str]:
        try:
            name = await store.save_result(image)
            first = await store.result_link(name)  # learns the shape from botocore, once
            assert first is not None
            # When more links are asked for, botocore is not asked again
            monkeypatch.setattr(
                store.s3, "generate_presigned_url", lambda *a, **k: pytest.fail("botocore")
            )
            again = await store.presign(RESULTS + name, 60)
            return name, first, again
        finally:
            await store.aclose()

    name, first, again = asyncio.run(save_and_link())

    # Then each link serves the stored image, and says its own lifetime
    for link in (first, again):
        assert f"/{RESULTS}{name}?" in link
        assert httpx.get(link, timeout=30).content == image.data
    assert "X-Amz-Expires=60&" in again
