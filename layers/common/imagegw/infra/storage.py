"""ImageStore: the private S3 bucket that holds input images (`uploads/`) and results
(`images/`), and hands out short-lived SigV4 presigned GET URLs for them.

Uploads are S3's POST Object (the browser-upload form): a POST policy is signed once per
instance and key prefix by botocore (`generate_presigned_post`: the bucket, keys under the
prefix, an image Content-Type, a size range, valid `POLICY_SECONDS`), and each image is then one
multipart POST of those signed fields, its key and its bytes through a pooled connection
(`imagegw.infra.transport`): no per-image signing and none of botocore's request pipeline, which
cost about 2.5 ms of CPU an image (issue 25). The policy is signed again before it expires and
after a 403 (rotated credentials); IAM-wise a POST is `s3:PutObject`, as `put_object` was.

Whether a stored object is there (the lasting link `GET /v1/files/{name}`, an input image that
is one of the gateway's links) is asked with the presigned URL the caller gets anyway: a GET of
its first byte through the same pooled connections (`_present`), not a botocore HeadObject in a
worker thread (its request pipeline: about 2 ms of CPU, and a second thread hop).

The other calls (GET, presigning) are botocore's (a low-level client from the process's
session, `imagegw.infra.aws`: boto3's client without boto3): synchronous, so they run in a
worker thread. The client is created on first use, so importing this module does no work and
tests can point it at moto (a moto *server*, for uploads and checks: they do not go through
botocore).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import re
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio.to_thread

from imagegw.errors import ConfigurationError, StorageError
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes, InputImage, check_image

if TYPE_CHECKING:  # httpx, httpcore and the pool are imported by the first upload (cold start)
    import httpcore
    import httpx

    from imagegw.infra.transport import PooledTransport

T = TypeVar("T")
#: whether the running task holds an upload turn (`ImageStore.turn`)
_HOLDING: Final[contextvars.ContextVar[bool]] = contextvars.ContextVar(
    "imagegw_upload_turn", default=False
)
#: S3's statuses to a GET of the first byte of an object (`ImageStore._present`): there (a
#: range, the whole, or the range of an empty object), and not there
_PRESENT: Final = frozenset({200, 206, 416})
_MISSING: Final = frozenset({403, 404})


def no_bucket() -> ConfigurationError:
    """The error for a setup without BUCKET asked to store an image (500 `no_bucket`); the
    front ends raise it before anything is started (`imagegw.core.deliver.check_bucket`)."""
    return ConfigurationError(
        "This gateway has no bucket to store images in: set BUCKET "
        "(or IMAGE_LINKS=provider, and send image URLs, not image files).",
        code="no_bucket",
    )


UPLOADS = "uploads/"
RESULTS = "images/"
#: the path of a stored result's lasting link: /v1/files/{name}
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-]{24,64}\.(png|jpg|webp|gif)$")
_OWN_LINK = re.compile(r"/v1/files/([A-Za-z0-9_-]{24,64}\.(?:png|jpg|webp|gif))(?:\?.*)?$")

#: an upload form's policy is valid this long, and signed again when less than
#: POLICY_MARGIN is left (an upload gives up after UPLOAD_TIMEOUT's read timeout)
POLICY_SECONDS: Final = 900
POLICY_MARGIN: Final = 120
#: the largest object a policy admits (S3's limit for one POST; images are far smaller)
POLICY_MAX_BYTES: Final = 5 * 1024**3
#: connect and read limits of an upload: an unreachable bucket must fail in seconds (callers
#: then fall back: a paid result is delivered by the provider's link)
UPLOAD_TIMEOUT: Final = {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}
#: tries of an upload that met a connection failure, a 5xx or (once signed again) a 403
UPLOAD_TRIES: Final = 3
#: uploads in flight to the bucket per instance (more wait for a connection)
UPLOAD_CONNECTIONS: Final = 64
#: images up to this size are sent with their form in one write (see `_post`)
_JOINED: Final = 256 * 1024
#: S3's answer to a POST Object is no larger (an XML error at most)
_ANSWER_LIMIT: Final = 64 * 1024
#: an upload's request extensions (read, never written, by the pool and its connections)
_UPLOAD_EXTENSIONS: Final = {"timeout": UPLOAD_TIMEOUT}


def is_file_name(name: str) -> bool:
    """Whether `name` has the shape of a stored result's name (unguessable id + extension)."""
    return _FILE_NAME.match(name) is not None


