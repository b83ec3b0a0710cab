"""Batches run end to end with the official SDK against `make run`'s own server: moto on
loopback runs the batch state machine (statemachine/image_batch.asl.json, a Distributed Map)
and each item's job on the image-job steps, the tasks dispatched to the real handlers; the
provider is the fake ModelScope on loopback. A batch made with a `webhook_url` gets one signed
`batch.*` event when it ends (its run's Notify state), read with the official SDK's
`client.webhooks.unwrap` as an OpenAI batch event, from a receiver on loopback.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchFailedWebhookEvent,
)

from e2e.test_gateway_keys import Local
from e2e.test_webhooks_api import secret_of
from fakes.modelscope import FakeModelScope
from fakes.png import png_size
from fakes.server import ServerThread, SwappableApp
from fakes.webhook_receiver import Delivery, WebhookReceiver
from local_run import serve_locally

TOKEN = "ms-test-token"
GENERATIONS = "/v1/images/generations"
ENDS = {"completed", "failed", "expired", "cancelled"}
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_server(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[str]:
    with serve_locally(
        tmp_path_factory.mktemp("batches"),
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        JOB_POLL_INTERVAL="0",
        BATCH_CONCURRENCY="3",
        ALLOW_PRIVATE_URLS="true",  # the webhook receiver is on loopback
        POWERTOOLS_LOG_LEVEL="WARNING",
    ) as (url, _):
        yield url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)


def line(custom_id: str, prompt: str) -> str:
    body = {"model": "Qwen/Qwen-Image", "prompt": prompt, "size": "96x64"}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": GENERATIONS, "body": body})


def start(client: openai.OpenAI, lines: list[str]) -> Batch:
    content = ("\n".join(lines) + "\n").encode()
    file_id = client.files.create(file=("in.jsonl", content), purpose="batch").id
    return client.batches.create(
        input_file_id=file_id, endpoint=GENERATIONS, completion_window="24h"
    )


def wait_until(
    client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 90
) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(text) for text in client.files.content(file_id).text.splitlines()]


def test_a_batch_with_one_failing_prompt_completes_with_output_and_error_files(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    fake_ms.fail_prompts["a forbidden scene"] = "content moderation refused the prompt"
    client = sdk(local_server)
    prompts = [f"a lighthouse, take {i}" for i in range(5)] + ["a forbidden scene"]
    batch = start(client, [line(f"req-{i}", prompt) for i, prompt in enumerate(prompts)])
    assert batch.status == "validating"  # the run checks the lines first
    done = wait_until(client, batch.id, {"completed", "failed", "expired", "cancelled"})
    assert done.status == "completed"
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (6, 5, 1)
    assert done.finalizing_at is not None and done.completed_at is not None
    # each request submitted exactly once
    assert Counter(s["body"]["prompt"] for s in fake_ms.submissions) == Counter(prompts)
    output = jsonl(client, done.output_file_id)
    assert sorted(item["custom_id"] for item in output) == [f"req-{i}" for i in range(5)]
    for item in output:
        assert item["error"] is None and item["response"]["status_code"] == 200
        (image,) = item["response"]["body"]["data"]
        assert "/v1/files/" in image["url"]
    link = output[0]["response"]["body"]["data"][0]["url"]
    assert png_size(httpx.get(link, follow_redirects=True, timeout=30).content) == (96, 64)
    (error,) = jsonl(client, done.error_file_id)
    assert error["custom_id"] == "req-5"
    assert "content moderation refused the prompt" in json.dumps(error["response"]["body"])
    assert error["response"]["status_code"] >= 400
    # the files are the caller's, listed with the rest
    assert {done.output_file_id, done.error_file_id} <= {f.id for f in client.files.list()}


def test_a_malformed_file_fails_with_its_line_number(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    client = sdk(local_server)
    created = start(client, [line("a", "a cat"), '{"custom_id": "b", "method": "POST"'])
    assert created.status == "validating"
    batch = wait_until(client, created.id, {"failed", "in_progress", "completed"})
    assert batch.status == "failed" and batch.failed_at is not None
    assert [(e.line, e.code) for e in batch.errors.data or []] == [(2, "invalid_json_line")]  # type: ignore[union-attr]
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert fake_ms.submissions == []


def test_a_cancelled_batch_submits_nothing_more(local_server: str, fake_ms: FakeModelScope) -> None:
    fake_ms.task_duration = 2.0
    client = sdk(local_server)
    batch = start(client, [line(f"slow-{i}", f"a slow scene {i}") for i in range(40)])
    deadline = time.monotonic() + 30
    while not fake_ms.submissions and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    cancelling = client.batches.cancel(batch.id)
    answered = time.monotonic()  # the fake runs in this process: the same clock
    assert cancelling.status == "cancelling"
    done = wait_until(client, batch.id, {"cancelled", "completed"}, timeout=120)
    assert done.status == "cancelled" and done.cancelled_at is not None
    # no submission reached the provider after the cancel's answer (each is timed as it
    # arrives); the items at the provider by then finished and were kept
    assert [s["time"] for s in fake_ms.submissions if s["time"] > answered] == []
    assert 0 < len(fake_ms.submissions) < 40
    assert done.request_counts is not None
    assert done.request_counts.completed == len(fake_ms.submissions)
    output = jsonl(client, done.output_file_id)
    assert len(output) == len(fake_ms.submissions)
    skipped = jsonl(client, done.error_file_id)
    assert {item["error"]["code"] for item in skipped} == {"batch_cancelled"}
    assert len(output) + len(skipped) == 40


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[Local]:
    """`make run` in keys mode: gateway keys only, the provider's token held by the server."""
    folder = tmp_path_factory.mktemp("batch-keys")
    with serve_locally(
        folder,
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        JOB_POLL_INTERVAL="0",
        ACCESS_MODE="keys",
        BATCH_CONCURRENCY="2",
        POWERTOOLS_LOG_LEVEL="WARNING",
    ) as (url, log):
        local = Local(url, log, folder / "access.json")
        local.pool(TOKEN)
        yield local


def test_a_gateway_keys_quota_counts_each_item(
    keyed_server: Local, fake_ms: FakeModelScope
) -> None:
    # Given a key allowed 3 images a day
    key = keyed_server.key("batcher", "--quota", "3")
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=key, max_retries=0)
    # When it runs a batch of 5 requests
    batch = start(client, [line(f"q-{i}", f"a quota scene {i}") for i in range(5)])
    done = wait_until(client, batch.id, {"completed", "failed", "expired", "cancelled"})
    # Then 3 are made and 2 refused with the quota's 429, never submitted
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 2)
    assert len(fake_ms.submissions) == 3
    # the provider got the server's token, never the gateway key
    assert key not in json.dumps(fake_ms.submissions)
    errors = jsonl(client, done.error_file_id)
    assert {e["response"]["status_code"] for e in errors} == {429}
    assert {e["response"]["body"]["error"]["code"] for e in errors} == {"quota_exceeded"}
    usage = httpx.get(
        f"{keyed_server.url}/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=30
    ).json()
    # the day's reservations are the 3 made (the 2 refused reserved nothing)
    assert usage["today"]["images"] == 3


# ---------------------------------------------------------------- batch webhooks


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


def test_a_batch_without_a_webhook_url_shows_no_delivery(local_server: str) -> None:
    batch = start(sdk(local_server), [line("plain", "a plain scene")])
    assert "webhook" not in (batch.model_extra or {})
    assert wait_until(sdk(local_server), batch.id, ENDS).status == "completed"
