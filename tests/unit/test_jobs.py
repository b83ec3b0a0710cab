"""Durable jobs, the parts that need no AWS: ids and idempotency, the Prefer header, how an
execution becomes the job a client sees, and how a failure travels through the state."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, cast

import pytest
from pydantic import SecretStr

from fakes.jobs import MemoryRunner
from imagegw.core.lifecycle import PollPolicy, intervals_used
from imagegw.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    ServiceUnavailableError,
)
from imagegw.frontends import job_answers
from imagegw.frontends.routes.jobs import prefers_async
from imagegw.infra.config import Settings
from imagegw.infra.executions import Execution
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.media import ImageBytes
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.providers.base import GenerationRequest, ModelKind
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.schema import (
    JOB_ID,
    ErrorInfo,
    ImageRef,
    JobInput,
    JobOutput,
    JobProgress,
    JobQuota,
    JobSpec,
    TaskProgress,
    error_body,
)
from imagegw.runners.stepfunctions.service import (
    Hold,
    Jobs,
    check_idempotency_key,
    job_id_for,
    max_polls,
    owner_of,
)

TOKEN = "ms-test-token"
SETTINGS = Settings(job_state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:jobs")


class NoKms:
    """A KMS that must not be called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"KMS {name} called")


def jobs(runner: MemoryRunner) -> Jobs:
    return Jobs(SETTINGS, ImageStore(SETTINGS), runner=runner, sealer=KeySealer("k", "r", NoKms()))


def record(runner: MemoryRunner, status: str, token: str = TOKEN, **fields: Any) -> str:
    """An execution of a job of `token`'s, in `status`."""
    job_id = job_id_for(owner_of(token), None)
    spec = JobSpec(
        id=job_id,
        owner=owner_of(token),
        fingerprint="f",
        created=1763776600,
        provider="modelscope",
        model="Qwen/Qwen-Image",
        kind=ModelKind.GENERATE,
        prompt="a fox",
        n=2,
    )
    payload = JobInput(job=spec, key="c2VhbGVk", wait_seconds=0, max_polls=3)
    runner.executions[job_id] = Execution(
        job_id, status, 1763776600.5, input=payload.model_dump_json(), **fields
    )
    return job_id


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("respond-async", True),
        ("Respond-Async", True),
        ("return=minimal, respond-async; wait=10", True),
        ("respond-async=true", True),
        ("return=representation", False),
        ("respond-asynchronously", False),
        ("", False),
        (None, False),
    ],
)
def test_the_prefer_header(header: str | None, wanted: bool) -> None:
    assert prefers_async(header) is wanted


def test_job_ids_derive_from_the_caller_and_the_idempotency_key() -> None:
    mine, theirs = owner_of(TOKEN), owner_of("ms-other")
    assert TOKEN not in mine and len(mine) == 64
    assert job_id_for(mine, "k1") == job_id_for(mine, "k1")
    assert job_id_for(mine, "k1") != job_id_for(mine, "k2")
    assert job_id_for(mine, "k1") != job_id_for(theirs, "k1")
    assert job_id_for(mine, None) != job_id_for(mine, None)
    for job_id in (job_id_for(mine, "k1"), job_id_for(mine, None)):
        assert JOB_ID.match(job_id)


