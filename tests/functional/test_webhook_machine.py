"""Signed webhooks of durable jobs, the state machine run whole under moto (`machine.World`): the
Notify states deliver a job's signed event to a receiver on loopback, the ASL Retry tries a
failed delivery again (its waits recorded, not slept) with the same webhook-id, and the job's
status shows the delivery."""

from __future__ import annotations

import anyio
import pytest
from machine import TOKEN, World, transitions, verified
from pydantic import SecretStr

from fakes.modelscope import FakeModelScope
from fakes.webhook_receiver import WebhookReceiver
from imagegw.core.webhooks import caller_secret
from imagegw.providers.base import GenerationRequest, ModelKind
from imagegw.runners.stepfunctions.service import owner_of

pytestmark = pytest.mark.functional


def submit(world: World, url: str, token: str = TOKEN) -> str:
    request = GenerationRequest(
        provider="modelscope",
        model="Qwen/Qwen-Image",
        kind=ModelKind.GENERATE,
        prompt="a lighthouse at dusk",
        api_key=SecretStr(token),
    )
    view = anyio.run(lambda: world.jobs.submit(request, webhook=url))
    return view.id


def test_a_succeeded_job_posts_its_signed_event(
    hooked: tuple[World, str], receiver: tuple[WebhookReceiver, str]
) -> None:
    world, deployment = hooked
    app, url = receiver
    job_id = submit(world, url)
    assert world.wait(job_id)["status"] == "SUCCEEDED"

    (delivery,) = app.wait_for(1)
    event = verified(delivery, caller_secret(deployment, owner_of(TOKEN)))
    assert event["type"] == "job.succeeded" and event["data"] == {"id": job_id}
    assert event["object"] == "event" and event["id"].startswith("evt_")
    assert delivery.headers["webhook-id"] == event["id"]
    assert TOKEN not in delivery.body.decode() and "base64" not in delivery.body.decode()
    body = world.render(job_id)
    assert body["status"] == "succeeded" and body["data"]
    assert body["webhook"] == {"status": "delivered", "attempts": 1, "last_status_code": 200}
    # the cost: the job ends through StoreThenNotify (as Store), NotifySucceeded (the one extra
    # transition) and Delivered (as Done)
    entered = [
        e["stateEnteredEventDetails"]["name"]
        for e in world.history(job_id)
        if e["type"].endswith("StateEntered")
    ]
    assert entered[-3:] == ["StoreThenNotify", "NotifySucceeded", "Delivered"]
    assert "Store" not in entered and "Done" not in entered


def test_a_delivery_answered_500_is_retried_by_the_state_machine_with_the_same_id(
    hooked: tuple[World, str], receiver: tuple[WebhookReceiver, str]
) -> None:
    world, deployment = hooked
    app, url = receiver
    app.answers = [500, 503]
    job_id = submit(world, url)
    assert world.wait(job_id)["status"] == "SUCCEEDED"

    first, second, third = app.wait_for(3)
    secret = caller_secret(deployment, owner_of(TOKEN))
    assert {verified(d, secret)["id"] for d in (first, second, third)} == {
        first.headers["webhook-id"]
    }
    # the ASL Retry's waits: the first within 30 s, then growing
    assert world.retry_sleeps[:2] == [15, 30]
    body = world.render(job_id)
    assert body["webhook"] == {"status": "delivered", "attempts": 3, "last_status_code": 200}
    # the cost: a Notify state entered once, plus each retry
    history = world.history(job_id)
    notify = [
        e
        for e in history
        if e["type"] == "TaskStateEntered"
        and e["stateEnteredEventDetails"]["name"] == "NotifySucceeded"
    ]
    assert len(notify) == 1 and transitions(history) >= 1


def test_a_failed_job_posts_job_failed(
    hooked: tuple[World, str],
    receiver: tuple[WebhookReceiver, str],
    fake_ms: FakeModelScope,
) -> None:
    world, deployment = hooked
    app, url = receiver
    fake_ms.fail_reason = "content moderation"
    job_id = submit(world, url)
    assert world.wait(job_id)["status"] == "FAILED"

    (delivery,) = app.wait_for(1)
    event = verified(delivery, caller_secret(deployment, owner_of(TOKEN)))
    assert event["type"] == "job.failed" and event["data"] == {"id": job_id}
    body = world.render(job_id)
    assert body["status"] == "failed" and "content moderation" in body["error"]["message"]
    assert body["webhook"]["status"] == "delivered"


def test_two_callers_get_different_secrets() -> None:
    deployment = "x" * 48
    assert caller_secret(deployment, owner_of("a-token")) != caller_secret(
        deployment, owner_of("b-token")
    )
