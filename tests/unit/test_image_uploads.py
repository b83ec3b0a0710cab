"""Uploads to the bucket (`ImageStore._put`): S3's POST Object with a form signed once per
instance and key prefix, sent through a pooled connection.

Against moto's S3 server (the stand-in of `make run`): what is stored is what was given, and the
link the gateway hands out serves it. moto does not check POST policies, so what real S3 checks
is asserted on the form itself: every field sent is covered by a condition of the signed policy
(S3 refuses an upload otherwise), and the key and type are held to their prefix. A fake bucket
on loopback answers 403 and 5xx to see what the store does then.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fakes.png import make_png
from fakes.server import ServerThread
from imagegw.errors import StorageError
from imagegw.infra.config import Settings
from imagegw.infra.media import ImageBytes, check_image
from imagegw.infra.storage import RESULTS, UPLOAD_TRIES, UPLOADS, ImageStore

#: a session token stands for every secret of a signed form (policy signature, credentials)
TOKEN = "SESSIONTOKENs3cr3t-do-not-log"


def image(width: int = 40, height: int = 30) -> ImageBytes:
    return check_image(make_png(width, height), max_bytes=1 << 20)


@pytest.fixture
def store(make_settings: Callable[..., Settings]) -> ImageStore:
    return ImageStore(make_settings())


async def _saved(store: ImageStore, images: list[ImageBytes]) -> list[str]:
    try:
        return list(await asyncio.gather(*(store.save_result(i) for i in images)))
    finally:
        await store.aclose()


def test_a_stored_result_is_in_the_bucket_and_its_link_serves_it(store: ImageStore) -> None:
    # Given three generated images of different sizes
    images = [image(40, 30), image(64, 64), image(8, 100)]

    # When they are stored at once
    names = asyncio.run(_saved(store, images))

    # Then each is in the bucket under images/, with its bytes and its type
    for name, given in zip(names, images, strict=True):
        stored = store.s3.get_object(Bucket=store.bucket, Key=RESULTS + name)
        assert stored["Body"].read() == given.data
        assert stored["ContentType"] == "image/png"
        # and the link a client is redirected to serves it
        link = asyncio.run(store.result_link(name))
        assert link is not None
        assert httpx.get(link, timeout=30).content == given.data


def test_an_input_image_is_uploaded_under_uploads(store: ImageStore) -> None:
    given = image(16, 16)

    async def upload() -> str:
        try:
            return await store.upload(given)
        finally:
            await store.aclose()

    key = asyncio.run(upload())

    assert key.startswith(UPLOADS)
    assert store.s3.get_object(Bucket=store.bucket, Key=key)["Body"].read() == given.data


def test_a_burst_of_uploads_signs_the_form_once(store: ImageStore) -> None:
    signed: list[str] = []
    real = store.s3

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def generate_presigned_post(self, *args: Any, **kwargs: Any) -> Any:
            signed.append(args[1] if len(args) > 1 else kwargs["Key"])
            return real.generate_presigned_post(*args, **kwargs)

    store._s3 = Counting()
    names = asyncio.run(_saved(store, [image() for _ in range(12)]))

    assert len(set(names)) == 12
    assert signed == [RESULTS + "${filename}"]


# ------------------------------------------------------------ what real S3 checks of a form


class FakeBucket:
    """A bucket on loopback that records each POST's form and answers with `statuses` in turn
    (then 204)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.forms: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        form = await request.form()
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            fields[name] = value if isinstance(value, str) else await value.read()
        with self.lock:
            self.forms.append(fields)
            status = self.statuses.pop(0) if self.statuses else 204
        body = b"<Error><Code>AccessDenied</Code></Error>" if status >= 400 else b""
        await Response(body, status_code=status)(scope, receive, send)


