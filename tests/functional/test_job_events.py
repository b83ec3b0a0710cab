"""Every events/job-*.json replayed through its real task handler (`functions/job_*/app.py`),
and the API Gateway event of an async submission replayed through the app.

The handlers run in this process (settings from the environment, a Lambda context) in moto's
mocked account, against the fake ModelScope, with the events varied for each case: the provider
key sealed with the mocked KMS key, the fake's task id and image URL. The files as they are, run
by the built functions the way `make invoke` runs them, are `e2e/test_invoke.py`'s.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from fakes.aws import MockedAws
from fakes.image_host import FakeImageHost
from fakes.jobs import MemoryRunner
from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png
from fakes.server import ServerThread
from fakes.webhook_receiver import WebhookReceiver
from imagegw.core.webhooks import caller_secret
from imagegw.frontends.app import create_app
from imagegw.frontends.local import LocalContext, load_task_handlers
from imagegw.infra.config import Settings
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import RESULTS
from imagegw.runners.stepfunctions.notify import WebhookDeliveryError
from imagegw.runners.stepfunctions.schema import JobInput
from imagegw.runners.stepfunctions.service import Jobs
from lambdahost.events import to_http_request

pytestmark = pytest.mark.functional

TOKEN = "ms-test-token"
EVENTS = Path(__file__).resolve().parents[2] / "events"
JOB_EVENTS = sorted(p.name for p in EVENTS.glob("job-*.json"))
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@pytest.fixture(scope="module")
def handlers() -> dict[str, Handler]:
    loaded = load_task_handlers()
    return {
        "submit": loaded["JobSubmitFunctionArn"],
        "poll": loaded["JobPollFunctionArn"],
        "store": loaded["JobStoreFunctionArn"],
        "notify": loaded["JobNotifyFunctionArn"],
    }


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def sealed(aws: MockedAws, event: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """The event with the test key sealed for its job (or for `job_id`)."""
    sealer = KeySealer(aws.key_id, aws.region)
    return {**event, "key": sealer.seal(SecretStr(TOKEN), job_id or event["job"]["id"])}


def invoke(handler: Handler, event: dict[str, Any]) -> dict[str, Any]:
    return handler(event, LocalContext("job-step", "arn:aws:lambda:us-east-1:1:function:x"))


def test_every_job_event_is_covered() -> None:
    assert JOB_EVENTS == ["job-notify.json", "job-poll.json", "job-store.json", "job-submit.json"]


def test_submit_event(
    aws: MockedAws, handlers: dict[str, Handler], fake_ms: FakeModelScope
) -> None:
    # Given the Submit task's sample event, with a key sealed for its job
    event = sealed(aws, load("job-submit.json"))

    # When the handler runs it
    progress = invoke(handlers["submit"], event)

    # Then ModelScope got the job's task, and the state holds its id, not the key
    assert progress["status"] == "running" and progress["polls"] == 0
    (task,) = progress["tasks"]
    assert task["task_id"] in fake_ms.tasks
    assert fake_ms.submissions[0]["body"] == {
        "model": "Qwen/Qwen-Image",
        "prompt": "A golden cat on a windowsill, morning light",
        "size": "1328x1328",
        "steps": 30,
    }
    assert TOKEN not in json.dumps(progress)


def test_a_key_sealed_for_another_job_does_not_open(
    aws: MockedAws, handlers: dict[str, Handler], fake_ms: FakeModelScope
) -> None:
    # Given the Submit event with a key sealed for a different job id
    event = sealed(aws, load("job-submit.json"), job_id="job-" + "1" * 32)

    # When the handler runs it / Then nothing is submitted and the job fails on the key
    progress = invoke(handlers["submit"], event)
    assert progress["status"] == "failed"
    assert json.loads(progress["cause"])["error"]["code"] == "job_key_unreadable"
    assert not fake_ms.submissions


def test_submit_refuses_a_private_image_url_without_fetching_it(
    aws: MockedAws,
    handlers: dict[str, Handler],
    fake_openai: FakeOpenAIImages,
    image_host: FakeImageHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an edit job for an OpenAI-compatible server whose input image is a URL on loopback
    # (the handler's environment leaves ALLOW_PRIVATE_URLS unset, as deployed)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    event = load("job-submit.json")
    event["job"] = {
        **event["job"],
        "provider": "openai",
        "model": "Qwen/Qwen-Image-Edit",
        "kind": "edit",
        "options": {},
        "images": [{"key": None, "url": f"{image_host.url}/files/x.png"}],
    }

    # When the Submit handler runs it
    progress = invoke(handlers["submit"], sealed(aws, event))

    # Then the job failed with the one answer for any URL that cannot be downloaded, and
    # neither the image host nor the provider was asked anything
    assert progress["status"] == "failed"
    error = json.loads(progress["cause"])["error"]
    assert error["message"] == "Input image 1 could not be downloaded from its URL."
    assert error["code"] == "invalid_image"
    assert image_host.requests == []
    assert fake_openai.requests == []


def test_poll_event(aws: MockedAws, handlers: dict[str, Handler], fake_ms: FakeModelScope) -> None:
    # Given the Poll task's sample event, for a task the fake really runs
    started = invoke(handlers["submit"], sealed(aws, load("job-submit.json")))
    event = sealed(aws, load("job-poll.json"))
    event["progress"]["tasks"][0]["task_id"] = started["tasks"][0]["task_id"]

    # When the handler runs it until the task ends
    deadline = time.monotonic() + 10
    progress = invoke(handlers["poll"], event)
    while progress["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        progress = invoke(handlers["poll"], {**event, "progress": progress})

    # Then it succeeded with the provider's image URL, and the polls were counted
    assert progress["status"] == "succeeded"
    assert progress["polls"] >= 1
    (image,) = progress["tasks"][0]["images"]
    assert image["url"].startswith(fake_ms.base_url.removesuffix("/v1"))  # type: ignore[attr-defined]


def test_poll_event_records_a_failed_poll_when_the_provider_is_down(
    aws: MockedAws, handlers: dict[str, Handler], fake_ms: FakeModelScope
) -> None:
    # Given ModelScope answers the next poll with a 503
    started = invoke(handlers["submit"], sealed(aws, load("job-submit.json")))
    event = sealed(aws, load("job-poll.json"))
    event["progress"]["tasks"][0]["task_id"] = started["tasks"][0]["task_id"]
    fake_ms.poll_errors = 1

    # When the handler runs the Poll event
    progress = invoke(handlers["poll"], event)

    # Then the task still runs (it may finish: issue 8), the failure is counted and named, and
    # the next poll comes after a longer wait (the Backoff state's seconds)
    assert progress["status"] == "running"
    (task,) = progress["tasks"]
    assert task["failures"] == 1 and "503" in task["last_error"]["body"]["error"]["message"]
    assert progress["backoff"] > 0
    assert TOKEN not in json.dumps(progress)


def test_store_event(aws: MockedAws, handlers: dict[str, Handler], fake_ms: FakeModelScope) -> None:
    # Given the Store task's sample event made a ModelScope task's, its image a link served by
    # the fake provider
    png = make_png(96, 64)
    path = fake_ms.add_file("result.png", png)
    event = load("job-store.json")
    base = fake_ms.base_url.removesuffix("/v1")  # type: ignore[attr-defined]
    event["job"]["provider"] = "modelscope"
    event["progress"]["tasks"][0].update(
        task_id="4c1b7f0e-9a2d-4e6b-8c3f-5a7d9e1b2c4f",
        images=[{"name": None, "url": f"{base}{path}"}],
    )

    # When the handler runs it
    output = invoke(handlers["store"], event)

    # Then the image was copied into the bucket under images/, and the output names it
    (image,) = output["images"]
    assert image["url"] is None and image["name"]
    stored = aws.s3.get_object(Bucket=aws.bucket, Key=RESULTS + image["name"])["Body"].read()
    assert stored == png
    assert output["task_ids"] == ["4c1b7f0e-9a2d-4e6b-8c3f-5a7d9e1b2c4f"]


@pytest.mark.anyio
async def test_async_submission_event_through_api_gateway(
    aws: MockedAws, make_settings: Callable[..., Settings]
) -> None:
    # Given the gateway with durable jobs (executions recorded, not run) and the REST API's
    # event of an async submission with an Idempotency-Key
    settings = make_settings(job_state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:x")
    app = create_app(settings)
    runner = MemoryRunner()
    gateway = app.state.gateway
    gateway.jobs = Jobs(
        settings, gateway.store, runner=runner, sealer=KeySealer(aws.key_id, aws.region)
    )
    request = to_http_request(load("apigw-rest-images-async.json"))

    # When it is replayed twice, as the Web Adapter forwards it
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        answers = [
            await client.post(request.target, headers=request.headers, content=request.body)
            for _ in range(2)
        ]

    # Then both answers are the same queued job, at a Location under the stage and provider
    first, again = answers
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["object"] == "image.job" and job["status"] == "queued"
    assert first.headers["location"] == (
        "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/Prod/modelscope/v1/jobs/"
        + job["id"]
    )
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    # one execution, whose input carries the job and the key sealed, never in plain text
    assert runner.started == [job["id"]]
    data = JobInput.model_validate_json(runner.executions[job["id"]].input or "")
    assert data.job.n == 2 and data.job.response_format == "b64_json"
    assert TOKEN not in (runner.executions[job["id"]].input or "")
    assert base64.b64decode(data.key)


def test_notify_event_posts_the_signed_event_to_a_receiver(
    aws: MockedAws, handlers: dict[str, Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the Notify task's sample event, its webhook a receiver on loopback, and the
    # deployment's webhook secret
    deployment = "w" * 48
    arn = aws_secret(aws, deployment)
    monkeypatch.setenv("WEBHOOK_SECRET", arn)
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    receiver = WebhookReceiver()
    event = load("job-notify.json")
    with ServerThread(receiver) as server:
        event["webhook"] = f"{server.url}/hook"

        # When the handler runs it
        output = invoke(handlers["notify"], event)

    # Then one signed POST carried the job's id, and the output says it was delivered
    assert output == {"status": "delivered", "attempts": 1, "last_status_code": 200}
    (delivery,) = receiver.deliveries
    secret = caller_secret(deployment, event["owner"])
    openai.OpenAI(api_key="unused").webhooks.verify_signature(
        delivery.body, delivery.headers, secret=secret
    )
    sent = json.loads(delivery.body)
    assert sent["data"] == {"id": event["job_id"]} and sent["type"] == "job.succeeded"
    assert sent["created_at"] == 1767268800  # when the Notify state was entered


def test_notify_event_to_a_private_address_fails_the_attempt(
    aws: MockedAws, handlers: dict[str, Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment without the private-address opt-in and a receiver on loopback
    monkeypatch.setenv("WEBHOOK_SECRET", aws_secret(aws, "w" * 48))
    monkeypatch.delenv("ALLOW_PRIVATE_URLS", raising=False)
    receiver = WebhookReceiver()
    event = load("job-notify.json")
    with ServerThread(receiver) as server:
        event["webhook"] = f"{server.url}/hook".replace("http://", "https://")

        # When the handler runs it / Then the attempt fails for the state machine to retry,
        # and nothing reached the address
        with pytest.raises(WebhookDeliveryError) as raised:
            invoke(handlers["notify"], event)
    assert json.loads(str(raised.value)) == {"attempts": 1, "last_status_code": None}
    assert receiver.deliveries == []


def aws_secret(aws: MockedAws, value: str) -> str:
    import uuid

    import boto3

    client = boto3.client("secretsmanager", region_name=aws.region)
    arn: str = client.create_secret(Name=f"webhooks-{uuid.uuid4().hex}", SecretString=value)["ARN"]
    return arn
