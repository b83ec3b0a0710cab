"""`/v1/files`: the lasting links of stored images, and the Files API of the Batch API.

- `GET /v1/files/{name}` with an image's name (`<unguessable id>.png`): the lasting link of a
  stored result, redirecting to a fresh presigned URL of the object (so the link works for as
  long as the bucket keeps it). These links sit in users' chat histories: they need no key.
- `POST /v1/files` (multipart: `purpose=batch`, `file` a JSONL file up to MAX_BODY_BYTES): a
  file object `{id: "file-…", object: "file", bytes, created_at, filename, purpose}`;
  `GET /v1/files` (the caller's), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
  `DELETE /v1/files/{id}`. A file belongs to the key that uploaded it: anyone else gets the
  404 of an unknown id. A batch's output and error files are files of its owner too
  (`purpose: "batch_output"`).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from imagegw.errors import InvalidRequestError, NotFoundError
from imagegw.frontends.common import gateway_of
from imagegw.frontends.web import authorize, owner_for, read_form
from imagegw.infra.batchstore import FILE_ID, BatchStore

#: presigned URLs of redirects live this long; clients follow them at once
REDIRECT_TTL = 300
PURPOSES: Final = frozenset({"batch"})
MAX_FILENAME: Final = 255
#: the most files a listing answers at once
MAX_LIST: Final = 10000


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def file_object(
    file_id: str, *, size: int, filename: str, purpose: str, created_at: int | None = None
) -> dict[str, Any]:
    """A file object as OpenAI answers it."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()) if created_at is None else created_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


async def owner(request: Request) -> str:
    """Who the caller is, by headers only (`web.authorize`: ACCESS_MODE's 401 first): a hash
    of their bearer token (`web.owner_for`: none for an anonymous caller)."""
    gateway = gateway_of(request)
    provider = gateway.provider(request.path_params.get("provider"))  # unknown: a 404
    caller, _ = await authorize(request, provider.name)
    return owner_for(caller)


def store_of(request: Request) -> BatchStore:
    return BatchStore(gateway_of(request).store)


def _not_found(file_id: str) -> NotFoundError:
    return NotFoundError(f"No such File object: {file_id[:80]}", param="id", code="file_not_found")


async def create_file(request: Request) -> Response:
    who = await owner(request)  # before the body is read
    settings = gateway_of(request).settings
    names: dict[str, str] = {}
    items = await read_form(request, settings.max_body_bytes, filenames=names)
    fields = dict(items)
    purpose = fields.get("purpose")
    if not isinstance(purpose, str) or purpose.strip() not in PURPOSES:
        raise InvalidRequestError(
            "'purpose' must be 'batch' (this gateway keeps files for the Batch API).",
            param="purpose",
            code="invalid_purpose",
        )
    content = fields.get("file")
    if not isinstance(content, bytes):
        raise InvalidRequestError(
            "'file' is required: send the JSONL file as a file field named 'file'.",
            param="file",
            code="file_required",
        )
    if not content.strip():
        raise InvalidRequestError("The file is empty.", param="file", code="empty_file")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(
            "The file must be UTF-8 text (JSONL: one JSON object a line).",
            param="file",
            code="invalid_file",
        ) from None
    filename = (names.get("file") or "upload.jsonl")[:MAX_FILENAME]
    meta = file_object(new_file_id(), size=len(content), filename=filename, purpose="batch")
    await store_of(request).save_file(who, meta, content)
    return JSONResponse(meta)


async def list_files(request: Request) -> Response:
    who = await owner(request)
    purpose = request.query_params.get("purpose")
    found = await store_of(request).files(who)
    if purpose:
        found = [meta for meta in found if meta.get("purpose") == purpose]
    after = request.query_params.get("after")
    if after:
        ids = [meta["id"] for meta in found]
        found = found[ids.index(after) + 1 :] if after in ids else []
    limit = limit_of(request.query_params.get("limit"), default=MAX_LIST, most=MAX_LIST)
    page = found[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(found) > limit,
        }
    )


def limit_of(raw: str | None, *, default: int, most: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw[:6]) <= most:
        raise InvalidRequestError(
            f"'limit' must be a whole number from 1 to {most}.", param="limit", code="invalid_limit"
        )
    return int(raw)


async def get_file(request: Request) -> Response:
    name = request.path_params["name"]
    if FILE_ID.match(name):  # an image's name never has this shape (it has an extension)
        meta = await store_of(request).file(await owner(request), name)
        if meta is None:
            raise _not_found(name)
        return JSONResponse(meta)
    url = await gateway_of(request).store.result_link(name, REDIRECT_TTL)
    if url is None:
        raise NotFoundError(f"No stored image '{name}'.", code="file_not_found")
    return RedirectResponse(url, status_code=307, headers={"cache-control": "private, max-age=240"})


async def file_content(request: Request) -> Response:
    file_id = request.path_params["name"]
    content = await store_of(request).file_content(await owner(request), file_id)
    if content is None:
        raise _not_found(file_id)
    return Response(content, media_type="application/jsonl")


async def delete_file(request: Request) -> Response:
    file_id = request.path_params["name"]
    who = await owner(request)
    store = store_of(request)
    if await store.file(who, file_id) is None:
        raise _not_found(file_id)
    await store.delete_file(who, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
