"""ImageStore: the private S3 bucket that holds input images (`uploads/`) and hands providers
short-lived SigV4 presigned GET URLs for them.

boto3 is synchronous: its calls run in a worker thread. The client is created on first use, so
importing this module does no work and tests can point it at moto.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio.to_thread

from imagegw.errors import ConfigurationError, StorageError
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes, InputImage, check_image

T = TypeVar("T")
#: S3 error codes of a HeadObject on a key that is not there
_MISSING = frozenset({"404", "NoSuchKey", "403", "AccessDenied"})

UPLOADS = "uploads/"
RESULTS = "images/"
#: the path of a stored result's lasting link: /v1/files/{name}
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-]{24,64}\.(png|jpg|webp|gif)$")
_OWN_LINK = re.compile(r"/v1/files/([A-Za-z0-9_-]{24,64}\.(?:png|jpg|webp|gif))(?:\?.*)?$")


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

    @property
    def s3(self) -> Any:
        if self._s3 is not None:
            return self._s3
        with self._lock:  # boto3 calls run in worker threads: build the client once
            if self._s3 is None:
                self._s3 = self._client()
        return self._s3

    def warm(self) -> None:
        """Build the S3 client in a background thread, once; returns at once.

        Importing boto3 and loading the S3 model is the heaviest step of a cold start (0.1-0.5 s
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
        import boto3
        from botocore.config import Config

        # a custom endpoint (moto, MinIO) is addressed by path; AWS by virtual host, which
        # gives regional URLs a provider can fetch
        style = "path" if self.settings.s3_endpoint_url else "virtual"
        return boto3.client(
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
            raise ConfigurationError(
                "This gateway has no bucket for input images: set BUCKET.",
                code="no_bucket",
            )
        return self.settings.bucket

    def _put(self, key: str, image: ImageBytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=image.data, ContentType=image.mime)

    def _presign(self, key: str, ttl: int) -> str:
        url: str = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl
        )
        return url

    async def upload(self, image: ImageBytes) -> str:
        """Store an input image under uploads/; its key."""
        day = dt.datetime.now(dt.UTC).strftime("%Y/%m/%d")
        key = f"{UPLOADS}{day}/{secrets.token_urlsafe(18)}.{image.extension}"
        bucket = self.bucket  # fail fast, before a thread is used
        try:
            await anyio.to_thread.run_sync(self._put, key, image)
        except Exception as exc:
            raise StorageError(
                f"Storing the input image in bucket {bucket} failed: {type(exc).__name__}.",
                code="storage_unavailable",
            ) from None
        return key

    async def _run(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """A boto3 call in a worker thread; any failure of the bucket is a `StorageError`
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
            await anyio.to_thread.run_sync(self._put, RESULTS + name, image)
        except Exception as exc:
            raise StorageError(
                f"Storing the generated image in bucket {bucket} failed: {type(exc).__name__}.",
                code="storage_unavailable",
            ) from None
        return name

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            # S3 answers a missing key with 404 only to callers that may list its prefix
            # (template: ListBucket with an s3:prefix condition); the function may read every
            # key it asks about, so a 403 here means missing too
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    async def result_link(self, name: str, ttl: int | None = None) -> str | None:
        """A fresh presigned URL of a stored result, or None when there is no such result."""
        key = RESULTS + name
        if not is_file_name(name) or not await self._run("head", self._exists, key):
            return None
        return await self.presign(key, ttl)

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

    async def stage(self, inputs: Sequence[str | ImageBytes]) -> tuple[InputImage, ...]:
        """Input images for a provider: decoded images are uploaded and presigned; http(s) URLs
        are passed through as they are."""

        async def one(item: str | ImageBytes) -> InputImage:
            if isinstance(item, str):
                # a lasting link this gateway returned: hand over the object itself, so the
                # provider needs no redirect (iterative editing of a stored result)
                own = await self.own_result(item)
                if own is not None:
                    name, link = own
                    return InputImage(url=link, image=await self.result_bytes(name))
                return InputImage(url=item)
            key = await self.upload(item)
            return InputImage(url=await self.presign(key), image=item)

        return tuple(await asyncio.gather(*(one(item) for item in inputs)))
