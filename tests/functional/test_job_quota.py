"""A gateway key's durable job settles its quota reservation (README "Sharing a deployment"),
on the state machine under moto with moto's DynamoDB as the access table.

The job is started as the API starts it (`Jobs.submit` with a reservation on the key's quota);
what the key's owner sees is the day's and the month's usage in the table, and the job's error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import boto3
import pytest
from pydantic import SecretStr

from fakes.aws import REGION, MockedAws
from fakes.faulty_jobs import ALWAYS, FaultyModelScope
from fakes.modelscope import FakeModelScope
from functional.machine import World, simulate_time, transitions
from imagegw.access.gate import Access, Caller
from imagegw.access.table import AccessTable, KeyRecord, Usage
from imagegw.core.estimates import MemoryEstimates
from imagegw.infra.config import Settings
from imagegw.providers.base import GenerationRequest, ModelKind
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.schema import ImageRef, JobProgress, JobQuota, TaskProgress
from imagegw.runners.stepfunctions.service import Hold

pytestmark = pytest.mark.functional

MODEL = "Qwen/Qwen-Image"
KEY_HASH = "ab" * 32


@pytest.fixture
def table(aws: MockedAws, monkeypatch: pytest.MonkeyPatch) -> Iterator[AccessTable]:
    """The access table in the mocked account (the job functions' ACCESS_TABLE), with a key
    whose daily quota is 4 images."""
    name = f"access-{uuid.uuid4().hex[:8]}"
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.setenv("ACCESS_TABLE", name)
    access = AccessTable(name, REGION, dynamodb)
    access.put_key(KeyRecord(hash=KEY_HASH, name="pat", created=1, quota=4))
    yield access
    dynamodb.delete_table(TableName=name)


def usage(table: AccessTable) -> tuple[Usage, Usage]:
    """The key's images today and this month."""
    return table.usage(KEY_HASH, time.time())


def submit_reserved(w: World, table: AccessTable, n: int = 1) -> str:
    """A job of the key, its images reserved on the quota as the API reserves them."""
    access = Access(w.settings, table=table)
    record = table.get_key(KEY_HASH)
    assert record is not None
    request = GenerationRequest(
        provider="modelscope",
        model=MODEL,
        kind=ModelKind.GENERATE,
        prompt="a lighthouse at dusk",
        api_key=SecretStr("ms-test-token"),
        n=n,
    )

    async def reserve() -> Hold | None:
        reservation = await access.reserve(Caller(SecretStr("gk-unused"), record), MODEL, n)
        assert reservation is not None
        return Hold(JobQuota(key=KEY_HASH, at=reservation.at), lambda: reservation.settle(0))

    async def main() -> str:
        return (await w.jobs.submit(request, reserve=reserve)).id

    return anyio.run(main)


def states_entered(history: list[dict[str, Any]]) -> list[str]:
    return [
        e["stateEnteredEventDetails"]["name"]
        for e in history
        if str(e["type"]).endswith("StateEntered")
    ]


def test_a_succeeded_job_counts_its_images_made_and_takes_no_more_transitions(
    world: Callable[..., World],
    fake_ms: FakeModelScope,
    table: AccessTable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a key's job of 2 images, its reservation taken; tasks of 12 s on simulated time,
    # polled at the usual pace (no run time learned, so both jobs below are paced alike)
    w = world(job_poll_interval=5)
    simulate_time(w, monkeypatch, fake_ms)
    monkeypatch.setattr(steps, "ESTIMATES", MemoryEstimates())

    async def learn_nothing(*args: Any) -> None:
        return None

    monkeypatch.setattr(steps, "learn", learn_nothing)
    fake_ms.pending_seconds, fake_ms.task_duration = 1.0, 12.0
    job_id = submit_reserved(w, table, n=2)
    assert usage(table)[0].images == 2

    # When it runs to its end
    assert w.wait(job_id)["status"] == "SUCCEEDED"

    # Then today and the month count its 2 images, once
    today, month = usage(table)
    assert (today.by_model, month.by_model) == ({MODEL: 2}, {MODEL: 2})
    # and its success path took the states it takes without a quota (no settle state)
    plain = w.submit(n=2)
    assert w.wait(plain)["status"] == "SUCCEEDED"
    assert states_entered(w.history(job_id)) == states_entered(w.history(plain))
    assert transitions(w.history(job_id)) == transitions(w.history(plain))


def test_a_step_run_twice_settles_once(
    aws: MockedAws, fake_ms: FakeModelScope, table: AccessTable
) -> None:
    # Given a job of 3 images reserved on the key, whose tasks made 2
    w_settings = Settings.from_env()
    access = Access(w_settings, table=table)
    record = table.get_key(KEY_HASH)
    assert record is not None
    reservation = anyio.run(lambda: access.reserve(Caller(SecretStr("gk-x"), record), MODEL, 3))
    assert reservation is not None
    spec: dict[str, Any] = {
        "id": "job-" + "1" * 32,
        "owner": "o",
        "fingerprint": "f",
        "created": 1,
        "provider": "modelscope",
        "model": MODEL,
        "kind": "image",
        "prompt": "p",
        "n": 3,
        "quota": {"key": KEY_HASH, "at": reservation.at},
    }
    made = TaskProgress(task_id="t1", state="SUCCEED", images=(ImageRef(name="a.png"),))
    progress = JobProgress.of([made, made.model_copy(update={"task_id": "t2"})])
    event = {"job": spec, "progress": progress.model_dump(mode="json")}

    # When Store runs twice (Step Functions runs a task at least once), then Release
    for _ in range(2):
        assert len(steps.run_step(steps.store, event, w_settings)["images"]) == 2
    steps.run_step(steps.release, {"job": spec, "release": True}, w_settings)

    # Then the day counts the 2 images made (1 given back once), the month 2
    today, month = usage(table)
    assert (today.images, month.images) == (2, 2)


def test_submit_retries_running_out_give_the_quota_back_and_keep_the_error(
    world: Callable[..., World], table: AccessTable, faulty_ms: FaultyModelScope
) -> None:
    # Given ModelScope refuses every submission for rate (nothing starts), a key's job
    faulty = faulty_ms
    faulty.refuse_submits = ALWAYS
    w = world()
    job_id = submit_reserved(w, table)
    assert usage(table)[0].images == 1

    # When the job runs until Submit's retries run out
    execution = w.wait(job_id)

    # Then it failed with the rate limit, as a job without a quota does
    assert execution["status"] == "FAILED"
    assert execution["error"] == "TransientJobError"
    body = w.render(job_id)
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    # and the reservation was given back: nothing counts today or this month
    today, month = usage(table)
    assert (today.images, month.images) == (0, 0)
    assert "Release" in states_entered(w.history(job_id))
    assert len(faulty.submissions) == 7 and not faulty.tasks


def test_a_job_failed_at_the_provider_gives_its_quota_back(
    world: Callable[..., World], fake_ms: FakeModelScope, table: AccessTable
) -> None:
    # Given a provider that fails the tasks, a key's job of 2 images
    w = world()
    fake_ms.fail_reason = "flagged"
    job_id = submit_reserved(w, table, n=2)

    # When it runs
    assert w.wait(job_id)["status"] == "FAILED"

    # Then nothing counts (Poll saw it fail and gave the reservation back)
    today, month = usage(table)
    assert (today.images, month.images) == (0, 0)
    assert w.render(job_id)["error"]["code"] == "generation_failed"
