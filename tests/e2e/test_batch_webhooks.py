"""End to end: a batch made with a `webhook_url` on `make run`'s own server (moto on loopback
runs the batch state machine, its Validate state, its map and its Notify state, the tasks
dispatched to the real handlers) gets one signed `batch.*` event when it ends, read with the
official SDK's `client.webhooks.unwrap` as an OpenAI batch event; a bad `webhook_url` is
refused before anything starts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import openai
import pytest
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchFailedWebhookEvent,
)

from e2e.test_batch_runs import line, start, wait_until
from e2e.test_webhooks_api import secret_of
from fakes.jobs import MemoryRunner
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from fakes.webhook_receiver import Delivery, WebhookReceiver
from imagegw.frontends.app import create_app
from imagegw.frontends.batches import Batches
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.config import Settings
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from local_run import serve_locally

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"
GENERATIONS = "/v1/images/generations"
ENDS = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def local_server(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[str]:
    with serve_locally(
        tmp_path_factory.mktemp("batch-hooks"),
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        JOB_POLL_INTERVAL="0",
        BATCH_CONCURRENCY="3",
        ALLOW_PRIVATE_URLS="true",  # the receiver is on loopback
        POWERTOOLS_LOG_LEVEL="WARNING",
    ) as (url, _):
        yield url


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    app = WebhookReceiver()
    with ServerThread(app) as server:
        yield app, f"{server.url}/hook"


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)


def hooked(client: openai.OpenAI, lines: list[str], hook: str) -> str:
    """A batch of `lines` made with `webhook_url` (the SDK sends it as an extra field)."""
    content = ("\n".join(lines) + "\n").encode()
    file_id = client.files.create(file=("in.jsonl", content), purpose="batch").id
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint=GENERATIONS,
        completion_window="24h",
        extra_body={"webhook_url": hook},
    )
    assert batch.status == "validating"
    return batch.id


def delivery_of(client: openai.OpenAI, batch_id: str) -> dict[str, object]:
    webhook: dict[str, object] = (client.batches.retrieve(batch_id).model_extra or {})["webhook"]
    return webhook


def unwrapped(url: str, delivery: Delivery) -> object:
    """The event as the official SDK reads it, its signature checked with the caller's secret."""
    client = openai.OpenAI(api_key="unused")
    return client.webhooks.unwrap(delivery.body, delivery.headers, secret=secret_of(url, TOKEN))


def test_a_batch_posts_one_signed_batch_completed_when_it_ends(
    local_server: str, fake_ms: FakeModelScope, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, hook = receiver
    fake_ms.fail_prompts["a forbidden scene"] = "content moderation refused the prompt"
    client = sdk(local_server)
    prompts = ["a lighthouse, take 0", "a lighthouse, take 1", "a forbidden scene"]
    batch_id = hooked(client, [line(f"req-{i}", p) for i, p in enumerate(prompts)], hook)

    (delivery,) = app.wait_for(1, timeout=90)
    event = unwrapped(local_server, delivery)
    assert isinstance(event, BatchCompletedWebhookEvent)
    assert event.data.id == batch_id and event.object == "event"
    assert delivery.headers["webhook-id"] == event.id
    assert TOKEN not in delivery.body.decode()
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    assert batch.completed_at is not None and event.created_at >= batch.completed_at
    # the delivery, shown as a job's is (once the attempt has ended); its items sent none
    deadline = time.monotonic() + 30
    while (webhook := delivery_of(client, batch_id))["status"] == "pending":
        assert time.monotonic() < deadline, webhook
        time.sleep(0.2)
    assert webhook == {"status": "delivered", "attempts": 1, "last_status_code": 200}
    assert len(app.deliveries) == 1


def test_a_malformed_batch_posts_batch_failed(
    local_server: str, fake_ms: FakeModelScope, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, hook = receiver
    client = sdk(local_server)
    batch_id = hooked(client, [line("a", "a cat"), '{"custom_id": "b", "method": "POST"'], hook)

    (delivery,) = app.wait_for(1, timeout=90)
    event = unwrapped(local_server, delivery)
    assert isinstance(event, BatchFailedWebhookEvent) and event.data.id == batch_id
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "failed"
    assert [e.line for e in batch.errors.data or []] == [2]  # type: ignore[union-attr]
    assert fake_ms.submissions == []


def test_a_cancelled_batch_posts_batch_cancelled(
    local_server: str, fake_ms: FakeModelScope, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, hook = receiver
    fake_ms.task_duration = 2.0
    client = sdk(local_server)
    batch_id = hooked(client, [line(f"slow-{i}", f"a slow scene {i}") for i in range(12)], hook)
    deadline = time.monotonic() + 60
    while not fake_ms.submissions and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.batches.cancel(batch_id).status == "cancelling"

    (delivery,) = app.wait_for(1, timeout=120)
    event = unwrapped(local_server, delivery)
    assert isinstance(event, BatchCancelledWebhookEvent) and event.data.id == batch_id
    done = wait_until(client, batch_id, ENDS)
    assert done.status == "cancelled"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # not https
        "https://127.0.0.1/hook",  # not a public address
        "https://user:pw@example.com/hook",  # credentials
        "not a url",
    ],
)
def test_a_bad_webhook_url_is_refused_before_the_batch_starts(
    _gateway_server: tuple[ServerThread, SwappableApp],  # noqa: PT019
    make_settings: Callable[..., Settings],
    s3_env: dict[str, str],
    url: str,
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["S3_ENDPOINT_URL"], region_name="us-east-1")

    def runs() -> int:
        listed = s3.list_objects_v2(Bucket=s3_env["BUCKET"], Prefix="batches/runs/")
        return int(listed.get("KeyCount", 0))

    server, swappable = _gateway_server
    settings = make_settings(
        job_key_id="alias/test",
        webhook_secret="arn:aws:secretsmanager:us-east-1:1:secret:w",
        allow_private_urls=False,
    )
    app = create_app(settings)
    runner = MemoryRunner()
    app.state.batches = Batches(
        settings, BatchStore(ImageStore(settings)), runner=runner, sealer=KeySealer("k", "r")
    )
    swappable.app = app
    client = sdk(server.url)
    before = runs()
    with pytest.raises(openai.BadRequestError) as caught:
        start_with(client, url)
    assert caught.value.param == "webhook_url"
    # nothing started, no batch stored
    assert runner.started == []
    assert runs() == before


def start_with(client: openai.OpenAI, hook: str) -> None:
    content = (json.dumps({"custom_id": "a"}) + "\n").encode()
    file_id = client.files.create(file=("in.jsonl", content), purpose="batch").id
    client.batches.create(
        input_file_id=file_id,
        endpoint=GENERATIONS,
        completion_window="24h",
        extra_body={"webhook_url": hook},
    )


def test_a_batch_without_a_webhook_url_shows_no_delivery(local_server: str) -> None:
    batch = start(sdk(local_server), [line("plain", "a plain scene")])
    assert "webhook" not in (batch.model_extra or {})
    assert wait_until(sdk(local_server), batch.id, ENDS).status == "completed"
