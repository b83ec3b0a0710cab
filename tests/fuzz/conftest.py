"""Fixtures of the fuzz suite: the gateway (with durable jobs in memory) served over real HTTP
on loopback with the fake providers of `tests/conftest.py`, a canary server, the tripwire and
the log capture of `fuzz.world`, and the session's tally of requests (`fuzz.config` has the
constants and the hypothesis settings)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png
from fakes.server import ServerThread, SwappableApp
from fakes.siliconflow import FakeSiliconFlow
from fuzz.cases import Context
from fuzz.config import BODY_TIMEOUT, FUZZ_KEY, MAX_BODY_BYTES, MAX_IMAGE_BYTES
from fuzz.hostile import UrlFactory
from fuzz.instruments import Canary, LogCapture, Quiescence, install_tripwire
from fuzz.standins import FakeKms, FuzzRunner
from fuzz.world import Tally, World
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from imagegw.infra.log import logger as gateway_logger
from imagegw.infra.media import ImageBytes
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.runners.stepfunctions.service import Jobs


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


@contextmanager
def captured_logs() -> Iterator[LogCapture]:
    """Every log record of the gateway (at INFO, as on Lambda), uvicorn and asyncio, into a
    `LogCapture`; meanwhile the gateway's own stdout printer, the S3 stand-in's access log and
    boto3's pool warnings are silenced (thousands of lines in a failure's report; `LogCapture`
    has every record and a failure shows those that matter)."""
    logs = LogCapture()
    logs.attach()
    gateway_log = logging.getLogger("image-gateway")
    printer = gateway_logger.registered_handler
    saved = (gateway_log.level, gateway_log.propagate, printer.level)
    noisy = {name: logging.getLogger(name).level for name in ("werkzeug", "urllib3")}
    gateway_log.setLevel(logging.INFO)
    gateway_log.propagate = False
    printer.setLevel(logging.CRITICAL + 1)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield logs
    finally:
        gateway_log.setLevel(saved[0])
        gateway_log.propagate = saved[1]
        printer.setLevel(saved[2])
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
        logs.detach()


def gateway_under_fuzz(settings: Settings, runner: FuzzRunner, store: ImageStore) -> Quiescence:
    """The gateway app (its durable jobs on `runner`, keys sealed by a stand-in KMS), wrapped
    to tell when it is done with each request."""
    app = create_app(settings, store=store)
    gateway = app.state.gateway
    sealer = KeySealer(settings.job_key_id, settings.aws_region, client=FakeKms())
    gateway.jobs = Jobs(settings, gateway.store, runner=runner, sealer=sealer)
    return Quiescence(app)


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
    """The gateway under fuzz, served over HTTP with the fakes: client URLs never allowed to
    private addresses (ALLOW_PRIVATE_URLS off), durable jobs in memory, small limits, fast
    polls; the tripwire armed and the logs captured meanwhile."""
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
    stored_name = asyncio.run(store.save_result(ImageBytes(make_png(5, 5), "image/png")))
    fake_ms.add_file("job-result.png", make_png(6, 6))
    runner = FuzzRunner(stored_name, f"{_fake_ms_server[0].url}/files/job-result.png")
    server, swappable = _gateway_server
    swappable.app = quiet = gateway_under_fuzz(settings, runner, store)

    fakes = (_fake_ms_server[0].port, _fake_sf_server[0].port, _fake_openai_server[0].port)
    tripwire = install_tripwire()
    tripwire.other_threads = {f"uvicorn-{port}" for port in (*fakes, canary[1])}
    tripwire.allowed_ports = {*fakes, int(s3_env["S3_ENDPOINT_URL"].rsplit(":", 1)[1])}
    with captured_logs() as logs:
        tripwire.armed = True
        try:
            yield World(
                host=server.host,
                port=server.port,
                key=FUZZ_KEY,
                ms=fake_ms,
                sf=fake_sf,
                openai=fake_openai,
                canary=canary[0],
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
        finally:
            tripwire.armed = False


@pytest.fixture
def ctx(world: World, canary: tuple[Canary, int], closed_port: int) -> Context:
    return Context(
        key=FUZZ_KEY,
        urls=UrlFactory(canary[1], closed_port),
        max_image_bytes=MAX_IMAGE_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        stored_name=world.stored_name,
    )
