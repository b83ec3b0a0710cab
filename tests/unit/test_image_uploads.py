"""Uploads to the bucket (`ImageStore._put`): S3's POST Object with a form signed once per
instance and key prefix, sent through a pooled connection.

Against moto's S3 server (the stand-in of `make run`): what is stored is what was given, and the
link the gateway hands out serves it. moto does not check POST policies, so what real S3
checks is asserted on the form botocore signs: every field sent is covered by a condition of
the signed policy (S3 refuses an upload otherwise), and the key and type are held to their
prefix. A fake bucket
on loopback answers 403 and 5xx to see what the store does then.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fakes.image_host import FakeImageHost
from fakes.png import make_png
from fakes.server import ServerThread
from imagegw.core.deliver import deliver
from imagegw.errors import StorageError
from imagegw.infra.clients import add_transport_layer, remove_transport_layer
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.media import ImageBytes, check_image
from imagegw.infra.storage import RESULTS, UPLOAD_TRIES, UPLOADS, ImageStore, own_file_name

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


def test_a_large_image_is_stored_whole(store: ImageStore) -> None:
    # Given a 600 KiB PNG (its bytes past the size the store sends with the form in one write:
    # a private ancillary chunk of random bytes, which decoders skip)
    png = make_png(32, 32)
    filler = os.urandom(600 * 1024)
    chunk = struct.pack(">I", len(filler)) + b"prVt" + filler
    chunk += struct.pack(">I", zlib.crc32(b"prVt" + filler))
    given = check_image(png[:-12] + chunk + png[-12:], max_bytes=1 << 21)

    # When it is stored / Then the bucket holds every byte of it
    (name,) = asyncio.run(_saved(store, [given]))
    stored = store.s3.get_object(Bucket=store.bucket, Key=RESULTS + name)
    assert stored["Body"].read() == given.data


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
    """A bucket on loopback that records each POST's form and each GET, and answers with
    `statuses` in turn (then 204 to a POST, and to a GET 206 with one byte)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        #: the body of every answer, when set (else S3's: none, or an error's XML)
        self.body: bytes | None = None
        self.forms: list[dict[str, Any]] = []
        #: each GET's path, query and headers
        self.gets: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if request.method == "GET":  # an object's bytes: a presigned GET
            with self.lock:
                self.gets.append((request.url.path, request.url.query, request.headers))
                status = self.statuses.pop(0) if self.statuses else 206
            body = b"<Error><Code>NoSuchKey</Code></Error>" if status >= 400 else b"\x89"
            await Response(body, status_code=status)(scope, receive, send)
            return
        form = await request.form()
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            fields[name] = value if isinstance(value, str) else await value.read()
        with self.lock:
            self.forms.append(fields)
            status = self.statuses.pop(0) if self.statuses else 204
        body = b"<Error><Code>AccessDenied</Code></Error>" if status >= 400 else b""
        if self.body is not None:
            body = self.body
        await Response(body, status_code=status)(scope, receive, send)


