"""`GET /`: the page and its assets, as the function serves them (the browser tests in
tests/browser use it in Chromium)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from imagegw.frontends.app import create_app
from imagegw.frontends.webpage import ASSETS
from imagegw.infra.config import Settings

pytestmark = pytest.mark.anyio
SERVED_BYTES = {path.name: path.read_bytes() for path in ASSETS.iterdir()}


@pytest.fixture
async def gw() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(demo_provider="enabled", s3_endpoint_url="http://127.0.0.1:5000"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        yield client


def _policy(answer: httpx.Response) -> dict[str, list[str]]:
    policy = answer.headers["content-security-policy"]
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


async def test_the_page_has_a_strict_content_security_policy(gw: httpx.AsyncClient) -> None:
    answer = await gw.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    policy = _policy(answer)
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    # make run's S3 stand-in serves the stored images' redirects
    assert "http://127.0.0.1:5000" in policy["img-src"]
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere() -> None:
    html = (ASSETS / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="page/' in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    for text in (html, (ASSETS / "app.js").read_text(), (ASSETS / "style.css").read_text()):
        assert "http://" not in text and "https://" not in text  # no CDN, nothing from elsewhere
    script = (ASSETS / "app.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "eval(" not in script and "new Function" not in script


async def test_relative_urls_resolve_under_the_rest_apis_stage(gw: httpx.AsyncClient) -> None:
    host = "abc.execute-api.us-east-1.amazonaws.com"
    context = json.dumps({"stage": "Prod", "domainName": host})
    answer = await gw.get(
        "/",
        headers={"host": host, "x-forwarded-proto": "https", "x-amzn-request-context": context},
    )
    assert f'<base href="https://{host}/Prod/">' in answer.text
    at_function_url = await gw.get("/", headers={"host": "x.lambda-url.us-east-1.on.aws"})
    assert '<base href="http://x.lambda-url.us-east-1.on.aws/">' in at_function_url.text


async def test_the_served_providers_are_listed_demo_first(
    gw: httpx.AsyncClient,
) -> None:
    answer = await gw.get("/")
    providers = re.search(r'data-providers="([^"]*)"', answer.text)
    assert providers is not None
    assert providers.group(1).split()[0] == "demo"
    off = create_app(Settings())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=off), base_url="http://gw"
    ) as client:
        page = (await client.get("/")).text
    listed = re.search(r'data-providers="([^"]*)"', page)
    assert listed is not None and "demo" not in listed.group(1).split()
    assert 'data-tokenless="no"' in page


@pytest.mark.parametrize(
    ("name", "media"),
    [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
async def test_assets_are_served_with_their_types(
    gw: httpx.AsyncClient, name: str, media: str
) -> None:
    answer = await gw.get(f"/page/{name}")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(media)
    assert answer.content == SERVED_BYTES[name]


@pytest.mark.parametrize("name", ["index.html", "..%2Fwebpage.py", "nope.js", "app.js.map"])
async def test_anything_else_under_page_is_a_404_in_the_openai_shape(
    gw: httpx.AsyncClient, name: str
) -> None:
    answer = await gw.get(f"/page/{name}")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_url"


async def test_health_stays_at_healthz(gw: httpx.AsyncClient) -> None:
    assert (await gw.get("/healthz")).json() == {"status": "ok"}