@pytest.mark.parametrize("value", ["", "   ", "x" * 256, "tab\there"])
def test_bad_idempotency_keys_are_400(value: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_idempotency_key(value)
    assert caught.value.param == "Idempotency-Key"


def test_polls_follow_the_job_timeout() -> None:
    assert max_polls(Settings(job_timeout=3600, job_poll_interval=5)) == 720
    assert max_polls(Settings(job_timeout=3, job_poll_interval=0)) == 3
    assert max_polls(Settings(job_timeout=1, job_poll_interval=60)) == 1


def test_progress_ends_when_every_task_ended() -> None:
    image = TaskProgress(task_id="a", state="SUCCEED", images=(ImageRef(url="https://x/1.png"),))
    failed = TaskProgress(
        task_id="b", state="FAILED", error=ErrorInfo.of(ProviderError("no", code="x"))
    )
    running = TaskProgress(task_id="c", state="RUNNING")
    assert JobProgress.of([image, running]).status == "running"
    assert JobProgress.of([image, failed]).status == "succeeded"
    gave_up = JobProgress.of([failed, failed], polls=4)
    assert (gave_up.status, gave_up.polls, gave_up.error) == ("failed", 4, "ProviderError")
    assert json.loads(gave_up.cause or "")["error"]["message"] == "no"


def test_a_failure_travels_as_error_and_cause() -> None:
    body = ProviderError("ModelScope task t failed: nsfw", code="generation_failed").body()
    assert error_body("ProviderError", json.dumps(body)) == body
    lambda_error = {"errorMessage": "ModelScope answered 503.", "errorType": "TransientJobError"}
    kept_failing = error_body("TransientJobError", json.dumps(lambda_error))
    assert kept_failing["error"]["message"] == "ModelScope answered 503."
    assert kept_failing["error"]["type"] == "provider_error"
    timed_out = error_body("DeadlineExceededError", "The provider did not finish in time.")
    assert (
        timed_out
        == DeadlineExceededError(
            "The provider did not finish in time.", code="deadline_exceeded"
        ).body()
    )
    crash = error_body("Runtime.ExitError", '{"errorMessage": "secret stack"}')
    assert crash["error"]["code"] == "job_failed" and "secret" not in json.dumps(crash)


def test_a_step_retried_until_it_gave_up_fails_with_the_gateways_error() -> None:
    # Given a submission refused for rate until the state machine's retries ran out: the
    # step's error carries the gateway's error body, in Lambda's error document
    refused = RateLimitError("ModelScope: Rate limit exceeded", code="rate_limit_exceeded")
    lambda_error = {
        "errorMessage": str(steps.retry_later(refused)),
        "errorType": "TransientJobError",
    }

    # When the job's error is read / Then it is the rate limit, not "provider unavailable"
    body = error_body("TransientJobError", json.dumps(lambda_error))
    assert body == refused.body()
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("failures", "interval", "wait"),
    [
        (0, 5, 0),
        (1, 5, 10),
        (2, 5, 20),
        (3, 5, 40),
        (4, 5, 60),
        (50, 5, 60),
        (1, 0, 2),
        (3, 0, 8),
        (1, 120, 120),
        (99, 3600, 3600),
    ],
)
def test_failed_polls_wait_longer_each_time_up_to_a_minute(
    failures: int, interval: int, wait: int
) -> None:
    assert PollPolicy.durable(interval).backoff(failures) == wait


def test_a_long_wait_counts_against_the_deadline_as_the_intervals_it_lasted() -> None:
    assert intervals_used(5, 5) == 1
    assert intervals_used(0, 0) == 1
    assert intervals_used(20, 5) == 4
    assert intervals_used(16, 0) == 16
    assert intervals_used(7, 5) == 2


def test_a_running_progress_carries_its_backoff_and_an_ended_one_none() -> None:
    failing = TaskProgress(
        task_id="a",
        state="RUNNING",
        failures=2,
        last_error=ErrorInfo.of(ProviderError("ModelScope answered 503.", code="x")),
    )
    assert not failing.ended
    assert JobProgress.of([failing], polls=3, backoff=4).backoff == 4
    done = TaskProgress(task_id="a", images=(ImageRef(url="https://x/1.png"),))
    assert JobProgress.of([done], polls=3, backoff=4).backoff == 0


