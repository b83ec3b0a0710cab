"""GET /v1/files/{name}: the lasting link of a stored result, redirecting to a fresh
presigned URL of the object (so the link works for as long as the bucket keeps it)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from imagegw.errors import NotFoundError
from imagegw.frontends.web import gateway_of

#: presigned URLs of redirects live this long; clients follow them at once
REDIRECT_TTL = 300


async def get_file(request: Request) -> Response:
    name = request.path_params["name"]
    url = await gateway_of(request).store.result_link(name, REDIRECT_TTL)
    if url is None:
        raise NotFoundError(f"No stored image '{name}'.", code="file_not_found")
    return RedirectResponse(url, status_code=307, headers={"cache-control": "private, max-age=240"})


def routes(prefix: str) -> list[Route]:
    return [Route(f"{prefix}/v1/files/{{name}}", get_file, methods=["GET", "HEAD"])]
