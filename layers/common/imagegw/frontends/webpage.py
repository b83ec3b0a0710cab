"""`GET /`: the page to try and use the gateway in a browser, and its assets (`/page/...`).

One self-contained page (`page/index.html`, `page/app.js`, `page/style.css`, served from the
layer package: no CDN, no build step). Its Content-Security-Policy allows scripts and styles
from this origin only (no inline script or style), connections to this origin only, and images
from this origin, data URIs and https (stored results redirect to the bucket's presigned URLs;
`make run`'s S3 stand-in is added by its address). The page's base URL (`<base href>`) is the
gateway's public URL (`web.public_base_url`), so its relative URLs work at a Function URL and
under a REST API's stage path alike. The page keeps the key the person pastes in the browser
only (localStorage); nothing here reads or sets a cookie.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagegw.errors import NotFoundError
from imagegw.frontends.common import gateway_of
from imagegw.frontends.demo_routing import serves_tokenless
from imagegw.frontends.web import public_base_url
from imagegw.infra.config import Settings
from imagegw.providers import PROVIDERS

ASSETS: Final = Path(__file__).with_name("page")
#: the assets served under /page/, by name -> media type
SERVED: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS: Final = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


@cache
def _asset(name: str) -> bytes:
    return (ASSETS / name).read_bytes()


def content_security_policy(settings: Settings) -> str:
    """The page's policy: nothing inline, nothing from elsewhere but images."""
    images = ["'self'", "data:", "blob:", "https:"]
    if settings.s3_endpoint_url:  # make run's S3 stand-in (http on loopback)
        parts = urlsplit(settings.s3_endpoint_url)
        images.append(f"{parts.scheme}://{parts.netloc}")
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {' '.join(images)}",
            "connect-src 'self'",
            "base-uri 'self'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def _providers(settings: Settings) -> list[str]:
    served = [name for name, cls in PROVIDERS.items() if cls.available(settings)]
    first = "demo" if "demo" in served else settings.default_provider
    return sorted(served, key=lambda name: (name != first, name))


async def page(request: Request) -> Response:
    settings = gateway_of(request).settings
    base = public_base_url(request, settings) + "/"
    text = _asset("index.html").decode("utf-8")
    text = text.replace("{{BASE}}", html.escape(base, quote=True))
    text = text.replace("{{PROVIDERS}}", html.escape(" ".join(_providers(settings)), quote=True))
    text = text.replace("{{TOKENLESS}}", "yes" if serves_tokenless(settings) else "no")
    headers = {
        "content-security-policy": content_security_policy(settings),
        "cache-control": "no-cache",
        **SECURITY_HEADERS,
    }
    return Response(text, media_type="text/html; charset=utf-8", headers=headers)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media = SERVED.get(name)
    if media is None:
        raise NotFoundError(f"No page asset '{name[:80]}'.", code="unknown_url")
    headers = {"cache-control": "public, max-age=300", **SECURITY_HEADERS}
    return Response(_asset(name), media_type=media, headers=headers)


def routes() -> list[Route]:
    return [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/page/{name}", asset, methods=["GET", "HEAD"]),
    ]