class SigningClient:
    """A boto3 client with a session token among its credentials, as on Lambda, whose
    `generate_presigned_post` signs as botocore does but points the form at the fake bucket."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.real = boto3.client(
            "s3",
            region_name=settings.aws_region,
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="local",
            aws_session_token=TOKEN,
            config=Config(signature_version="s3v4"),  # as `ImageStore._client`
        )
        self.url, self.signatures = url, list[str]()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def generate_presigned_post(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        post: dict[str, Any] = self.real.generate_presigned_post(*args, **kwargs)
        self.signatures.append(post["fields"]["x-amz-signature"])
        return {**post, "url": self.url}

    def generate_presigned_url(self, *args: Any, **kwargs: Any) -> str:
        signed = urlsplit(self.real.generate_presigned_url(*args, **kwargs))
        return f"{self.url}{signed.path}?{signed.query}"


@pytest.fixture
def bucket() -> Iterator[tuple[FakeBucket, str]]:
    fake = FakeBucket()
    with ServerThread(fake) as server:
        yield fake, f"{server.url}/bucket"


def _store_at(make_settings: Callable[..., Settings], url: str) -> tuple[ImageStore, SigningClient]:
    settings = make_settings()
    client = SigningClient(settings, url)
    return ImageStore(settings, client=client), client


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
    assert form["x-amz-security-token"] == TOKEN
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
    assert len(client.signatures) == 2
    assert [f["x-amz-signature"] for f in fake.forms] == client.signatures


def test_a_failing_bucket_is_a_storage_error_that_names_no_secret(
    make_settings: Callable[..., Settings],
    bucket: tuple[FakeBucket, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a bucket that answers 503 to everything
    fake, url = bucket
    fake.statuses = [503] * 10
    store, client = _store_at(make_settings, url)

    # When an image is stored
    with caplog.at_level(logging.INFO), pytest.raises(StorageError) as raised:
        asyncio.run(_saved(store, [image()]))

    # Then it was tried UPLOAD_TRIES times, and the error is the bucket's, retryable, secret-free
    assert len(fake.forms) == UPLOAD_TRIES
    assert raised.value.code == "storage_unavailable"
    assert "HTTP 503" in raised.value.message or "BucketRefused" in raised.value.message
    (signature,) = client.signatures
    for secret in (TOKEN, signature):
        assert secret not in raised.value.message and secret not in caplog.text


def test_a_bucket_answer_too_large_to_be_s3_s_is_a_storage_error(
    make_settings: Callable[..., Settings], bucket: tuple[FakeBucket, str]
) -> None:
    # Given a bucket endpoint that answers an upload with 1 MiB (S3 answers a POST with an
    # empty body or an error's XML)
    fake, url = bucket
    fake.statuses, fake.body = [200], b"x" * (1 << 20)
    store, client = _store_at(make_settings, url)

    # When an image is stored / Then it is refused after reading no more than S3 would send,
    # a storage error naming no secret
    with pytest.raises(StorageError) as raised:
        asyncio.run(_saved(store, [image()]))
    assert raised.value.code == "storage_unavailable"
    assert len(fake.forms) == 1
    (signature,) = client.signatures
    assert TOKEN not in raised.value.message and signature not in raised.value.message


def test_a_burst_past_the_pools_connections_waits_its_turn_before_building_its_request(
    make_settings: Callable[..., Settings],
    bucket: tuple[FakeBucket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a store with 3 upload connections, whose uploads are held once their request is
    # being built and sent
    monkeypatch.setattr("imagegw.infra.storage.UPLOAD_CONNECTIONS", 3)
    fake, url = bucket
    store, _ = _store_at(make_settings, url)
    real_post = store._post
    sending: list[str] = []

    async def burst() -> tuple[int, list[str]]:
        release = asyncio.Event()

        async def held_post(form: Any, key: str, given: ImageBytes, transports: Any) -> int:
            sending.append(key)
            await release.wait()
            return await real_post(form, key, given, transports)

        store._post = held_post  # type: ignore[method-assign]
        saves = asyncio.gather(*(store.save_result(image()) for _ in range(10)))
        for _ in range(100):  # every upload that can start has started
            await asyncio.sleep(0.01)
        building = len(sending)
        release.set()
        try:
            return building, list(await saves)
        finally:
            await store.aclose()

    # When 10 images are stored at once
    building, names = asyncio.run(burst())

    # Then only 3 built a request while the others waited (holding no request, no body), and
    # all 10 were stored in the end
    assert building == 3
    assert len(set(names)) == 10 and len(fake.forms) == 10


def test_a_burst_of_stored_results_downloads_no_more_images_than_it_has_upload_turns(
    make_settings: Callable[..., Settings],
    image_host: FakeImageHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a store with 3 upload connections whose uploads are held, and 10 results linked
    # by a provider's image host
    monkeypatch.setattr("imagegw.infra.storage.UPLOAD_CONNECTIONS", 3)
    settings = make_settings(image_links="stored")
    store = ImageStore(settings)
    fetcher = Fetcher(settings)
    refs = []
    for index in range(10):
        image_host.files[f"r{index}.png"] = make_png(20 + index, 20)
        refs.append(f"{image_host.url}/files/r{index}.png")
    real_post = store._post

    async def burst() -> tuple[int, tuple[str, ...]]:
        release = asyncio.Event()

        async def held_post(form: Any, key: str, given: ImageBytes, transports: Any) -> int:
            await release.wait()
            return await real_post(form, key, given, transports)

        store._post = held_post  # type: ignore[method-assign]
        links = asyncio.ensure_future(
            deliver(refs, settings=settings, store=store, fetcher=fetcher, base_url="http://gw")
        )
        for _ in range(100):  # every download that can start has been answered
            await asyncio.sleep(0.01)
        downloaded = len(image_host.requests)
        release.set()
        try:
            return downloaded, await links
        finally:
            await store.aclose()
            await fetcher.aclose()

    # When the 10 are delivered with stored links at once
    downloaded, links = asyncio.run(burst())

    # Then only 3 were downloaded while the uploads were held (the others held no image), and
    # each of the 10 was stored in the end, its own bytes under its lasting link
    assert downloaded == 3
    assert len(image_host.requests) == 10
    for index, link in enumerate(links):
        name = own_file_name(link)
        assert name is not None
        stored = store.s3.get_object(Bucket=settings.bucket, Key=RESULTS + name)["Body"].read()
        assert stored == image_host.files[f"r{index}.png"]


def test_the_s3_stand_in_keeps_its_connections_alive_as_s3_does(s3_env: dict[str, str]) -> None:
    # Given a client of the S3 stand-in (moto's server, as the tests and `make run` serve it)
    url = f"{s3_env['S3_ENDPOINT_URL']}/{s3_env['BUCKET']}"
    with httpx.Client() as client:
        # When it lists the bucket twice
        answers = [client.get(url) for _ in range(2)]

        # Then both answers came over one HTTP/1.1 connection, kept open (S3 keeps
        # connections alive; werkzeug's development server closes each one)
        assert [a.status_code for a in answers] == [200, 200]
        assert all(a.http_version == "HTTP/1.1" for a in answers)
        assert all(a.headers.get("connection", "").lower() != "close" for a in answers)
        streams = [a.extensions["network_stream"] for a in answers]
        assert len({s.get_extra_info("client_addr")[1] for s in streams}) == 1


# ------------------------------------------------------------ is a stored result there?


def test_a_lasting_link_is_the_presigned_url_of_a_stored_result_and_none_of_a_missing_one(
    store: ImageStore,
) -> None:
    # Given a stored result (in moto's bucket)
    given = image(24, 24)
    (name,) = asyncio.run(_saved(store, [given]))

    async def links() -> tuple[str | None, str | None]:
        try:
            return (
                await store.result_link(name),
                await store.result_link("A" * 32 + ".png"),
            )
        finally:
            await store.aclose()

    # When its link and the link of a name never stored are asked for
    found, missing = asyncio.run(links())

    # Then the first is a presigned URL that serves the image whole, the second none
    assert found is not None and httpx.get(found, timeout=30).content == given.data
    assert missing is None


def _link(store: ImageStore, name: str) -> str | None:
    async def ask() -> str | None:
        try:
            return await store.result_link(name)
        finally:
            await store.aclose()

    return asyncio.run(ask())


def test_a_stored_result_is_checked_with_its_own_link_for_one_byte(
    make_settings: Callable[..., Settings], bucket: tuple[FakeBucket, str]
) -> None:
    # Given a bucket that holds the object
    fake, url = bucket
    store, _ = _store_at(make_settings, url)
    name = "B" * 32 + ".png"

    # When the lasting link of a result is asked for
    link = _link(store, name)

    # Then the bucket was asked once, by the presigned URL handed out, for the first byte only
    assert link is not None
    ((path, query, headers),) = fake.gets
    assert path == urlsplit(link).path and path.endswith(RESULTS + name)
    assert query == urlsplit(link).query and "X-Amz-Signature=" in query
    assert headers["range"] == "bytes=0-0"


@pytest.mark.parametrize("status", [404, 403])
def test_a_result_the_bucket_does_not_hold_has_no_link(
    make_settings: Callable[..., Settings], bucket: tuple[FakeBucket, str], status: int
) -> None:
    # Given a bucket that answers the check as S3 answers for a missing key (404 to a caller
    # that may list the prefix, else 403)
    fake, url = bucket
    fake.statuses = [status]
    store, _ = _store_at(make_settings, url)

    # When the lasting link is asked for / Then there is none (the route's 404), asked once
    assert _link(store, "C" * 32 + ".png") is None
    assert len(fake.gets) == 1


def test_a_check_the_bucket_fails_is_tried_again_then_a_storage_error(
    make_settings: Callable[..., Settings], bucket: tuple[FakeBucket, str]
) -> None:
    # Given a bucket that fails once, then always
    fake, url = bucket
    fake.statuses = [503]
    store, _ = _store_at(make_settings, url)

    # When a link is asked for / Then the second try found the object
    assert _link(store, "D" * 32 + ".png") is not None
    assert len(fake.gets) == 2

    fake.statuses = [503] * UPLOAD_TRIES
    with pytest.raises(StorageError) as raised:
        _link(store, "D" * 32 + ".png")

    # and a bucket failing every try is a retryable storage error naming no secret
    assert len(fake.gets) == 2 + UPLOAD_TRIES
    assert raised.value.code == "storage_unavailable"
    assert TOKEN not in raised.value.message


class Recording(httpx.AsyncBaseTransport):
    """A transport layer (as X-Ray's in a traced task function) that records each request."""

    seen: ClassVar[list[httpx.Request]] = []

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        Recording.seen.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_check_in_a_traced_function_goes_through_its_transport_layer(
    make_settings: Callable[..., Settings], bucket: tuple[FakeBucket, str]
) -> None:
    # Given a transport layer over every client built (X-Ray's, in a traced task function),
    # and a bucket that holds one object and not the other
    fake, url = bucket
    fake.statuses = [206, 404]
    store, _ = _store_at(make_settings, url)
    Recording.seen = []
    add_transport_layer(Recording)
    try:
        # When two links are asked for
        found, missing = _link(store, "E" * 32 + ".png"), _link(store, "F" * 32 + ".png")
    finally:
        remove_transport_layer(Recording)

    # Then the layer saw both checks, each a GET of the first byte by the presigned URL, and
    # the answers are the same as without it
    assert found is not None and missing is None
    assert [(r.method, r.headers["range"]) for r in Recording.seen] == [("GET", "bytes=0-0")] * 2
    assert str(Recording.seen[0].url) == found
