"""ImageStore: the private S3 bucket that holds input images (`uploads/`) and hands providers
short-lived SigV4 presigned GET URLs for them.

boto3 is synchronous: its calls run in a worker thread. The client is created on first use, so
importing this module does no work and tests can point it at moto.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Sequence
from typing import Any

import anyio.to_thread

from imagegw.config import Settings
from imagegw.errors import ConfigurationError, ProviderError
from imagegw.images import ImageBytes
from imagegw.providers.base import InputImage

UPLOADS = "uploads/"


class ImageStore:
    """Uploads and presigned links in the configured bucket."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self._s3 = client

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            # a custom endpoint (moto, MinIO) is addressed by path; AWS by virtual host, which
            # gives regional URLs a provider can fetch
            style = "path" if self.settings.s3_endpoint_url else "virtual"
            self._s3 = boto3.client(
                "s3",
                region_name=self.settings.aws_region,
                endpoint_url=self.settings.s3_endpoint_url,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": style},
                    retries={"max_attempts": 3, "mode": "standard"},
                ),
            )
        return self._s3

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
            raise ProviderError(
                f"Storing the input image in bucket {bucket} failed: {type(exc).__name__}.",
                code="storage_error",
            ) from None
        return key

    async def presign(self, key: str, ttl: int | None = None) -> str:
        return await anyio.to_thread.run_sync(self._presign, key, ttl or self.settings.presign_ttl)

    async def stage(self, inputs: Sequence[str | ImageBytes]) -> tuple[InputImage, ...]:
        """Input images for a provider: decoded images are uploaded and presigned; http(s) URLs
        are passed through as they are."""

        async def one(item: str | ImageBytes) -> InputImage:
            if isinstance(item, str):
                return InputImage(url=item)
            key = await self.upload(item)
            return InputImage(url=await self.presign(key), image=item)

        return tuple(await asyncio.gather(*(one(item) for item in inputs)))
