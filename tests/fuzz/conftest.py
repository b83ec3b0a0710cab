"""Fixtures of the fuzz suite: the gateway (with durable jobs in memory) served over real HTTP
on loopback with the fake providers of `tests/conftest.py`, a canary server, the tripwire and
the log capture of `fuzz.world`, and the session's tally of requests (`fuzz.config` has the
constants and the hypothesis settings)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator

import pytest

from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png
from fakes.server import ServerThread, SwappableApp
from fakes.siliconflow import FakeSiliconFlow
from fuzz.cases import Context
from fuzz.config import BODY_TIMEOUT, FUZZ_KEY, MAX_BODY_BYTES, MAX_IMAGE_BYTES
from fuzz.hostile import UrlFactory
from fuzz.world import (
    Canary,
    FakeKms,
    FuzzRunner,
    LogCapture,
    Quiescence,
    Tally,
    World,
    install_tripwire,
)
from imagegw.app import create_app
from imagegw.config import Settings
from imagegw.images import ImageBytes
from imagegw.jobs.keys import KeySealer
from imagegw.jobs.service import Jobs
from imagegw.log import logger as gateway_logger
from imagegw.storage import ImageStore


class CountingStore(ImageStore):
    """The bucket, counting the input images uploaded (for "nothing stored for a refused
    request")."""

    count = 0

    async def upload(self, image: ImageBytes) -> str:
        key = await super().upload(image)
        self.count += 1
        return key


@pytest.fixture(scope="session")
def tally() -> Tally:
    return Tally()


@pytest.fixture(scope="session")
def canary() -> Iterator[tuple[Canary, int]]:
    app = Canary()
    with ServerThread(app) as server:
        yield app, server.port


@pytest.fixture(scope="session")
def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    tally: Tally,
    canary: tuple[Canary, int],
    s3_env: dict[str, str],
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    fake_sf: FakeSiliconFlow,
    fake_openai: FakeOpenAIImages,
    _gateway_server: tuple[ServerThread, SwappableApp],
    _fake_ms_server: tuple[ServerThread, SwappableApp],
    _fake_sf_server: tuple[ServerThread, SwappableApp],
    _fake_openai_server: tuple[ServerThread, SwappableApp],
) -> Iterator[World]:
    """The gateway under fuzz: client URLs unguarded never (ALLOW_PRIVATE_URLS off), durable
    jobs in memory, small limits, fast polling; armed tripwire; logs captured."""
    settings = make_settings(
        allow_private_urls=False,
        job_state_machine_arn="arn:aws:states:us-east-1:123456789012:stateMachine:fuzz",
        job_key_id="fuzz-kms-key",
        max_image_bytes=MAX_IMAGE_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        body_timeout=BODY_TIMEOUT,
        generation_timeout=5.0,
        provider_timeout=5.0,
        poll_interval=0.02,
        poll_interval_max=0.05,
        progress_interval=0.5,
        keepalive_interval=1.0,
        poll_failure_window=2.0,
    )
    store = CountingStore(settings)
    app = create_app(settings, store=store)
    stored_name = asyncio.run(store.save_result(ImageBytes(make_png(5, 5), "image/png")))
    fake_ms.add_file("job-result.png", make_png(6, 6))
    ms_server, sf_server, openai_server = (
        _fake_ms_server[0],
        _fake_sf_server[0],
        _fake_openai_server[0],
    )
    runner = FuzzRunner(stored_name, f"{ms_server.url}/files/job-result.png")
    gateway = app.state.gateway
    sealer = KeySealer("fuzz-kms-key", settings.aws_region, client=FakeKms())
    gateway.jobs = Jobs(settings, gateway.store, runner=runner, sealer=sealer)
    server, swappable = _gateway_server
    quiet = Quiescence(app)
    swappable.app = quiet

    canary_app, canary_port = canary
    fakes = (ms_server.port, sf_server.port, openai_server.port)
    s3_port = int(s3_env["S3_ENDPOINT_URL"].rsplit(":", 1)[1])
    tripwire = install_tripwire()
    tripwire.other_threads = {f"uvicorn-{port}" for port in (*fakes, canary_port)}
    tripwire.allowed_ports = {*fakes, s3_port}
    logs = LogCapture()
    logs.attach()
    gateway_log = logging.getLogger("image-gateway")
    level, propagate = gateway_log.level, gateway_log.propagate
    gateway_log.setLevel("INFO")
    gateway_log.propagate = False  # thousands of lines: kept out of pytest's report
    # the S3 stand-in's access log and boto3's pool warnings: noise in a failure's report
    quieted = {name: logging.getLogger(name).level for name in ("werkzeug", "urllib3")}
    for name in quieted:
        logging.getLogger(name).setLevel(logging.ERROR)
    # the gateway's own stdout handler too: `logs` has every record, and a failure shows them
    printer = gateway_logger.registered_handler
    printing = printer.level
    printer.setLevel(logging.CRITICAL + 1)
    built = World(
        host=server.host,
        port=server.port,
        key=FUZZ_KEY,
        ms=fake_ms,
        sf=fake_sf,
        openai=fake_openai,
        canary=canary_app,
        tripwire=tripwire,
        logs=logs,
        runner=runner,
        tally=tally,
        test_name=request.node.name,
        uploads=store,
        quiet=quiet,
        body_timeout=BODY_TIMEOUT,
        stored_name=stored_name,
    )
    tripwire.armed = True
    try:
        yield built
    finally:
        tripwire.armed = False
        gateway_log.setLevel(level)
        gateway_log.propagate = propagate
        for name, old in quieted.items():
            logging.getLogger(name).setLevel(old)
        printer.setLevel(printing)
        logs.detach()


@pytest.fixture
def ctx(world: World, canary: tuple[Canary, int], closed_port: int) -> Context:
    return Context(
        key=FUZZ_KEY,
        urls=UrlFactory(canary[1], closed_port),
        max_image_bytes=MAX_IMAGE_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        stored_name=world.stored_name,
    )
