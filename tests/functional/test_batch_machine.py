"""The batch state machine (statemachine/image_batch.asl.json) run whole under moto: its first
state checks the lines (the batch shows `validating` until then), its Distributed Map runs the
items on the job's steps, and a batch made with a `webhook_url` gets one signed `batch.*` event
when it ends, delivered by the job's Notify function with its Retry (waits recorded, not
slept); the batch object shows the delivery. An item takes no more state transitions than the
same durable job."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from machine import TOKEN, World, entered_states, simulate_time, transitions, verified
from pydantic import SecretStr

from fakes.aws import REGION, MockedAws
from fakes.modelscope import FakeModelScope
from fakes.webhook_receiver import WebhookReceiver
from imagegw.core.estimates import MemoryEstimates
from imagegw.core.webhooks import caller_secret
from imagegw.frontends import batch_steps
from imagegw.frontends.batches import Batches
from imagegw.frontends.local import BATCH_ASL_FILE, state_machine_definition
from imagegw.frontends.routes.files import file_object, new_file_id
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.executions import StepFunctionsRunner
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.providers import priors
from imagegw.runners.gateway import Gateway
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.service import owner_of

pytestmark = pytest.mark.functional
GENERATIONS = "/v1/images/generations"
OWNER = owner_of(TOKEN)


class Run:
    """The batch machine in the mocked account, and the API side's `Batches` on it."""

    def __init__(self, world: World, aws: MockedAws) -> None:
        machine = world.sfn.create_state_machine(
            name=f"image-batches-{time.time_ns()}",
            definition=state_machine_definition(
                {**world.arns, "BatchBucket": aws.bucket}, BATCH_ASL_FILE
            ),
            roleArn="arn:aws:iam::123456789012:role/image-batches",
            type="STANDARD",
        )
        self.world = world
        self.runner = StepFunctionsRunner(machine["stateMachineArn"], REGION)
        self.store = BatchStore(ImageStore(world.settings))
        self.batches = Batches(
            world.settings,
            self.store,
            runner=self.runner,
            sealer=KeySealer(world.settings.job_key_id, REGION),
        )

    def start(self, lines: list[str], webhook: str | None) -> dict[str, Any]:
        content = ("\n".join(lines) + "\n").encode()
        meta = file_object(new_file_id(), size=len(content), filename="in.jsonl", purpose="batch")
        anyio.run(self.store.save_file, OWNER, meta, content)
        kit = Gateway(self.world.settings)
        body = {"input_file_id": meta["id"], "endpoint": GENERATIONS, "completion_window": "24h"}

        async def create() -> dict[str, Any]:
            return await self.batches.create(
                body,
                owner=OWNER,
                provider=kit.provider("modelscope"),
                api_key=SecretStr(TOKEN),
                key_ref=None,
                base_url="https://gw",
                webhook=webhook,
            )

        return anyio.run(create)

    def wait(self, batch_id: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            execution = self.runner.describe(batch_id)
            if execution is not None and execution.status != "RUNNING":
                return execution.status
            time.sleep(0.05)
        raise AssertionError(f"batch {batch_id} still running after {timeout} s")

    def get(self, batch_id: str) -> dict[str, Any]:
        return anyio.run(self.batches.get, OWNER, batch_id)

    def content(self, file_id: str) -> str:
        data = anyio.run(self.store.file_content, OWNER, file_id)
        assert data is not None, f"no file {file_id}"
        return data.decode()

    def entered(self, batch_id: str) -> list[str]:
        return [
            event["stateEnteredEventDetails"]["name"]
            for event in self.runner.history(batch_id)
            if event["type"].endswith("StateEntered")
        ]


@pytest.fixture
def run(hooked: tuple[World, str], aws: MockedAws) -> Callable[[], Run]:
    return lambda: Run(hooked[0], aws)


def line(custom_id: str, prompt: str) -> str:
    body = {"model": "Qwen/Qwen-Image", "prompt": prompt}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": GENERATIONS, "body": body})


def test_a_batch_that_ends_posts_one_signed_batch_completed_retried_with_the_same_id(
    run: Callable[[], Run],
    hooked: tuple[World, str],
    receiver: tuple[WebhookReceiver, str],
    fake_ms: FakeModelScope,
) -> None:
    world, deployment = hooked
    app, url = receiver
    app.answers = [500]  # the first attempt fails: the state machine's Retry tries again
    fake_ms.fail_prompts["a forbidden scene"] = "content moderation refused the prompt"
    batches = run()
    # Given a batch of 3 requests, one that its provider refuses, made with a webhook_url
    prompts = ["a lighthouse, take 0", "a lighthouse, take 1", "a forbidden scene"]
    created = batches.start([line(f"req-{i}", p) for i, p in enumerate(prompts)], url)
    assert created["status"] == "validating"
    assert created["webhook"] == {"status": "pending", "attempts": 0, "last_status_code": None}
    # When it runs to its end
    assert batches.wait(created["id"]) == "SUCCEEDED"
    # Then its webhook_url got batch.completed (items send none), signed with the caller's
    # secret, twice with the same id (the first answered 500)
    first, second = app.wait_for(2)
    secret = caller_secret(deployment, OWNER)
    events = [verified(delivery, secret) for delivery in (first, second)]
    assert events[0] == events[1]
    event = events[0]
    assert event["type"] == "batch.completed" and event["data"] == {"id": created["id"]}
    assert event["object"] == "event" and event["id"] == first.headers["webhook-id"]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert TOKEN not in first.body.decode()
    assert len(app.deliveries) == 2
    assert world.retry_sleeps[:1] == [15]  # the job's Notify Retry: 15 s first
    # And the batch shows how it ended and the delivery
    batch = batches.get(created["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert batch["webhook"] == {"status": "delivered", "attempts": 2, "last_status_code": 200}
    assert sorted(s["body"]["prompt"] for s in fake_ms.submissions) == sorted(prompts)
    entered = batches.entered(created["id"])
    assert entered[:2] == ["Validate", "Valid"]
    assert entered[-4:] == ["Finalize", "Ended", "NotifyEnded", "Done"]


def test_a_batch_that_fails_validation_posts_batch_failed_and_submits_nothing(
    run: Callable[[], Run],
    hooked: tuple[World, str],
    receiver: tuple[WebhookReceiver, str],
    fake_ms: FakeModelScope,
) -> None:
    _, deployment = hooked
    app, url = receiver
    batches = run()
    created = batches.start([line("a", "a cat"), '{"custom_id": "b"'], url)
    assert created["status"] == "validating"
    assert batches.wait(created["id"]) == "SUCCEEDED"
    (delivery,) = app.wait_for(1)
    event = verified(delivery, caller_secret(deployment, OWNER))
    assert event["type"] == "batch.failed" and event["data"] == {"id": created["id"]}
    batch = batches.get(created["id"])
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == [(2, "invalid_json_line")]
    assert batch["webhook"] == {"status": "delivered", "attempts": 1, "last_status_code": 200}
    assert fake_ms.submissions == []
    assert batches.entered(created["id"]) == ["Validate", "Valid", "NotifyInvalid", "Invalid"]


def test_a_batch_whose_window_passed_before_its_items_ran_ends_expired_submitting_nothing(
    run: Callable[[], Run],
    hooked: tuple[World, str],
    receiver: tuple[WebhookReceiver, str],
    fake_ms: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, deployment = hooked
    app, url = receiver
    batches = run()
    # Given a batch of 2 requests made with a webhook_url, whose 24-h completion window has
    # passed by the time its steps run (the steps' clock 25 h on)
    created = batches.start([line("a", "a cat"), line("b", "a dog")], url)
    later = time.time() + 25 * 3600
    monkeypatch.setattr(batch_steps, "time", SimpleNamespace(time=lambda: later))
    # When it runs to its end
    assert batches.wait(created["id"]) == "SUCCEEDED"
    # Then nothing was submitted, and the batch ended expired with each request in its error
    # file as batch_expired, as OpenAI's Batch API reports requests its window left unrun
    # (counted neither completed nor failed: they did not run)
    assert fake_ms.submissions == []
    batch = batches.get(created["id"])
    assert batch["status"] == "expired" and batch["expired_at"] is not None
    assert batch["completed_at"] is None
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
    assert batch["output_file_id"] is None and batch["error_file_id"] is not None
    errors = [json.loads(row) for row in batches.content(batch["error_file_id"]).splitlines()]
    assert sorted(row["custom_id"] for row in errors) == ["a", "b"]
    assert {row["error"]["code"] for row in errors} == {"batch_expired"}
    # And its webhook_url got one signed batch.expired
    (delivery,) = app.wait_for(1)
    event = verified(delivery, caller_secret(deployment, OWNER))
    assert event["type"] == "batch.expired" and event["data"] == {"id": created["id"]}
    # And the log line of its end counts the same
    ended = [vars(r) for r in caplog.records if r.getMessage() == "batch ended"]
    assert [(e["status"], e["completed"], e["failed"], e["not_submitted"]) for e in ended] == [
        ("expired", 0, 0, 2)
    ]


def test_a_batch_cancelled_while_its_lines_are_checked_runs_no_item_and_ends_cancelled(
    run: Callable[[], Run],
    hooked: tuple[World, str],
    receiver: tuple[WebhookReceiver, str],
    fake_ms: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, deployment = hooked
    app, url = receiver
    batches = run()
    check = batch_steps._check

    async def cancelled_meanwhile(record: Any, key_hash: str | None, kit: Gateway) -> Any:
        await batches.batches.cancel(OWNER, record["id"])
        return await check(record, key_hash, kit)

    # Given a batch of 3 requests made with a webhook_url, cancelled by its owner while its
    # run's first state checks its lines
    monkeypatch.setattr(batch_steps, "_check", cancelled_meanwhile)
    created = batches.start([line(f"req-{i}", f"a boat, take {i}") for i in range(3)], url)
    # When it runs to its end
    assert batches.wait(created["id"]) == "SUCCEEDED"
    # Then no item ran (no map, no submission), and the batch ended cancelled with each request
    # in its error file as batch_cancelled, counted neither completed nor failed
    assert "Items" not in batches.entered(created["id"])
    assert batches.entered(created["id"])[:3] == ["Validate", "Valid", "Finalize"]
    assert fake_ms.submissions == []
    batch = batches.get(created["id"])
    assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["output_file_id"] is None
    errors = [json.loads(row) for row in batches.content(batch["error_file_id"]).splitlines()]
    assert [row["custom_id"] for row in errors] == ["req-0", "req-1", "req-2"]
    assert {row["error"]["code"] for row in errors} == {"batch_cancelled"}
    assert all(row["response"] is None and row["id"].startswith("batch_req_") for row in errors)
    # And its webhook_url got one signed batch.cancelled
    (delivery,) = app.wait_for(1)
    event = verified(delivery, caller_secret(deployment, OWNER))
    assert event["type"] == "batch.cancelled" and event["data"] == {"id": created["id"]}


def test_a_batch_without_a_webhook_url_ends_without_a_notify_state(
    run: Callable[[], Run], receiver: tuple[WebhookReceiver, str]
) -> None:
    app, _ = receiver
    batches = run()
    created = batches.start([line("a", "a cat")], None)
    assert "webhook" not in created
    assert batches.wait(created["id"]) == "SUCCEEDED"
    assert batches.get(created["id"])["status"] == "completed"
    assert batches.entered(created["id"])[-3:] == ["Finalize", "Ended", "Done"]
    assert app.deliveries == []


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
    # (a job the provider refuses, for the refused item's bar)
    fake_ms.fail_prompts["a forbidden scene"] = "content moderation refused the prompt"
    failed = w.submit(prompt="a forbidden scene")
    assert w.wait(failed)["status"] == "FAILED"
    failed_job = transitions(w.history(failed))
    # When the same images are asked for in a batch, with the refused prompt
    entered = entered_states(monkeypatch)
    batches = Run(w, aws)
    prompts = [f"a lighthouse, take {i}" for i in range(4)] + ["a forbidden scene"]
    created = batches.start([line(f"req-{i}", p) for i, p in enumerate(prompts)], None)
    assert batches.wait(created["id"]) == "SUCCEEDED"
    # Then the batch completes, its items as the jobs did
    view = batches.get(created["id"])
    assert view["status"] == "completed"
    assert view["request_counts"] == {"total": 5, "completed": 4, "failed": 1}
    # And an item takes no more state transitions than the same durable job once learned
    # (Submit, Check, the predicted wait, Poll, Check, Store: the job's 7 less its Done), the
    # refused one no more than the failed job
    processor = json.loads(BATCH_ASL_FILE.read_text())["States"]["Items"]["ItemProcessor"]
    items = [name for name in entered if name in processor["States"]]
    runs = "|".join(items).split("|Submit")  # one item at a time: each run from its Submit
    assert len(runs) == 5 and items[0] == "Submit"
    succeeded = [run for run in runs if "Store" in run]
    refused = [run for run in runs if "Record" in run]
    assert len(succeeded) == 4 and len(refused) == 1
    for run in succeeded:
        assert len(run.split("|")) <= jobs[-1] - 1, (run, jobs)
    assert len(refused[0].split("|")) <= failed_job, (refused, failed_job)