def own_file_name(url: str) -> str | None:
    """The stored-result name in a gateway link (`.../v1/files/{name}`), else None."""
    match = _OWN_LINK.search(url)
    return match.group(1) if match else None


class ImageStore:
    """Uploads and presigned links in the configured bucket."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self._s3 = client
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        #: signed upload forms by key prefix
        self._forms: dict[str, _Form] = {}
        self._signing = threading.Lock()
        #: the upload connections of each event loop (connections belong to their loop), and
        #: its turns: at most UPLOAD_CONNECTIONS uploads build and send their request at once
        self._transports: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[PooledTransport, httpx.AsyncBaseTransport, asyncio.Semaphore],
        ]
        self._transports = weakref.WeakKeyDictionary()
        self._pooling = threading.Lock()
        #: a multipart boundary no image can forge: random, never sent anywhere but the bucket
        self._boundary = f"imagegw-{secrets.token_hex(16)}".encode()
        self._form_type = b"multipart/form-data; boundary=%s" % self._boundary

    @property
    def s3(self) -> Any:
        if self._s3 is not None:
            return self._s3
        with self._lock:  # botocore calls run in worker threads: build the client once
            if self._s3 is None:
                self._s3 = self._client()
        return self._s3

    def warm(self) -> None:
        """Build the S3 client in a background thread, once; returns at once.

        Importing botocore and loading the S3 model is the heaviest step of a cold start (0.1-0.5 s
        of CPU), and a process that serves only provider links may never need it: so it is not
        done before the readiness check, but from the first provider call on (`Gateway.client`),
        while the provider works. A request that needs the client first waits for it (`s3`
        holds the lock meanwhile).
        """
        if self._s3 is not None or self._warming is not None or not self.settings.bucket:
            return
        self._warming = threading.Thread(target=self._warm, name="s3-warm-up", daemon=True)
        self._warming.start()

    def _warm(self) -> None:
        try:
            _ = self.s3
        except Exception as exc:  # the request that needs the client reports it
            logger.warning("the S3 client could not be built", extra={"error": type(exc).__name__})

    def _client(self) -> Any:
        from botocore.config import Config

        from imagegw.infra import aws

        # a custom endpoint (moto, MinIO) is addressed by path; AWS by virtual host, which
        # gives regional URLs a provider can fetch
        style = "path" if self.settings.s3_endpoint_url else "virtual"
        return aws.client(
            "s3",
            region_name=self.settings.aws_region,
            endpoint_url=self.settings.s3_endpoint_url,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": style},
                retries={"max_attempts": 3, "mode": "standard"},
                # an unreachable bucket must fail in seconds, not boto3's 60 s per attempt:
                # callers then fall back (a paid result is delivered by the provider's link)
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    @property
    def bucket(self) -> str:
        if not self.settings.bucket:
            raise no_bucket()
        return self.settings.bucket

    def _sign_form(self, prefix: str) -> _Form:
        """A POST policy for keys under `prefix`, signed by botocore with the client's current
        credentials (a session token, when there is one, is among the signed fields)."""
        import httpcore
        import httpx

        from imagegw.infra.http11 import request_head
        from imagegw.infra.transport import core_url

        post = self.s3.generate_presigned_post(
            self.bucket,
            prefix + "${filename}",  # botocore: a `starts-with $key prefix` condition
            Conditions=[
                ["starts-with", "$Content-Type", "image/"],
                ["content-length-range", 1, POLICY_MAX_BYTES],
            ],
            ExpiresIn=POLICY_SECONDS,
        )
        fields = {k: v for k, v in post["fields"].items() if k != "key"}
        signed = b"".join(self._part(name, value) for name, value in fields.items())
        url = httpx.URL(post["url"])
        target, host = core_url(url), url.netloc
        # the request's head but its length, checked as any request's head is (`request_head`)
        headers = [(b"Host", host), (b"Content-Type", self._form_type)]
        head = request_head(httpcore.Request(b"POST", target, headers=headers))[0]
        return _Form(
            url=post["url"],
            target=target,
            host=host,
            head=head.removesuffix(b"\r\n"),
            signed=signed,
            renew_at=time.monotonic() + POLICY_SECONDS - POLICY_MARGIN,
        )

    def _part(self, name: str, value: str) -> bytes:
        return b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
            self._boundary,
            name.encode(),
            value.encode(),
        )

    async def _form(self, prefix: str, stale: _Form | None = None) -> _Form:
        """The prefix's signed form; signed (again) when there is none, it is near its end or
        it is `stale` (refused by the bucket)."""
        form = self._forms.get(prefix)
        if form is not None and form is not stale and time.monotonic() < form.renew_at:
            return form
        return await anyio.to_thread.run_sync(self._signed, prefix, stale)

    def _signed(self, prefix: str, stale: _Form | None) -> _Form:
        with self._signing:  # a burst of uploads on a new instance signs once
            form = self._forms.get(prefix)
            if form is None or form is stale or time.monotonic() >= form.renew_at:
                form = self._forms[prefix] = self._sign_form(prefix)
            return form

    def _transport(
        self,
    ) -> tuple[PooledTransport, httpx.AsyncBaseTransport, asyncio.Semaphore]:
        """The running loop's upload pool, the same in the transport layers added so far
        (`imagegw.infra.clients.layered`: X-Ray's, in a traced task function), and its turns."""
        loop = asyncio.get_running_loop()
        pair = self._transports.get(loop)  # made once per loop, then only read
        return self._new_transport(loop) if pair is None else pair

    def _new_transport(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[PooledTransport, httpx.AsyncBaseTransport, asyncio.Semaphore]:
        from imagegw.infra.clients import layered
        from imagegw.infra.transport import PooledTransport

        with self._pooling:  # not `_lock`, held while the S3 client is built
            pair = self._transports.get(loop)
            if pair is None:
                pooled = PooledTransport(max_connections=UPLOAD_CONNECTIONS, lean=True)
                turns = asyncio.Semaphore(UPLOAD_CONNECTIONS)
                pair = self._transports[loop] = (pooled, layered(pooled), turns)
        return pair

    def _body(self, form: _Form, key: str, image: ImageBytes) -> tuple[tuple[bytes, ...], int]:
        """The multipart body of the form with `image` under `key`: the chunks written, one a
        write to the socket (a small image goes in one: copying a few KiB costs less than two
        system calls; a large one as it is, uncopied), and its length."""
        head = b"%s%s%s--%s\r\n" % (
            form.signed,
            self._part("key", key),
            self._part("Content-Type", image.mime),
            self._boundary,
        )
        head += b'Content-Disposition: form-data; name="file"; filename="%s"\r\n' % (
            key.rsplit("/", 1)[-1].encode()
        )
        head += b"Content-Type: %s\r\n\r\n" % image.mime.encode()
        tail = b"\r\n--%s--\r\n" % self._boundary
        data = image.data
        chunks = (head + data + tail,) if len(data) <= _JOINED else (head, data, tail)
        return chunks, len(head) + len(data) + len(tail)

    async def _post(
        self,
        form: _Form,
        key: str,
        image: ImageBytes,
        transports: tuple[PooledTransport, httpx.AsyncBaseTransport],
    ) -> int:
        """One POST of the form with `image` under `key` through `transports` (the loop's pool,
        and the same in its layers); S3's status."""
        import httpx

        from imagegw.infra.http11 import FramedRequest

        chunks, length = self._body(form, key, image)

        def framed() -> httpcore.Request:
            # the form's URL parsed and its head made when it was signed, the chunks written
            # as they are by the pool's lean connections
            return FramedRequest(
                b"POST",
                form.target,
                head=form.head + b"Content-Length: %d\r\n\r\n" % length,
                length=length,
                content=chunks,
                extensions=_UPLOAD_EXTENSIONS,
            )

        def layered() -> httpx.Request:
            async def body() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            return httpx.Request(
                "POST",
                form.url,
                headers=[
                    (b"Host", form.host),
                    (b"Content-Type", self._form_type),
                    (b"Content-Length", b"%d" % length),
                ],
                content=body(),
                extensions={"timeout": UPLOAD_TIMEOUT},
            )

        return await _status(transports, framed, layered)

    def turn(self) -> _Turn:
        """One of the running loop's upload turns, held for the duration (`async with`): the
        uploads inside (`save_result`, `upload`) take no other. A copy of a result holds one
        from before its download to after its upload (`imagegw.core.deliver`), so a burst of
        results holds at most UPLOAD_CONNECTIONS images fetched and not yet stored, not one per
        stream."""
        return _Turn(self._transport()[2])

    async def _put(self, key: str, image: ImageBytes) -> None:
        """Store `image` under `key` (POST Object with the prefix's signed form): tried again
        after a connection failure or a 5xx, and signed again after a 403 (the credentials may
        have rotated)."""
        # a burst's uploads past the pool's connections wait for a turn before their request is
        # built, holding their own coroutine only (in the pool's queue each would hold its
        # request, its body and the transport's frames: memory per stream of 1,000 at once)
        if not _HOLDING.get():  # a copy of a result holds its turn already
            async with self.turn():
                await self._put(key, image)
            return
        pooled, outer, _ = self._transport()
        await self._put_now(key, image, (pooled, outer))

    async def _put_now(
        self,
        key: str,
        image: ImageBytes,
        transports: tuple[PooledTransport, httpx.AsyncBaseTransport],
    ) -> None:
        import httpx

        prefix = key.split("/", 1)[0] + "/"
        form = await self._form(prefix)
        renewed = False
        for attempt in range(1, UPLOAD_TRIES + 1):
            try:
                status = await self._post(form, key, image, transports)
            except httpx.TransportError:
                if attempt == UPLOAD_TRIES:
                    raise
                continue
            if status < 300:
                return
            if status == 403 and not renewed:
                form, renewed = await self._form(prefix, stale=form), True
            elif status < 500 or attempt == UPLOAD_TRIES:
                raise BucketRefused(f"HTTP {status}")
        raise BucketRefused("no try left")

    async def aclose(self) -> None:
        """Close the upload connections of the running event loop."""
        loop = asyncio.get_running_loop()
        with self._pooling:
            pair = self._transports.pop(loop, None)
        if pair is not None:
            await pair[1].aclose()

    def _presign(self, key: str, ttl: int) -> str:
        url: str = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl
        )
        return url

    async def upload(self, image: ImageBytes) -> str:
        """Store an input image under uploads/; its key."""
        day = dt.datetime.now(dt.UTC).strftime("%Y/%m/%d")
        key = f"{UPLOADS}{day}/{secrets.token_urlsafe(18)}.{image.extension}"
        bucket = self.bucket  # fail fast, before anything is sent
        try:
            await self._put(key, image)
        except Exception as exc:
            raise StorageError(
                f"Storing the input image in bucket {bucket} failed: {type(exc).__name__}.",
                code="storage_unavailable",
            ) from None
        return key

    async def _run(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """A botocore call in a worker thread; any failure of the bucket is a `StorageError`
        (503, retryable) whose message names no secret."""
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except Exception as exc:
            raise StorageError(
                f"The bucket could not be reached ({what}: {type(exc).__name__}); try again.",
                code="storage_unavailable",
            ) from None

    async def presign(self, key: str, ttl: int | None = None) -> str:
        return await self._run("presign", self._presign, key, ttl or self.settings.presign_ttl)

    async def save_result(self, image: ImageBytes) -> str:
        """Store a generated image under images/ with an unguessable name; the name."""
        name = f"{secrets.token_urlsafe(24)}.{image.extension}"
        bucket = self.bucket
        try:
            await self._put(RESULTS + name, image)
        except Exception as exc:
            raise StorageError(
                f"Storing the generated image in bucket {bucket} failed: {type(exc).__name__}.",
                code="storage_unavailable",
            ) from None
        return name

    async def _present(self, url: str) -> bool:
        """Whether the object behind `url`, a presigned GET, is in the bucket: a GET of its
        first byte (`Range: bytes=0-0`) through the loop's pooled connections, no worker thread
        nor botocore request (a HEAD cannot use a URL signed for GET; S3 signs no Range header in
        it, so the URL serves a range as it serves the whole). Tried again after a connection
        failure or a 5xx; another answer than a range, the whole, an unsatisfiable range (an
        empty object) or a missing key raises `BucketRefused`."""
        import httpcore
        import httpx

        from imagegw.infra.transport import core_url

        target = httpx.URL(url)
        headers = [(b"Host", target.netloc), (b"Range", b"bytes=0-0")]

        def plain() -> httpcore.Request:
            return httpcore.Request(
                b"GET", core_url(target), headers=headers, extensions=_UPLOAD_EXTENSIONS
            )

        def layered() -> httpx.Request:
            return httpx.Request(
                "GET", target, headers=headers, extensions={"timeout": UPLOAD_TIMEOUT}
            )

        pooled, outer, _ = self._transport()
        for attempt in range(1, UPLOAD_TRIES + 1):
            try:
                status = await _status((pooled, outer), plain, layered)
            except httpx.TransportError:
                if attempt == UPLOAD_TRIES:
                    raise
                continue
            if status in _PRESENT:
                return True
            # S3 answers a missing key with 404 only to callers that may list its prefix
            # (template: ListBucket with an s3:prefix condition); the function may read every
            # key it asks about, so a 403 here means missing too
            if status in _MISSING:
                return False
            if status < 500 or attempt == UPLOAD_TRIES:
                raise BucketRefused(f"HTTP {status}")
        raise BucketRefused("no try left")

    async def _checked_link(self, key: str, ttl: int | None = None) -> str | None:
        """A fresh presigned GET of `key`, or None when there is no such object (`_present`
        asks the bucket with that very URL); a bucket that cannot tell is a `StorageError`."""
        url = await self.presign(key, ttl)
        try:
            present = await self._present(url)
        except Exception as exc:
            raise StorageError(
                f"The bucket could not be reached (check: {type(exc).__name__}); try again.",
                code="storage_unavailable",
            ) from None
        return url if present else None

    async def result_link(self, name: str, ttl: int | None = None) -> str | None:
        """A fresh presigned URL of a stored result, or None when there is no such result."""
        if not is_file_name(name):
            return None
        return await self._checked_link(RESULTS + name, ttl)

    async def own_result(self, url: str) -> tuple[str, str] | None:
        """When `url` is a lasting link this gateway gave (`.../v1/files/{name}`) to a result
        still stored: its name and a fresh presigned URL; else None (any other URL)."""
        name = own_file_name(url)
        if not name or not self.settings.bucket:
            return None
        link = await self.result_link(name)
        return None if link is None else (name, link)

    async def result_bytes(self, name: str) -> ImageBytes | None:
        """A stored result's bytes, or None."""
        if not is_file_name(name):
            return None

        def get() -> bytes | None:
            try:
                answer = self.s3.get_object(Bucket=self.bucket, Key=RESULTS + name)
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("404", "NoSuchKey"):
                    return None
                raise
            data: bytes = answer["Body"].read()
            return data

        data = await self._run("get", get)
        return None if data is None else check_image(data, max_bytes=len(data) + 1)

    async def load(self, key: str) -> InputImage:
        """An object already in the bucket (an upload, a stored result) as an input image: a
        fresh presigned URL and its bytes (a durable job's inputs are staged before it runs)."""

        def get() -> bytes:
            data: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return data

        try:
            data = await anyio.to_thread.run_sync(get)
        except Exception as exc:
            raise StorageError(
                f"Reading the input image {key} from the bucket failed: {type(exc).__name__}.",
                code="storage_unavailable",
            ) from None
        image = check_image(data, max_bytes=max(len(data), 1), what="input image")
        return InputImage(url=await self.presign(key), image=image)

    async def place(self, item: str | ImageBytes) -> Placed:
        """Where an input image is for a provider: an upload put in the bucket; a lasting link
        this gateway returned (iterative editing of a stored result) as its stored object, so
        the provider needs no redirect; any other URL as it is."""
        if isinstance(item, ImageBytes):
            return Placed(key=await self.upload(item), image=item)
        name = own_file_name(item)
        if name is None or not self.settings.bucket:
            return Placed(url=item)
        key = RESULTS + name
        stored = await self._checked_link(key) is not None
        return Placed(key=key) if stored else Placed(url=item)

    async def open(self, placed: Placed) -> InputImage:
        """A placed input image as the provider takes it: an object presigned, with its bytes
        (read from the bucket unless at hand); a URL passed through."""
        if placed.key is None:
            assert placed.url is not None
            return InputImage(url=placed.url)
        if placed.image is None:
            return await self.load(placed.key)
        return InputImage(url=await self.presign(placed.key), image=placed.image)

    async def place_all(self, inputs: Sequence[str | ImageBytes]) -> tuple[Placed, ...]:
        return tuple(await asyncio.gather(*(self.place(item) for item in inputs)))

    async def stage(self, inputs: Sequence[str | ImageBytes]) -> tuple[InputImage, ...]:
        """Input images for a provider, at once (the in-process runner): `place`, then `open`;
        a durable job places them before it starts and opens them in its Submit step."""

        async def one(item: str | ImageBytes) -> InputImage:
            return await self.open(await self.place(item))

        return tuple(await asyncio.gather(*(one(item) for item in inputs)))


async def _status(
    transports: tuple[PooledTransport, httpx.AsyncBaseTransport],
    plain: Callable[[], httpcore.Request],
    layered: Callable[[], httpx.Request],
) -> int:
    """The bucket's status to one request through `transports` (the loop's pool, and the same
    in its layers), its answer read (no further than _ANSWER_LIMIT) and dropped, so the
    connection is kept. When nothing observes the pool, `plain()` goes straight to it as
    httpcore's request: no httpx request or response is made; else `layered()` goes through
    the layers."""
    from imagegw.infra.transport import drain

    pooled, outer = transports
    if outer is pooled:
        return await pooled.status_of(plain(), limit=_ANSWER_LIMIT, too_large=_too_large)
    response = await outer.handle_async_request(layered())
    try:
        await drain(response.aiter_raw(), _ANSWER_LIMIT, _too_large)
    finally:
        await response.aclose()
    return response.status_code


class _Turn:
    """An upload turn (`ImageStore.turn`): taken on entry unless the task holds one already,
    given back on exit. A class, not a generator's context manager: one is made per result."""

    __slots__ = ("held", "turns")

    def __init__(self, turns: asyncio.Semaphore) -> None:
        self.turns = turns
        self.held: contextvars.Token[bool] | None = None

    async def __aenter__(self) -> None:
        if not _HOLDING.get():
            await self.turns.acquire()
            self.held = _HOLDING.set(True)

    async def __aexit__(self, *exc: object) -> None:
        if self.held is not None:
            _HOLDING.reset(self.held)
            self.held = None
            self.turns.release()


class BucketRefused(Exception):
    """The bucket answered an upload with an error status (its text names no secret)."""


def _too_large() -> Exception:
    return BucketRefused("an answer too large")


@dataclass(frozen=True)
class _Form:
    """A signed upload form: where it is posted, its signed fields as multipart parts (policy,
    credential scope, signature, a session token: never logged), and when to sign it again."""

    url: str
    #: the same URL as httpcore's request takes it, and its Host header
    target: httpcore.URL
    host: bytes
    #: the POST's request line and headers, up to its Content-Length (`FramedRequest`)
    head: bytes
    signed: bytes = field(repr=False)
    renew_at: float


@dataclass(frozen=True)
class Placed:
    """An input image placed for a provider: an object in the bucket (`key`) or a URL the
    provider fetches itself; `image`, its bytes when at hand."""

    key: str | None = None
    url: str | None = None
    image: ImageBytes | None = None
