"""The batch state machine (statemachine/image_batch.asl.json) run whole under moto: its
Distributed Map over the items in S3, each item's child workflow on the real task handlers
(`functional.machine`), the provider the fake ModelScope on loopback, time simulated."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

from fakes.aws import MockedAws
from fakes.modelscope import FakeModelScope
from functional.machine import TOKEN, World, entered_states, simulate_time, transitions
from imagegw.core.estimates import MemoryEstimates
from imagegw.frontends.batches import Batches
from imagegw.frontends.local import BATCH_ASL_FILE, state_machine_definition
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.executions import StepFunctionsRunner
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.providers import priors
from imagegw.runners.gateway import Gateway
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.service import owner_of

ENDS = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


def batch_service(w: World, aws: MockedAws) -> tuple[Batches, str]:
    machine = w.sfn.create_state_machine(
        name=f"image-batches-{time.time_ns()}",
        definition=state_machine_definition({**w.arns, "BatchBucket": aws.bucket}, BATCH_ASL_FILE),
        roleArn="arn:aws:iam::123456789012:role/image-batch",
        type="STANDARD",
    )
    arn = machine["stateMachineArn"]
    settings = w.settings.model_copy(update={"batch_state_machine_arn": arn})
    runner = StepFunctionsRunner(arn, aws.region)
    sealer = KeySealer(aws.key_id, aws.region)
    return Batches(settings, BatchStore(ImageStore(settings)), runner=runner, sealer=sealer), arn


def run_batch(w: World, aws: MockedAws, prompts: list[str]) -> tuple[dict[str, Any], str]:
    batches, arn = batch_service(w, aws)
    owner = owner_of(TOKEN)
    lines = [
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/images/generations",
                "body": {"model": "Qwen/Qwen-Image", "prompt": prompt},
            }
        )
        for i, prompt in enumerate(prompts)
    ]
    meta = {"id": "file-" + "1" * 24, "created_at": 0}
    anyio.run(batches.store.save_file, owner, meta, ("\n".join(lines) + "\n").encode())

    async def create() -> dict[str, Any]:
        return await batches.create(
            {"input_file_id": meta["id"], "endpoint": "/v1/images/generations"},
            owner=owner,
            provider=Gateway(batches.settings).provider("modelscope"),
            api_key=SecretStr(TOKEN),
            key_ref=None,
            base_url="https://gw",
        )

    created = anyio.run(create)
    execution = f"{arn.replace(':stateMachine:', ':execution:')}:{created['id']}"
    deadline = time.monotonic() + 60
    while w.sfn.describe_execution(executionArn=execution)["status"] not in ENDS:
        assert time.monotonic() < deadline, "batch still running"
        time.sleep(0.05)
    return anyio.run(batches.get, owner, created["id"]), execution


def test_a_batch_item_takes_no_more_state_transitions_than_the_same_durable_job(
    world: Callable[..., World],
    aws: MockedAws,
    fake_ms: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 30-s tasks (on simulated time) of a model whose run time is learned, one item of
    # a batch at a time (each item's waits are its own)
    w = world(job_poll_interval=5, batch_concurrency=1)
    simulate_time(w, monkeypatch, fake_ms)
    monkeypatch.setattr(steps, "ESTIMATES", MemoryEstimates(priors()))
    fake_ms.pending_seconds, fake_ms.task_duration = 2.0, 30.0
    jobs = []
    for _ in range(4):
        job_id = w.submit()
        assert w.wait(job_id)["status"] == "SUCCEEDED"
        jobs.append(transitions(w.history(job_id)))
    # (one provider error fails a job the same way: its transitions too)
    fake_ms.fail_prompts["a forbidden scene"] = "content moderation refused the prompt"
    failed = w.submit(prompt="a forbidden scene")
    assert w.wait(failed)["status"] == "FAILED"
    failed_job = transitions(w.history(failed))
    # When the same images are asked for in a batch, with one refused prompt
    entered = entered_states(monkeypatch)
    prompts = [f"a lighthouse, take {i}" for i in range(4)] + ["a forbidden scene"]
    view, execution = run_batch(w, aws, prompts)
    # Then the batch completes, its items as the jobs did
    assert view["status"] == "completed"
    assert view["request_counts"] == {"total": 5, "completed": 4, "failed": 1}
    # And an item takes no more state transitions than the same durable job once learned
    # (Submit, Check, the predicted wait, Poll, Check, Store: the job's 7 less its Done), the
    # refused one no more than the failed job
    items = [name for name in entered if name not in ("Items", "Finalize")]
    runs = "|".join(items).split("|Submit")  # one item at a time: each run from its Submit
    assert len(runs) == 5 and items[0] == "Submit"
    succeeded, refused = (
        [run for run in runs if "Store" in run],
        [run for run in runs if "Record" in run],
    )
    assert len(succeeded) == 4 and len(refused) == 1
    for run in succeeded:
        assert len(run.split("|")) <= jobs[-1] - 1, (run, jobs)
    assert len(refused[0].split("|")) <= failed_job, (refused, failed_job)
    assert transitions(w.sfn.get_execution_history(executionArn=execution)["events"]) == 2
