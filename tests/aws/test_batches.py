"""A batch through the deployed stack on the emulator (see aws/emulator.py): the Files and
Batches APIs on the API function, the deployed batch state machine (Validate, the Distributed
Map reading its items from the bucket, each item a Standard child workflow running the job's
steps on the deployed task functions, Finalize), the output and error files read back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from aws.emulator import Stack
from fakes.modelscope import FakeModelScope

pytestmark = pytest.mark.aws

TOKEN = "ms-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
GENERATIONS = "/v1/images/generations"
REFUSED = "content moderation refused the prompt"
BATCH_TIMEOUT = 120.0


def _line(custom_id: str, prompt: str) -> str:
    body = {"model": "Qwen/Qwen-Image", "prompt": prompt}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": GENERATIONS, "body": body})


def _run_batch(client: httpx.Client, lines: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The batch as created, and as it ended (or as it stood at the timeout)."""
    content = ("\n".join(lines) + "\n").encode()
    uploaded = client.post(
        "/v1/files",
        headers=AUTH,
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", content, "application/jsonl")},
    )
    assert uploaded.status_code == 200, uploaded.text
    created = client.post(
        "/v1/batches",
        headers=AUTH,
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": GENERATIONS,
            "completion_window": "24h",
        },
    )
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    deadline = time.monotonic() + BATCH_TIMEOUT
    while True:
        state = client.get(f"/v1/batches/{batch_id}", headers=AUTH)
        assert state.status_code == 200, state.text
        if state.json()["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    return created.json(), state.json()


def _batch_execution(stack: Stack, batch_id: str) -> dict[str, Any]:
    sfn = stack.emulator.client("stepfunctions")
    machine = stack.physical_id("ImageBatchStateMachine")
    arn = machine.replace(":stateMachine:", ":execution:", 1)
    execution: dict[str, Any] = sfn.describe_execution(executionArn=f"{arn}:{batch_id}")
    return execution


def _jsonl(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    answer = client.get(f"/v1/files/{file_id}/content", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return [json.loads(text) for text in answer.text.splitlines()]


def test_a_batch_runs_on_the_deployed_state_machine(stack: Stack, provider: FakeModelScope) -> None:
    # Given a batch of three requests, the provider refusing one of them
    provider.fail_prompts["a forbidden batch scene"] = REFUSED
    prompts = ["a batch lighthouse 0", "a batch lighthouse 1", "a forbidden batch scene"]
    try:
        with stack.function_url() as client:
            # When it is created and runs
            created, ended = _run_batch(
                client, [_line(f"req-{i}", p) for i, p in enumerate(prompts)]
            )
            # Then it was created validating (its run checks the lines first)
            assert created["status"] == "validating"
            execution = _batch_execution(stack, created["id"])
            # And it ended completed with 2 images and 1 failure, in an output and an error file
            assert ended["status"] == "completed", (ended, execution.get("cause"))
            assert ended["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
            output = _jsonl(client, ended["output_file_id"])
            errors = _jsonl(client, ended["error_file_id"])
    finally:
        provider.fail_prompts.pop("a forbidden batch scene", None)
    assert sorted(line["custom_id"] for line in output) == ["req-0", "req-1"]
    for line in output:
        assert line["response"]["status_code"] == 200
        assert "/v1/files/" in line["response"]["body"]["data"][0]["url"]
    (error,) = errors
    assert error["custom_id"] == "req-2" and REFUSED in json.dumps(error["response"]["body"])
    assert execution["status"] == "SUCCEEDED"
    # each request reached the provider once
    submitted = [s["body"]["prompt"] for s in provider.submissions]
    assert sorted(p for p in submitted if p in prompts) == sorted(prompts)
