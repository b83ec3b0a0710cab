"""BatchStore: the Batch API's files and batches, kept as objects in the image bucket under
`batches/`, each under its owner (a hash of the caller's bearer token, never the token):

- `batches/files/{owner}/{file id}.json`: a file object (`{id, object, bytes, created_at,
  filename, purpose}`), and `….data`: its content (a JSONL file as sent, or a batch's output).
- `batches/runs/{owner}/{batch id}/batch.json`: the batch as created (never rewritten);
  `cancel.json`: written once when the caller cancels it; `final.json`: written once when it
  ended (status, timestamps, output and error files); `items.json`: the checked lines as a JSON
  array (a Distributed Map reads JSON, not JSONL); `results/{index}.json`: one item's outcome.
- `batches/uploads/{owner}/{upload id}/upload.json`: an upload of the Uploads API (a file
  larger than one request body), and `parts/{part id}`: its parts as they came.

Each object is written by one party once (the API writes the batch and its cancel, the batch's
steps the rest), so no read-modify-write races. Another caller's ids are not found: the owner
is part of every key. botocore is synchronous: its calls run in a worker thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

import anyio.to_thread

from imagegw.errors import StorageError
from imagegw.infra.storage import ImageStore

T = TypeVar("T")
PREFIX: Final = "batches/"
FILES: Final = f"{PREFIX}files/"
RUNS: Final = f"{PREFIX}runs/"
UPLOADS: Final = f"{PREFIX}uploads/"
#: a file id (`file-` + 24 hex) and a batch id (`batch_` + 24 hex), as this gateway makes them
FILE_ID: Final = re.compile(r"^file-[0-9a-f]{24}$")
BATCH_ID: Final = re.compile(r"^batch_[0-9a-f]{24}$")
#: an upload of the Uploads API (`upload_` + 24 hex) and one of its parts (`part_` + 24 hex)
UPLOAD_ID: Final = re.compile(r"^upload_[0-9a-f]{24}$")
PART_ID: Final = re.compile(r"^part_[0-9a-f]{24}$")
_OWNER: Final = re.compile(r"^[0-9a-f]{64}$")
LIST_ATTEMPTS: Final = 3
_MISSING: Final = frozenset({"404", "NoSuchKey", "403", "AccessDenied"})


def _missing(exc: Exception) -> bool:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") in _MISSING


class BatchStore:
    """Files and batches of the Batch API in the bucket of `store`."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store

    async def _run(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """A botocore call in a worker thread; a failing bucket is a retryable 503 naming no
        secret."""
        _ = self.store.bucket  # no bucket configured: its clear error at once
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except Exception as exc:
            raise StorageError(
                f"The bucket could not be reached ({what}: {type(exc).__name__}); try again.",
                code="storage_unavailable",
            ) from None

    # objects

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        self.store.s3.put_object(
            Bucket=self.store.bucket, Key=key, Body=body, ContentType=content_type
        )

    def _get(self, key: str) -> bytes | None:
        try:
            answer = self.store.s3.get_object(Bucket=self.store.bucket, Key=key)
        except Exception as exc:
            if _missing(exc):
                return None
            raise
        data: bytes = answer["Body"].read()
        return data

    def _delete(self, *keys: str) -> None:
        for key in keys:
            self.store.s3.delete_object(Bucket=self.store.bucket, Key=key)

    def _keys(self, prefix: str) -> list[str]:
        """The keys under `prefix`. A listing that fails is made again (it only reads): moto's
        S3 (`make run`) fails one that races a DELETE in the bucket (a batch item's marker)."""
        for _ in range(LIST_ATTEMPTS - 1):
            try:
                return self._list(prefix)
            except Exception as exc:
                if _missing(exc):
                    raise
        return self._list(prefix)

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        pages = self.store.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.store.bucket, Prefix=prefix
        )
        for page in pages:
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    async def put(self, key: str, body: bytes, content_type: str = "application/json") -> None:
        await self._run("put", self._put, key, body, content_type)

    async def put_json(self, key: str, value: Any) -> None:
        await self.put(key, json.dumps(value, separators=(",", ":")).encode())

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", self._get, key)

    async def get_json(self, key: str) -> Any:
        data = await self.get(key)
        return None if data is None else json.loads(data)

    async def keys(self, prefix: str) -> list[str]:
        return await self._run("list", self._keys, prefix)

    async def delete(self, *keys: str) -> None:
        await self._run("delete", self._delete, *keys)

    # files

    @staticmethod
    def file_key(owner: str, file_id: str, part: str = "json") -> str:
        assert _OWNER.match(owner) and FILE_ID.match(file_id)
        return f"{FILES}{owner}/{file_id}.{part}"

    async def save_file(self, owner: str, meta: dict[str, Any], content: bytes) -> None:
        """Store a file: its content first, then its object (a file is listed once whole)."""
        await self.put(self.file_key(owner, meta["id"], "data"), content, "application/jsonl")
        await self.put_json(self.file_key(owner, meta["id"]), meta)

    async def file(self, owner: str, file_id: str) -> dict[str, Any] | None:
        if not FILE_ID.match(file_id):
            return None
        meta: dict[str, Any] | None = await self.get_json(self.file_key(owner, file_id))
        return meta

    async def file_content(self, owner: str, file_id: str) -> bytes | None:
        if not FILE_ID.match(file_id):
            return None
        return await self.get(self.file_key(owner, file_id, "data"))

    async def files(self, owner: str) -> list[dict[str, Any]]:
        """The owner's file objects, newest first."""
        keys = [key for key in await self.keys(f"{FILES}{owner}/") if key.endswith(".json")]
        found = [await self.get_json(key) for key in keys]
        metas = [meta for meta in found if isinstance(meta, dict)]
        return sorted(metas, key=lambda meta: (-int(meta["created_at"]), meta["id"]))

    async def delete_file(self, owner: str, file_id: str) -> None:
        await self.delete(self.file_key(owner, file_id), self.file_key(owner, file_id, "data"))

    # batches

    @staticmethod
    def run_key(owner: str, batch_id: str, name: str) -> str:
        assert _OWNER.match(owner) and BATCH_ID.match(batch_id)
        return f"{RUNS}{owner}/{batch_id}/{name}"

    @staticmethod
    def upload_key(owner: str, upload_id: str, name: str) -> str:
        assert _OWNER.match(owner) and UPLOAD_ID.match(upload_id)
        return f"{UPLOADS}{owner}/{upload_id}/{name}"

    async def batch_ids(self, owner: str) -> list[str]:
        keys = await self.keys(f"{RUNS}{owner}/")
        return sorted({key.split("/")[3] for key in keys if key.endswith("/batch.json")})
