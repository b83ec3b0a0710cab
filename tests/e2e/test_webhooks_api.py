"""End to end: signed webhooks of durable jobs on `make run`'s server (its Step Functions
stand-in runs the ASL file, its Notify tasks included, with real waits), a receiver on loopback,
signatures checked by the official SDK; and a bad `webhook_url` refused before anything
starts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from fakes.jobs import MemoryRunner
from fakes.modelscope import FakeModelScope
from fakes.png import make_png
from fakes.server import ServerThread, SwappableApp
from fakes.webhook_receiver import WebhookReceiver
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from imagegw.infra.sealer import KeySealer
from imagegw.runners.stepfunctions.service import Jobs
from local_run import serve_locally

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"


@pytest.fixture(scope="module")
def local_server(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[str]:
    with serve_locally(
        tmp_path_factory.mktemp("local"),
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        JOB_POLL_INTERVAL="0",
        ALLOW_PRIVATE_URLS="true",  # the receiver is on loopback
        POWERTOOLS_LOG_LEVEL="WARNING",
    ) as (url, _):
        yield url


def secret_of(url: str, token: str) -> str:
    answer = httpx.get(
        f"{url}/v1/webhooks/secret", headers={"authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    assert body["object"] == "webhook_secret" and body["secret"].startswith("whsec_")
    return str(body["secret"])


def test_a_job_posts_a_signed_event_retried_after_a_500_with_the_same_id(
    local_server: str, fake_ms: FakeModelScope, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, hook = receiver
    app.answers = [500]
    answer = httpx.post(
        f"{local_server}/v1/images/generations",
        headers={"authorization": f"Bearer {TOKEN}", "prefer": "respond-async"},
        json={"model": "Qwen/Qwen-Image", "prompt": "a cat", "webhook_url": hook},
        timeout=30,
    )
    assert answer.status_code == 202
    job_id = answer.json()["id"]

    first, second = app.wait_for(2, timeout=60)  # the state machine's first retry: 15 s
    assert second.at - first.at < 30
    secret = secret_of(local_server, TOKEN)
    client = openai.OpenAI(api_key="unused")
    for delivery in (first, second):
        client.webhooks.verify_signature(delivery.body, delivery.headers, secret=secret)
        event = json.loads(delivery.body)
        assert event["type"] == "job.succeeded" and event["data"] == {"id": job_id}
        assert delivery.headers["webhook-id"] == event["id"]
        assert TOKEN not in delivery.body.decode()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    job = httpx.get(
        answer.headers["location"], headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ).json()
    assert job["status"] == "succeeded" and job["data"]
    assert job["webhook"]["attempts"] == 2
    assert job["webhook"]["last_status_code"] in (200, 500)  # (the last attempt may still end)


def test_two_callers_get_different_secrets(local_server: str) -> None:
    assert secret_of(local_server, "ms-one-token") != secret_of(local_server, "ms-two-token")
    assert secret_of(local_server, "ms-one-token") == secret_of(local_server, "ms-one-token")


def test_the_demos_anonymous_callers_get_no_webhook_and_no_secret(
    local_server: str, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, hook = receiver
    demo = f"{local_server}/demo/v1/images/generations"
    body = {"model": "demo/shapes", "prompt": "a red square", "size": "64x64"}

    # Given callers of the demo without a token, whom nothing tells apart (no header, or the
    # placeholder token), when they ask for a webhook or for a signing secret
    hooked = httpx.post(
        demo, json={**body, "webhook_url": hook}, headers={"prefer": "respond-async"}, timeout=30
    )
    secrets = [
        httpx.get(f"{local_server}/demo/v1/webhooks/secret", headers=headers, timeout=30)
        for headers in ({}, {"authorization": "Bearer demo"})
    ]

    # Then the webhook is refused before anything starts (one secret would sign every
    # anonymous caller's events, and anyone could fetch it), and no secret is handed out
    assert hooked.status_code == 400, hooked.text
    assert hooked.json()["error"]["param"] == "webhook_url"
    assert hooked.json()["error"]["code"] == "webhook_needs_token"
    assert [s.status_code for s in secrets] == [401, 401]
    assert all("whsec_" not in s.text for s in secrets)
    # while a demo caller with a token of their own gets both
    mine = {"authorization": "Bearer anything-w", "prefer": "respond-async"}
    accepted = httpx.post(demo, json={**body, "webhook_url": hook}, headers=mine, timeout=30)
    assert accepted.status_code == 202, accepted.text
    (delivery,) = app.wait_for(1, timeout=60)
    secret = secret_of(local_server, "anything-w")
    openai.OpenAI(api_key="unused").webhooks.verify_signature(
        delivery.body, delivery.headers, secret=secret
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # not https
        "https://127.0.0.1/hook",  # not a public address
        "https://user:pw@example.com/hook",  # credentials
        "ftp://example.com/hook",
        "not a url",
    ],
)
def test_a_bad_webhook_url_is_refused_before_anything_starts(
    _gateway_server: tuple[ServerThread, SwappableApp],  # noqa: PT019
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    s3_env: dict[str, str],
    url: str,
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["S3_ENDPOINT_URL"], region_name="us-east-1")

    def objects() -> int:
        return int(s3.list_objects_v2(Bucket=s3_env["BUCKET"]).get("KeyCount", 0))

    server, swappable = _gateway_server
    settings = make_settings(
        job_state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:j",
        webhook_secret="arn:aws:secretsmanager:us-east-1:1:secret:w",
        allow_private_urls=False,
    )
    app = create_app(settings)
    runner = MemoryRunner()
    gateway = app.state.gateway
    gateway.jobs = Jobs(settings, gateway.store, runner=runner, sealer=KeySealer("k", "us-east-1"))
    swappable.app = app
    before = objects()
    answer = httpx.post(
        f"{server.url}/v1/images/edits",
        headers={"authorization": f"Bearer {TOKEN}", "prefer": "respond-async"},
        data={"model": "Qwen/Qwen-Image-Edit-2509", "prompt": "x", "webhook_url": url},
        files=[("image", ("a.png", make_png(4, 4), "image/png"))],
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "webhook_url"
    assert runner.started == []
    assert objects() == before
    assert fake_ms.submissions == []


def test_chat_takes_a_webhook_url_only_with_a_job(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    body = {
        "model": "Qwen/Qwen-Image",
        "messages": [{"role": "user", "content": "a cat"}],
        "webhook_url": "ftp://example.com/hook",
    }
    auth = {"authorization": f"Bearer {TOKEN}"}
    # a bad URL on an async chat request: refused before the job starts
    refused = httpx.post(
        f"{local_server}/v1/chat/completions",
        headers={**auth, "prefer": "respond-async"},
        json=body,
        timeout=30,
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "webhook_url"
    # any URL on a request that is no job: it would never be called
    body["webhook_url"] = "https://example.com/hook"
    sync = httpx.post(f"{local_server}/v1/chat/completions", headers=auth, json=body, timeout=30)
    assert sync.status_code == 400
    assert sync.json()["error"]["code"] == "webhook_needs_job"
    assert fake_ms.submissions == []