@pytest.mark.anyio
async def test_a_running_job_is_queued_until_the_provider_has_it() -> None:
    runner = MemoryRunner()
    job_id = record(runner, "RUNNING")
    assert (await jobs(runner).status(job_id, TOKEN)).status == "queued"
    runner.in_submit = False
    view = await jobs(runner).status(job_id, TOKEN)
    assert view.status == "in_progress"
    assert view.summary() == {
        "id": job_id,
        "object": "image.job",
        "status": "in_progress",
        "created": 1763776600,
    }


@pytest.mark.anyio
async def test_a_succeeded_job_renders_the_images_api_data() -> None:
    runner = MemoryRunner()
    output = JobOutput(
        images=(ImageRef(name="A" * 32 + ".png"), ImageRef(url="https://provider/x.png")),
        task_ids=("t1", "t2"),
    )
    job_id = record(runner, "SUCCEEDED", output=output.model_dump_json())
    service = jobs(runner)
    body = await job_answers.render(
        service,
        await service.status(job_id, TOKEN),
        base_url="https://gw/Prod",
        fetcher=Fetcher(SETTINGS),
    )
    assert body == {
        "id": job_id,
        "object": "image.job",
        "status": "succeeded",
        "created": 1763776600,
        "model": "Qwen/Qwen-Image",
        "data": [
            {"url": f"https://gw/Prod/v1/files/{'A' * 32}.png"},
            {"url": "https://provider/x.png"},
        ],
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "fields", "code"),
    [
        ("FAILED", {"error": "ProviderError", "cause": None}, "job_failed"),
        ("TIMED_OUT", {}, "deadline_exceeded"),
        ("ABORTED", {}, "job_aborted"),
    ],
)
async def test_ended_jobs_that_made_nothing_failed(
    status: str, fields: dict[str, Any], code: str
) -> None:
    runner = MemoryRunner()
    job_id = record(runner, status, **fields)
    service = jobs(runner)
    view = await service.status(job_id, TOKEN)
    body = await job_answers.render(service, view, base_url="https://gw", fetcher=Fetcher(SETTINGS))
    assert body["status"] == "failed" and "data" not in body
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.anyio
async def test_only_the_submitter_sees_a_job() -> None:
    runner = MemoryRunner()
    job_id = record(runner, "RUNNING")
    for asked, token in ((job_id, "ms-other"), ("job-" + "0" * 32, TOKEN), ("../x", TOKEN)):
        with pytest.raises(NotFoundError) as caught:
            await jobs(runner).status(asked, token)
        assert caught.value.code == "job_not_found"


@pytest.mark.anyio
async def test_no_jobs_without_a_state_machine() -> None:
    service = Jobs(Settings(), ImageStore(Settings()))
    assert not service.enabled
    with pytest.raises(NotFoundError) as caught:
        await service.status("job-" + "0" * 32, TOKEN)
    assert caught.value.code == "jobs_disabled"


def test_sealing_failures_name_no_secret() -> None:
    class Broken:
        def encrypt(self, **kwargs: Any) -> Any:
            raise RuntimeError(f"cannot encrypt {kwargs['Plaintext']!r}")

    with pytest.raises(GatewayError) as caught:
        KeySealer("key", "us-east-1", Broken()).seal(SecretStr(TOKEN), "job-" + "0" * 32)
    assert TOKEN not in caught.value.message and caught.value.code == "jobs_unavailable"


class _Quota:
    """A gateway key's quota as the route hands it to `Jobs.submit`: what was reserved and
    given back, and whether it is spent."""

    def __init__(self, spent: bool = False) -> None:
        self.spent = spent
        self.reserved = 0
        self.released = 0

    async def reserve(self) -> Hold | None:
        if self.spent:
            raise RateLimitError("over quota", code="quota_exceeded", retryable=False)
        self.reserved += 1
        return Hold(JobQuota(key="ab" * 32, at=1763776600.0), self.release)

    async def release(self) -> None:
        self.released += 1


class _NoUploads:
    """A bucket that must not be written."""

    async def upload(self, image: Any) -> str:
        raise AssertionError("staged before the reservation")


