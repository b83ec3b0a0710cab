"""A fake web server holding images that clients link to (any host a URL may name), with the
misbehaviour an SSRF guard must survive: redirect chains, redirects elsewhere, answers that never
come, bodies larger than they should be, cookies.

Routes:
- ``GET /files/{name}``: a file added with ``add()`` (404 otherwise);
- ``GET /hop/{n}/{name}``: ``n`` redirects (302, relative) before ``/files/{name}``;
- ``GET /away?to=URL``: one redirect (302) to any URL;
- ``GET /cookie/{name}``: sets a cookie and redirects to ``/files/{name}``;
- ``GET /slow``: answers after ``slow_seconds``;
- ``GET /stream/{size}``: ``size`` zero bytes in 64 KiB chunks, chunked (no Content-Length).

Records: ``requests``: every request's path (and query); ``hosts``: their Host headers;
``cookies``: Cookie headers received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes.png import make_png

CHUNK = 64 * 1024


class FakeImageHost:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"x.png": make_png(8, 8)}
        self.requests: list[str] = []
        self.hosts: list[str] = []
        self.cookies: list[str] = []
        self.slow_seconds = 5.0
        self.url = ""  # set by the fixture that serves it
        self._app = Starlette(
            routes=[
                Route("/files/{name}", self._file),
                Route("/hop/{n:int}/{name}", self._hop),
                Route("/away", self._away),
                Route("/cookie/{name}", self._cookie),
                Route("/slow", self._slow),
                Route("/stream/{size:int}", self._stream),
            ]
        )

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` at ``/files/{name}``; its URL."""
        self.files[name] = data
        return f"{self.url}/files/{name}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode()
            self.requests.append(scope["path"] + (f"?{query}" if query else ""))
            headers = dict(scope["headers"])
            self.hosts.append(headers.get(b"host", b"").decode())
            cookie = headers.get(b"cookie")
            if cookie is not None:
                self.cookies.append(cookie.decode())
        await self._app(scope, receive, send)

    async def _file(self, request: Request) -> Response:
        data = self.files.get(request.path_params["name"])
        if data is None:
            return Response("not found", status_code=404)
        return Response(data, media_type="image/png")

    async def _hop(self, request: Request) -> Response:
        n, name = request.path_params["n"], request.path_params["name"]
        target = f"/hop/{n - 1}/{name}" if n > 1 else f"/files/{name}"
        return RedirectResponse(target, status_code=302)

    async def _away(self, request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def _cookie(self, request: Request) -> Response:
        answer = RedirectResponse(f"/files/{request.path_params['name']}", status_code=302)
        answer.set_cookie("session", "s3cret", path="/")
        return answer

    async def _slow(self, request: Request) -> Response:
        await asyncio.sleep(self.slow_seconds)
        return Response(self.files["x.png"], media_type="image/png")

    async def _stream(self, request: Request) -> Response:
        size = request.path_params["size"]

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            while sent < size:
                chunk = bytes(min(CHUNK, size - sent))
                sent += len(chunk)
                yield chunk
                await asyncio.sleep(0)  # let a disconnect stop the stream

        return StreamingResponse(body(), media_type="image/png")