class SigningClient:
    """What a boto3 client's `generate_presigned_post` gives, pointed at the fake bucket, with a
    session token among the fields, as on Lambda; the real client for the rest."""

    def __init__(self, real: Any, url: str) -> None:
        self.real, self.url, self.signed = real, url, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def generate_presigned_post(
        self, bucket: str, key: str, Conditions: list[Any], ExpiresIn: int
    ) -> dict[str, Any]:
        self.signed += 1
        conditions = [
            {"bucket": bucket},
            ["starts-with", "$key", key.removesuffix("${filename}")],
            *Conditions,
            {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
            {"x-amz-credential": "AKIDEXAMPLE/20261206/us-east-1/s3/aws4_request"},
            {"x-amz-date": "20261206T000000Z"},
            {"x-amz-security-token": TOKEN},
        ]
        policy = {"expiration": "2026-12-06T00:15:00Z", "conditions": conditions}
        fields = {
            "key": key,
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": "AKIDEXAMPLE/20261206/us-east-1/s3/aws4_request",
            "x-amz-date": "20261206T000000Z",
            "x-amz-security-token": TOKEN,
            "policy": base64.b64encode(json.dumps(policy).encode()).decode(),
            "x-amz-signature": f"sig{self.signed}",
        }
        return {"url": self.url, "fields": fields}


@pytest.fixture
def bucket() -> Iterator[tuple[FakeBucket, str]]:
    fake = FakeBucket()
    with ServerThread(fake) as server:
        yield fake, f"{server.url}/bucket"


def _store_at(make_settings: Callable[..., Settings], url: str) -> tuple[ImageStore, SigningClient]:
    store = ImageStore(make_settings())
    client = SigningClient(store.s3, url)
    store._s3 = client
    return store, client


def _covered(name: str, value: str, conditions: list[Any]) -> bool:
    """Whether a form field meets a condition of the policy (S3's rule: every field but the
    file, the policy and the signature is named by one)."""
    for condition in conditions:
        if isinstance(condition, dict) and condition.get(name) == value:
            return True
        if isinstance(condition, list) and condition[1:2] == [f"${name}"]:
            kind, _, expected = condition
            if kind == "eq" and value == expected:
                return True
            if kind == "starts-with" and value.startswith(expected):
                return True
    return False


def test_every_field_of_an_upload_is_covered_by_its_signed_policy(
    make_settings: Callable[..., Settings], bucket: tuple[FakeBucket, str]
) -> None:
    fake, url = bucket
    store, _ = _store_at(make_settings, url)
    given = image(20, 10)

    name = asyncio.run(_saved(store, [given]))[0]

    (form,) = fake.forms
    assert form["key"] == RESULTS + name and form["file"] == given.data
    assert form["Content-Type"] == "image/png"
    conditions = json.loads(base64.b64decode(form["policy"]))["conditions"]
    unsigned = {"file", "policy", "x-amz-signature"}
    for field, value in form.items():
        if field not in unsigned:
            assert _covered(field, value, conditions), field
    # and the policy holds keys to the prefix and the type to images, with a size range
    assert ["starts-with", "$key", RESULTS] in conditions
    assert ["starts-with", "$Content-Type", "image/"] in conditions
    assert any(isinstance(c, list) and c[0] == "content-length-range" for c in conditions)


def test_a_refused_form_is_signed_again_and_the_upload_goes_through(
    make_settings: Callable[..., Settings], bucket: tuple[FakeBucket, str]
) -> None:
    # Given a bucket that refuses the first form (its credentials rotated, say)
    fake, url = bucket
    fake.statuses = [403]
    store, client = _store_at(make_settings, url)

    # When an image is stored
    asyncio.run(_saved(store, [image()]))

    # Then it was sent again with a freshly signed form, which the bucket took
    assert client.signed == 2
    assert [f["x-amz-signature"] for f in fake.forms] == ["sig1", "sig2"]


def test_a_failing_bucket_is_a_storage_error_that_names_no_secret(
    make_settings: Callable[..., Settings],
    bucket: tuple[FakeBucket, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a bucket that answers 503 to everything
    fake, url = bucket
    fake.statuses = [503] * 10
    store, _ = _store_at(make_settings, url)

    # When an image is stored
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as raised:
        asyncio.run(_saved(store, [image()]))

    # Then it was tried UPLOAD_TRIES times, and the error is the bucket's, retryable, secret-free
    assert len(fake.forms) == UPLOAD_TRIES
    assert raised.value.code == "storage_unavailable"
    assert "HTTP 503" in raised.value.message or "BucketRefused" in raised.value.message
    assert TOKEN not in raised.value.message and "sig1" not in raised.value.message
    assert TOKEN not in caplog.text
