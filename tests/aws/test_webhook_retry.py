"""The webhook delivery's Retry on the emulator (see aws/emulator.py): a job with a `webhook_url`
that ended runs its Notify state on the deployed JobNotify function, whose failed attempts the
deployed state machine retries, the first within 30 s, each with its attempt number; the job's
status shows it meanwhile.

The execution is started directly (the API refuses such a URL before it starts anything): its
webhook is on loopback, which the deployed function refuses (no ALLOW_PRIVATE_URLS in the
template), so every attempt fails without a connection and nothing leaves the machine; its key
is no sealed key, so Submit fails the job at once.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest

from aws.emulator import Stack
from imagegw.providers.base import ModelKind
from imagegw.runners.stepfunctions.schema import JobInput, JobSpec
from imagegw.runners.stepfunctions.service import owner_of

pytestmark = pytest.mark.aws

TOKEN = "ms-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _notify_attempts(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failures of the Notify state's attempts, in order."""
    entered = False
    failures = []
    for event in sorted(history, key=lambda e: int(e["id"])):
        details = event.get("stateEnteredEventDetails") or {}
        if event["type"] == "TaskStateEntered" and details.get("name") == "NotifyFailed":
            entered = True
        elif entered and event["type"] == "LambdaFunctionFailed":
            failures.append(event["lambdaFunctionFailedEventDetails"])
    return failures


def test_a_failed_delivery_is_retried_by_the_deployed_state_machine(stack: Stack) -> None:
    # Given a job with a webhook the deployed function refuses, started on the state machine
    job_id = f"job-{secrets.token_hex(16)}"
    spec = JobSpec(
        id=job_id,
        owner=owner_of(TOKEN),
        fingerprint="0" * 64,
        created=int(time.time()),
        provider="modelscope",
        model="Qwen/Qwen-Image",
        kind=ModelKind.GENERATE,
        prompt="a lighthouse",
        webhook="https://127.0.0.1:9/hook",
    )
    payload = JobInput(job=spec, key="not-a-sealed-key", wait_seconds=0, max_polls=1)
    sfn = stack.emulator.client("stepfunctions")
    machine = stack.outputs["JobStateMachineArn"]
    arn = sfn.start_execution(
        stateMachineArn=machine, name=job_id, input=payload.model_dump_json()
    )["executionArn"]
    try:
        # When two attempts have failed (the first retry comes 15 s after the first)
        deadline = time.monotonic() + 90
        failures: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(failures) < 2:
            time.sleep(1)
            history = sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
            failures = _notify_attempts(history)

        # Then each was the error the Retry names, with its attempt number
        assert len(failures) >= 2, failures
        assert {f["error"] for f in failures} == {"WebhookDeliveryError"}
        messages = [json.loads(json.loads(f["cause"])["errorMessage"]) for f in failures[:2]]
        assert messages == [
            {"attempts": 1, "last_status_code": None},
            {"attempts": 2, "last_status_code": None},
        ]
        # And the job already shows how it ended, and its delivery
        with stack.function_url() as client:
            job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        assert job["status"] == "failed"
        assert job["error"]["code"] == "job_key_unreadable"
        assert job["webhook"]["status"] == "retrying"
        assert job["webhook"]["attempts"] >= 2
    finally:
        sfn.stop_execution(executionArn=arn)
