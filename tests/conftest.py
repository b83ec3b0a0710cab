"""Shared fixtures: an S3 stand-in (moto server), fakes of the providers (ModelScope,
SiliconFlow, an OpenAI-compatible image server) and the gateway, all on loopback, each served
over real HTTP."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakes.aws import s3_stand_in_env
from fakes.image_host import FakeImageHost
from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.server import ServerThread, SwappableApp
from fakes.siliconflow import FakeSiliconFlow
from fakes.webhook_receiver import WebhookReceiver
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings

TOKEN = "ms-test-token"

# The API's EMF metric lines (stdout) would fill the test output; tests/e2e/test_api_metrics.py
# turns them back on where they are what is tested.
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


#: asyncio's own event loop and uvloop's: the API function runs on uvloop (uvicorn picks it when
#: it is installed, as in the layer), anything else may run on asyncio's
BOTH_LOOPS = ("asyncio", ("asyncio", {"use_uvloop": True}))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `both_loops` runs once on each event loop (`anyio_backend` parametrized)."""
    if metafunc.definition.get_closest_marker("both_loops") is not None:
        metafunc.parametrize("anyio_backend", BOTH_LOOPS, ids=["asyncio", "uvloop"])


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with one bucket; AWS credentials point at it."""
    with s3_stand_in_env("gateway-test-bucket") as env:
        yield env


@pytest.fixture(scope="session")
def _fake_ms_server() -> Iterator[tuple[ServerThread, SwappableApp]]:
    yield from _serve_swappable()


@pytest.fixture
def fake_ms(_fake_ms_server: tuple[ServerThread, SwappableApp]) -> FakeModelScope:
    """A fresh fake ModelScope for this test; `fake_ms.base_url` is its API base URL."""
    server, swappable = _fake_ms_server
    fake = FakeModelScope()
    swappable.app = fake
    fake.base_url = f"{server.url}/v1"  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def make_settings(
    s3_env: dict[str, str],
    fake_ms: FakeModelScope,
    fake_sf: FakeSiliconFlow,
    fake_openai: FakeOpenAIImages,
) -> Callable[..., Settings]:
    """Settings wired to the stand-ins, with fast polling; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "bucket": s3_env["BUCKET"],
            "s3_endpoint_url": s3_env["S3_ENDPOINT_URL"],
            "modelscope_base_url": fake_ms.base_url,  # type: ignore[attr-defined]
            "siliconflow_base_url": fake_sf.base_url,
            "openai_base_url": fake_openai.base_url,
            "poll_interval": 0.05,
            "poll_interval_max": 0.2,
            "progress_interval": 1.0,
            "keepalive_interval": 5.0,
            "generation_timeout": 20.0,
            # the fakes and the test servers holding input images live on loopback; the SSRF
            # tests turn this off again (allow_private_urls=False)
            "allow_private_urls": True,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def _gateway_server() -> Iterator[tuple[ServerThread, SwappableApp]]:
    swappable = SwappableApp()
    with ServerThread(swappable) as server:
        yield server, swappable


@pytest.fixture
def gateway(
    _gateway_server: tuple[ServerThread, SwappableApp], make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., str]]:
    """Serve a gateway app built from `make_settings(**overrides)`; its base URL. The session's
    server is settled after the test: a request's last log line, written after its answer,
    belongs to this test, not to the next one's captured output."""
    server, swappable = _gateway_server

    def serve(**overrides: Any) -> str:
        swappable.app = create_app(make_settings(**overrides))
        return server.url

    yield serve
    swappable.settle()


@pytest.fixture
def gateway_url(gateway: Callable[..., str]) -> str:
    """The gateway with the default test settings."""
    return gateway()


def _serve_swappable() -> Iterator[tuple[ServerThread, SwappableApp]]:
    """A loopback server whose app each test swaps for a fresh fake provider. On asyncio's
    loop, whatever the venv has: a fake that downloads a client's image URL fails at once on a
    link-local address without a zone, as a provider does, where uvloop (libuv) picks an
    interface and waits out the fetch's timeout, past the gateway's deadline."""
    swappable = SwappableApp()
    with ServerThread(swappable, loop="asyncio") as server:
        yield server, swappable


@pytest.fixture(scope="session")
def _fake_sf_server() -> Iterator[tuple[ServerThread, SwappableApp]]:
    yield from _serve_swappable()


@pytest.fixture
def fake_sf(_fake_sf_server: tuple[ServerThread, SwappableApp]) -> FakeSiliconFlow:
    """A fresh fake SiliconFlow for this test; `fake_sf.base_url` is its API base URL."""
    server, swappable = _fake_sf_server
    fake = FakeSiliconFlow()
    fake.base_url = f"{server.url}/v1"
    swappable.app = fake
    return fake


@pytest.fixture(scope="session")
def _fake_openai_server() -> Iterator[tuple[ServerThread, SwappableApp]]:
    yield from _serve_swappable()


@pytest.fixture
def fake_openai(_fake_openai_server: tuple[ServerThread, SwappableApp]) -> FakeOpenAIImages:
    """A fresh fake OpenAI-compatible image server (seed 003's style; set `style = "openai"`
    for OpenAI's own API); `fake_openai.base_url` is its API base URL."""
    server, swappable = _fake_openai_server
    fake = FakeOpenAIImages()
    fake.base_url = f"{server.url}/v1"
    swappable.app = fake
    return fake


@pytest.fixture(scope="session")
def _image_host_server() -> Iterator[tuple[ServerThread, SwappableApp]]:
    yield from _serve_swappable()


@pytest.fixture
def image_host(_image_host_server: tuple[ServerThread, SwappableApp]) -> FakeImageHost:
    """A fresh fake web server holding images clients link to (on loopback: a private address,
    which the SSRF guard refuses unless allowed); `image_host.url` is its base URL."""
    server, swappable = _image_host_server
    fake = FakeImageHost()
    fake.url = server.url
    swappable.app = fake
    return fake


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    """A webhook receiver on loopback (`fakes.webhook_receiver`) and its URL."""
    app = WebhookReceiver()
    with ServerThread(app) as server:
        yield app, f"{server.url}/hook"
