"""`/v1/uploads`: the Uploads API, for a batch file larger than one request body (the Function
URL takes 6 MB): `POST /v1/uploads` `{filename, purpose: "batch", bytes, mime_type}` opens an
upload; `POST /v1/uploads/{id}/parts` (multipart `data`) adds a part, each up to the request-body
limit; `POST /v1/uploads/{id}/complete` `{part_ids, md5?}` joins the parts in that order into a
file (`purpose: "batch"`) once their sizes add up to `bytes`; `POST /v1/uploads/{id}/cancel`.
The official SDKs' `client.uploads.upload_file_chunked(...)` does all of it. An upload belongs
to the key that opened it; it may be completed within an hour.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagegw.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from imagegw.frontends.common import gateway_of
from imagegw.frontends.routes.files import PURPOSES, file_object, new_file_id, owner, store_of
from imagegw.frontends.web import read_form, read_json
from imagegw.infra.batchstore import PART_ID, UPLOAD_ID, BatchStore

#: the largest file an upload may make: a 50,000-line batch file with room to spare (it is
#: joined and checked in the API function's memory)
MAX_UPLOAD_BYTES: Final = 100 * 1024 * 1024
#: how long an upload may wait to be completed
UPLOAD_TTL: Final = 3600
MAX_PARTS: Final = 10000


def _missing(upload_id: str) -> NotFoundError:
    return NotFoundError(
        f"No such upload: {upload_id[:80]}", param="upload_id", code="upload_not_found"
    )


async def _upload(store: BatchStore, who: str, upload_id: str) -> dict[str, Any]:
    upload = None
    if UPLOAD_ID.match(upload_id):
        upload = await store.get_json(store.upload_key(who, upload_id, "upload.json"))
    if not isinstance(upload, dict):
        raise _missing(upload_id)
    return upload


def _pending(upload: dict[str, Any]) -> None:
    if upload["status"] != "pending" or time.time() >= upload["expires_at"]:
        status = "expired" if upload["status"] == "pending" else upload["status"]
        raise InvalidRequestError(
            f"The upload is {status}: it takes no more parts.", code="upload_not_pending"
        )


async def create_upload(request: Request) -> Response:
    who = await owner(request)  # before the body is read
    body = await read_json(request, gateway_of(request).settings.max_body_bytes)
    purpose, size, filename = body.get("purpose"), body.get("bytes"), body.get("filename")
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            "'purpose' must be 'batch'.", param="purpose", code="invalid_purpose"
        )
    if not isinstance(filename, str) or not filename.strip():
        raise InvalidRequestError("'filename' is required.", param="filename")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_UPLOAD_BYTES:
        raise InvalidRequestError(
            f"'bytes' must be the file's size, from 1 to {MAX_UPLOAD_BYTES} bytes.", param="bytes"
        )
    now = int(time.time())
    upload = {
        "id": f"upload_{secrets.token_hex(12)}",
        "object": "upload",
        "bytes": size,
        "created_at": now,
        "expires_at": now + UPLOAD_TTL,
        "filename": filename[:255],
        "purpose": purpose,
        "status": "pending",
        "file": None,
    }
    store = store_of(request)
    await store.put_json(store.upload_key(who, upload["id"], "upload.json"), upload)
    return JSONResponse(upload)


async def add_part(request: Request) -> Response:
    who = await owner(request)
    store = store_of(request)
    upload_id = request.path_params["upload_id"]
    _pending(await _upload(store, who, upload_id))
    items = await read_form(request, gateway_of(request).settings.max_body_bytes)
    data = dict(items).get("data")
    if not isinstance(data, bytes) or not data:
        raise InvalidRequestError("'data' is required: the part as a file field.", param="data")
    part = {
        "id": f"part_{secrets.token_hex(12)}",
        "object": "upload.part",
        "created_at": int(time.time()),
        "upload_id": upload_id,
    }
    await store.put(
        store.upload_key(who, upload_id, f"parts/{part['id']}"), data, "application/octet-stream"
    )
    return JSONResponse(part)


async def complete_upload(request: Request) -> Response:
    who = await owner(request)
    store = store_of(request)
    upload_id = request.path_params["upload_id"]
    upload = await _upload(store, who, upload_id)
    _pending(upload)
    body = await read_json(request, gateway_of(request).settings.max_body_bytes)
    part_ids = body.get("part_ids")
    if (
        not isinstance(part_ids, list)
        or not 0 < len(part_ids) <= MAX_PARTS
        or not all(isinstance(p, str) and PART_ID.match(p) for p in part_ids)
        or len(set(part_ids)) != len(part_ids)
    ):
        raise InvalidRequestError(
            "'part_ids' must list the upload's parts, each once, in order.", param="part_ids"
        )
    chunks: list[bytes] = []
    size = 0
    for part_id in part_ids:
        data = await store.get(store.upload_key(who, upload_id, f"parts/{part_id}"))
        if data is None:
            raise InvalidRequestError(f"No part {part_id} in this upload.", param="part_ids")
        size += len(data)
        if size > upload["bytes"]:
            raise PayloadTooLargeError(
                f"The parts are more than the {upload['bytes']} bytes the upload declared.",
                code="upload_size_mismatch",
            )
        chunks.append(data)
    if size != upload["bytes"]:
        raise InvalidRequestError(
            f"The parts add up to {size} bytes; the upload declared {upload['bytes']}.",
            param="part_ids",
            code="upload_size_mismatch",
        )
    content = b"".join(chunks)
    md5 = body.get("md5")
    if isinstance(md5, str) and md5 and md5.lower() != hashlib.md5(content).hexdigest():  # noqa: S324 (a checksum the client chose)
        raise InvalidRequestError("The parts do not match 'md5'.", param="md5", code="md5_mismatch")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(
            "The file must be UTF-8 text (JSONL: one JSON object a line).", code="invalid_file"
        ) from None
    meta = file_object(
        new_file_id(), size=size, filename=upload["filename"], purpose=upload["purpose"]
    )
    await store.save_file(who, meta, content)
    done = {**upload, "status": "completed", "file": meta}
    await store.put_json(store.upload_key(who, upload_id, "upload.json"), done)
    await store.delete(*(store.upload_key(who, upload_id, f"parts/{p}") for p in part_ids))
    return JSONResponse(done)


async def cancel_upload(request: Request) -> Response:
    who = await owner(request)
    store = store_of(request)
    upload_id = request.path_params["upload_id"]
    upload = await _upload(store, who, upload_id)
    _pending(upload)
    cancelled = {**upload, "status": "cancelled"}
    await store.put_json(store.upload_key(who, upload_id, "upload.json"), cancelled)
    return JSONResponse(cancelled)
