"""What the fakes of the task-style providers (DashScope, Ark, BFL, Replicate, fal) share.

Each fake is one ASGI app served on three loopback servers that stand for three hosts of the
same provider: ``api`` (its base URL: ``api.bfl.ai``), ``poll`` (another of its API hosts, where
it may point polling URLs: ``api.us1.bfl.ai``) and ``cdn`` (where its result links are:
``delivery-eu1.bfl.ai``, ``replicate.delivery``, an OSS bucket). Every request is recorded with
the host it reached and its headers, so tests see which credential reached which host.

Result links are signed with an expiry (``url_ttl``) and answer 403 once it is past, or once
``expire_files`` is set. Tasks finish after ``polls_to_finish`` polls; ``fail_next`` and
``moderate_next`` make the next task fail, or be refused by moderation, in the provider's words.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from starlette.requests import Request
from starlette.responses import Response

from fakes.png import make_png, png_size, sniff_image

_WXH: Final = re.compile(r"^(\d{2,5})\s*[x*]\s*(\d{2,5})$")
_RATIO: Final = re.compile(r"^(\d{1,2}):(\d{1,2})$")


@dataclass
class Task:
    """One submitted task: what it will make, and how far it got."""

    id: str
    size: tuple[int, int]
    count: int
    polls: int = 0
    failure: str | None = None
    moderated: bool = False
    urls: list[str] = field(default_factory=list)


def size_of(value: Any, default: tuple[int, int] = (1024, 1024)) -> tuple[int, int]:
    """A size from `1024x768`, `1024*768`, `4:3` (at about a megapixel) or None (`default`)."""
    if isinstance(value, str) and (match := _WXH.match(value.strip())):
        return int(match[1]), int(match[2])
    if isinstance(value, str) and (match := _RATIO.match(value.strip())):
        ratio = int(match[1]) / int(match[2])
        return round(math.sqrt(1024 * 1024 * ratio) / 16) * 16, round(
            math.sqrt(1024 * 1024 / ratio) / 16
        ) * 16
    return default


async def image_bytes(value: Any) -> bytes | None:
    """The bytes of an input image sent as a data URI, bare base64 or a URL (fetched)."""
    if not isinstance(value, str):
        return None
    if value.startswith(("http://", "https://")):
        try:
            async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
                answer = await client.get(value, follow_redirects=True)
        except httpx.HTTPError:
            return None
        return answer.content if answer.status_code == 200 else None
    payload = value.partition(",")[2] if value.startswith("data:") else value
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if sniff_image(data) else None


class TaskHostsFake:
    """Base of the task-provider fakes: hosts, records, tasks and result links."""

    #: the provider's default accepted credentials
    default_tokens: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.tokens: set[str] = set(self.default_tokens)
        self.api_url = self.poll_url = self.cdn_url = ""  # set by the fixture that serves it
        self.polls_to_finish = 2
        self.url_ttl = 600.0
        self.expire_files = False
        self.next_failure: str | None = None
        self.next_moderation = False
        #: every request: host (host:port), method, path, its whole URL, headers, JSON body
        self.requests: list[dict[str, Any]] = []
        #: the bytes of every accepted input image, per submission
        self.inputs: list[list[bytes]] = []
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, tuple[int, int, float]] = {}
        self.lock = threading.Lock()

    # ----------------------------------------------------------------- controls

    def fail_next(self, reason: str) -> None:
        self.next_failure = reason

    def moderate_next(self) -> None:
        self.next_moderation = True

    def credentials_by_host(self, header: str) -> dict[str, set[str]]:
        """host -> the values of `header` (the provider's credential) it received."""
        found: dict[str, set[str]] = {}
        for record in self.requests:
            value = record["headers"].get(header.lower())
            found.setdefault(record["host"], set())
            if value is not None:
                found[record["host"]].add(value)
        return found

    def submissions(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    # ----------------------------------------------------------------- helpers for subclasses

    async def record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        entry = {
            "host": request.headers.get("host", ""),
            "method": request.method,
            "path": request.url.path,
            "url": str(request.url),
            "headers": dict(request.headers),
            "body": body,
        }
        with self.lock:
            self.requests.append(entry)
        return entry

    def new_task(self, size: tuple[int, int], count: int = 1) -> Task:
        task = Task(uuid.uuid4().hex, size, count)
        with self.lock:
            task.failure, self.next_failure = self.next_failure, None
            task.moderated, self.next_moderation = self.next_moderation, False
            self.tasks[task.id] = task
        return task

    def advance(self, task: Task) -> str:
        """One poll of `task`: "queued", "running" or "done"."""
        with self.lock:
            task.polls += 1
            if task.polls >= self.polls_to_finish:
                if not task.urls and task.failure is None and not task.moderated:
                    task.urls = [self.file_url(*task.size) for _ in range(task.count)]
                return "done"
            return "queued" if task.polls == 1 else "running"

    def file_url(self, width: int, height: int) -> str:
        """A signed link on the cdn host, valid for `url_ttl` seconds."""
        name = f"{uuid.uuid4().hex}.png"
        expires = int(time.time() + self.url_ttl)
        self.files[name] = (width, height, float(expires))
        return f"{self.cdn_url}/results/{name}?Expires={expires}&Signature={uuid.uuid4().hex[:12]}"

    async def serve_file(self, request: Request) -> Response:
        await self.record(request)
        name = request.path_params["name"]
        made = self.files.get(name)
        if made is None:
            return Response("Not Found", 404)
        width, height, expires = made
        if self.expire_files or expires < time.time():
            return Response(
                "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                403,
                media_type="application/xml",
            )
        colour = (len(name) * 7 % 256, 90, 160)
        data = await asyncio.to_thread(make_png, width, height, colour)
        return Response(data, media_type="image/png")

    async def inputs_of(self, values: list[Any]) -> list[bytes] | None:
        """The bytes of each input image, None when one cannot be read."""
        found = []
        for value in values:
            data = await image_bytes(value)
            if data is None:
                return None
            found.append(data)
        with self.lock:
            self.inputs.append(found)
        return found


def input_size(data: bytes, default: tuple[int, int] = (1024, 1024)) -> tuple[int, int]:
    """An input PNG's size (edits keep it), else `default`."""
    return png_size(data) if sniff_image(data) == "png" else default
