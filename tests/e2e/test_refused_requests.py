"""End to end: a request the gateway will refuse stores nothing, submits nothing and starts
nothing (docs/security.md). A stranger with a made-up key cannot fill the bucket with images
the model would never take."""

from __future__ import annotations

import base64
from collections.abc import Callable

import boto3
import httpx
import pytest

from fakes.jobs import MemoryRunner
from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png
from fakes.server import ServerThread, SwappableApp
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from imagegw.infra.sealer import KeySealer
from imagegw.runners.stepfunctions.service import Jobs

pytestmark = pytest.mark.e2e
STRANGER = "ms-made-up-by-a-stranger"


def tiny_image(i: int) -> str:
    png = make_png(1, 1, (i % 256, 0, 0))
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture
def uploads(s3_env: dict[str, str]) -> Callable[[], int]:
    s3 = boto3.client("s3", endpoint_url=s3_env["S3_ENDPOINT_URL"], region_name="us-east-1")

    def count() -> int:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=s3_env["BUCKET"], Prefix="uploads/"
        )
        return sum(page.get("KeyCount", 0) for page in pages)

    return count


def test_many_images_for_an_edit_model_are_refused_before_any_upload(
    gateway_url: str, fake_ms: FakeModelScope, uploads: Callable[[], int]
) -> None:
    before = uploads()
    parts = [{"type": "image_url", "image_url": {"url": tiny_image(i)}} for i in range(300)]
    answer = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {STRANGER}"},
        json={
            "model": "Qwen/Qwen-Image-Edit-2509",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, *parts]}],
        },
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "too_many_images"
    assert answer.headers["x-should-retry"] == "false"
    assert uploads() == before
    assert fake_ms.submissions == []


def test_many_images_for_an_openai_compatible_edit_are_refused_before_any_upload(
    gateway: Callable[..., str],
    fake_openai: FakeOpenAIImages,
    uploads: Callable[[], int],
) -> None:
    base = gateway(default_provider="openai")
    before = uploads()
    files = [("image[]", (f"{i}.png", make_png(1, 1), "image/png")) for i in range(17)]
    answer = httpx.post(
        f"{base}/v1/images/edits",
        headers={"authorization": f"Bearer {STRANGER}"},
        data={"model": "Qwen/Qwen-Image-Edit", "prompt": "x"},
        files=files,
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "too_many_images"
    assert uploads() == before
    assert fake_openai.requests == []


def test_a_text_to_image_model_with_images_stores_nothing(
    gateway_url: str, fake_ms: FakeModelScope, uploads: Callable[[], int]
) -> None:
    before = uploads()
    parts = [{"type": "image_url", "image_url": {"url": tiny_image(i)}} for i in range(5)]
    answer = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {STRANGER}"},
        json={
            "model": "Qwen/Qwen-Image",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, *parts]}],
        },
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "unexpected_image"
    assert uploads() == before
    assert fake_ms.submissions == []


class NoKms:
    """A KMS that must not be called: nothing is sealed for a refused job."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"KMS {name} called")


def test_a_refused_async_job_starts_no_execution_and_stores_nothing(
    _gateway_server: tuple[ServerThread, SwappableApp],  # noqa: PT019
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    uploads: Callable[[], int],
) -> None:
    server, swappable = _gateway_server
    settings = make_settings(job_state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:j")
    app = create_app(settings)
    runner = MemoryRunner()
    gateway = app.state.gateway
    gateway.jobs = Jobs(
        settings, gateway.store, runner=runner, sealer=KeySealer("k", "us-east-1", NoKms())
    )
    swappable.app = app
    before = uploads()
    files = [("image", (f"{i}.png", make_png(1, 1), "image/png")) for i in range(12)]
    answer = httpx.post(
        f"{server.url}/v1/images/edits",
        headers={"authorization": f"Bearer {STRANGER}", "prefer": "respond-async"},
        data={"model": "Qwen/Qwen-Image-Edit-2509", "prompt": "x"},
        files=files,
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "too_many_images"
    assert runner.started == []
    assert uploads() == before
    assert fake_ms.submissions == []