def _edit() -> GenerationRequest:
    return GenerationRequest(
        provider="modelscope",
        model="Qwen/Qwen-Image-Edit",
        kind=ModelKind.EDIT,
        prompt="make it blue",
        api_key=SecretStr("gk-" + "k" * 32),
    )


@pytest.mark.anyio
async def test_a_replayed_submission_reserves_nothing_and_a_lost_race_gives_back() -> None:
    runner, quota = MemoryRunner(), _Quota()
    service = jobs(runner)
    submit = {"idempotency_key": "k-1", "owner": "o", "key_ref": "pool:modelscope:abc"}

    # the first submission reserves, its replays return the job and reserve nothing
    first = await service.submit(_edit(), reserve=quota.reserve, **submit)
    for _ in range(3):
        again = await service.submit(_edit(), reserve=quota.reserve, **submit)
        assert again.id == first.id
    assert (quota.reserved, quota.released) == (1, 0)
    spec = JobInput.model_validate_json(runner.executions[first.id].input or "").job
    assert spec.quota == JobQuota(key="ab" * 32, at=1763776600.0)

    # another submission with the same key wins the race after our look: ours gives back
    class Racing(MemoryRunner):
        def describe(self, name: str) -> Execution | None:
            return super().describe(name) if self.started else None

        def start(self, name: str, payload: str) -> bool:
            super().start(name, payload)
            return False

    quota = _Quota()
    raced = await jobs(Racing()).submit(_edit(), reserve=quota.reserve, **submit)
    assert raced.id == first.id and (quota.reserved, quota.released) == (1, 1)


@pytest.mark.anyio
async def test_over_quota_a_job_is_refused_before_anything_is_staged() -> None:
    runner = MemoryRunner()
    service = Jobs(SETTINGS, cast("ImageStore", _NoUploads()), runner=runner)
    with pytest.raises(RateLimitError) as refused:
        await service.submit(
            _edit(),
            inputs=[ImageBytes(b"\x89PNG" + b"0" * 64, "image/png")],
            owner="o",
            key_ref="pool:modelscope:abc",
            reserve=_Quota(spent=True).reserve,
        )
    assert refused.value.code == "quota_exceeded"
    assert not runner.started


@pytest.mark.anyio
async def test_a_job_too_near_the_state_limit_is_refused_and_its_quota_given_back() -> None:
    from imagegw.runners.stepfunctions.schema import STATE_LIMIT
    from imagegw.runners.stepfunctions.service import INPUT_LIMIT

    # Given a job whose input fits Step Functions' 256 KiB, but not with what Submit adds
    runner, quota = MemoryRunner(), _Quota()
    near = replace(_edit(), prompt="p" * (STATE_LIMIT - 8 * 1024))
    assert INPUT_LIMIT < len(near.prompt) < STATE_LIMIT

    # When it is submitted
    with pytest.raises(InvalidRequestError) as refused:
        await jobs(runner).submit(
            near, reserve=quota.reserve, owner="o", key_ref="pool:modelscope:abc"
        )

    # Then it is refused before any execution (which would fail at Submit with
    # States.DataLimitExceeded, which no Catch takes), and the key's quota is given back
    assert refused.value.code == "job_too_large"
    assert runner.executions == {}
    assert (quota.reserved, quota.released) == (1, 1)


@pytest.mark.anyio
async def test_the_job_service_failing_is_a_retryable_503() -> None:
    class Down(MemoryRunner):
        def start(self, name: str, payload: str) -> bool:
            raise ConnectionError("connection refused")

    quota = _Quota()
    with pytest.raises(ServiceUnavailableError) as down:
        await jobs(Down()).submit(
            _edit(), reserve=quota.reserve, owner="o", key_ref="pool:modelscope:abc"
        )
    assert down.value.status == 503 and down.value.retryable is True
    assert down.value.code == "jobs_unavailable"
    assert (quota.reserved, quota.released) == (1, 1)
