"""Webhook signing (`imagegw.core.webhooks`) as the official SDK verifies it, the delivery state
read from an execution's history (`runners.stepfunctions.delivery`), and the URL rules
(`Fetcher.check`)."""

from __future__ import annotations

import json
import time
from ipaddress import ip_address
from typing import Any

import openai
import pytest

from imagegw.core.webhooks import caller_secret, event_body, event_id, signed_headers
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher, FetchError
from imagegw.runners.stepfunctions.delivery import read_delivery

SDK = openai.OpenAI(api_key="unused")


def test_a_signed_event_verifies_with_the_sdk_and_a_changed_byte_does_not() -> None:
    secret = caller_secret("d" * 48, "owner-a")
    body = event_body("job-" + "a" * 32, "job.failed", 1767225600)
    webhook_id = event_id("job-" + "a" * 32, "job.failed")
    headers = signed_headers(secret, webhook_id, int(time.time()), body)
    SDK.webhooks.verify_signature(body, headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.verify_signature(body.replace(b"failed", b"succeeded"), headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.verify_signature(body, headers, secret=caller_secret("d" * 48, "owner-b"))
    assert json.loads(body) == {
        "id": webhook_id,
        "object": "event",
        "type": "job.failed",
        "created_at": 1767225600,
        "data": {"id": "job-" + "a" * 32},
    }


def test_secrets_differ_by_caller_and_by_deployment_secret() -> None:
    a, b = caller_secret("d" * 48, "owner-a"), caller_secret("d" * 48, "owner-b")
    assert a != b and a.startswith("whsec_")
    assert caller_secret("e" * 48, "owner-a") != a  # a rotation changes every caller's
    assert caller_secret("d" * 48, "owner-a") == a  # nothing stored: derived again the same


def test_event_ids_are_stable_per_job_and_type() -> None:
    job = "job-" + "b" * 32
    assert event_id(job, "job.succeeded") == event_id(job, "job.succeeded")
    assert event_id(job, "job.succeeded") != event_id(job, "job.failed")


def _lambda_failed(code: int | None, attempts: int) -> dict[str, Any]:
    message = json.dumps({"attempts": attempts, "last_status_code": code})
    cause = json.dumps({"errorMessage": message, "errorType": "WebhookDeliveryError"})
    return {"type": "LambdaFunctionFailed", "lambdaFunctionFailedEventDetails": {"cause": cause}}


def _history(*tail: dict[str, Any]) -> list[dict[str, Any]]:
    entered = {
        "type": "TaskStateEntered",
        "stateEnteredEventDetails": {"name": "NotifySucceeded", "input": '{"output": {}}'},
    }
    scheduled = {
        "type": "LambdaFunctionScheduled",
        "lambdaFunctionScheduledEventDetails": {"input": '{"type": "job.succeeded"}'},
    }
    return [{"type": "ExecutionStarted"}, entered, scheduled, *tail]


def test_delivery_states_from_the_history() -> None:
    assert read_delivery([{"type": "ExecutionStarted"}], running=True)["webhook"] == {
        "status": "pending",
        "attempts": 0,
        "last_status_code": None,
    }
    retrying = read_delivery(_history(_lambda_failed(500, 1)), running=True)["webhook"]
    assert retrying == {"status": "retrying", "attempts": 1, "last_status_code": 500}
    again = {"type": "LambdaFunctionScheduled", "lambdaFunctionScheduledEventDetails": {}}
    done = {
        "type": "LambdaFunctionSucceeded",
        "lambdaFunctionSucceededEventDetails": {"output": '{"last_status_code": 204}'},
    }
    delivered = read_delivery(_history(_lambda_failed(None, 1), again, done), running=False)
    assert delivered["webhook"] == {"status": "delivered", "attempts": 2, "last_status_code": 204}
    gave_up = read_delivery(_history(_lambda_failed(502, 32)), running=False)["webhook"]
    assert gave_up["status"] == "failed"


async def _resolves_to(address: str) -> Any:
    async def resolver(host: str, port: int) -> list[Any]:
        return [ip_address(address)]

    return resolver


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "address", "ok"),
    [
        ("https://hooks.example/receive", "93.184.216.34", True),
        ("https://hooks.example/receive", "10.0.0.5", False),  # resolves to a private address
        ("https://169.254.169.254/latest", "169.254.169.254", False),  # metadata
        ("http://hooks.example/receive", "93.184.216.34", False),  # not https
        ("https://u:p@hooks.example/receive", "93.184.216.34", False),  # credentials
        ("file:///etc/passwd", "93.184.216.34", False),
    ],
)
async def test_webhook_urls_follow_the_guarded_fetchers_rules(
    url: str, address: str, ok: bool
) -> None:
    fetcher = Fetcher(Settings(bucket="b"), resolver=await _resolves_to(address))
    if ok:
        await fetcher.check(url, https_only=True)
    else:
        with pytest.raises(FetchError):
            await fetcher.check(url, https_only=True)
