"""The durable-job state machine (statemachine/image_job.asl.json) run whole under moto.

moto's Step Functions interpreter (`execute_state_machine`) runs the ASL file; its Lambda tasks
are dispatched in-process to the real task handlers (`functions/job_*/app.py`) through the seam
moto 5.2 calls for a Lambda task (`lambda_eval_utils._invoke_lambda_function`, patched here with
`imagegw.local.LocalLambdas`). S3 and KMS are moto's too; the provider is the fake ModelScope
on loopback. Jobs are started the way the API function starts them (`imagegw.jobs.service`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import boto3
import pytest
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from pydantic import SecretStr

from fakes.aws import BUCKET, REGION, MockedAws
from fakes.modelscope import FakeModelScope
from fakes.png import png_size, sniff_image
from imagegw.config import Settings
from imagegw.jobs.keys import KeySealer
from imagegw.jobs.runner import StepFunctionsRunner
from imagegw.jobs.service import Jobs, JobView
from imagegw.local import (
    LocalLambdas,
    function_arns,
    load_task_handlers,
    state_machine_definition,
)
from imagegw.providers.base import GenerationRequest, ModelKind
from imagegw.storage import RESULTS, ImageStore

TOKEN = "ms-test-token"
pytestmark = pytest.mark.functional


@dataclass
class World:
    """The mocked account: a bucket, a KMS key, the state machine, and what happened."""

    settings: Settings
    sfn: Any
    s3: Any
    lambdas: LocalLambdas
    arns: dict[str, str]
    retry_sleeps: list[float] = field(default_factory=list)

    @property
    def jobs(self) -> Jobs:
        return Jobs(
            self.settings,
            ImageStore(self.settings),
            runner=StepFunctionsRunner(str(self.settings.job_state_machine_arn), REGION),
            sealer=KeySealer(self.settings.job_key_id, REGION),
        )

    def submit(self, n: int = 1, **options: Any) -> str:
        request = GenerationRequest(
            provider="modelscope",
            model="Qwen/Qwen-Image",
            kind=ModelKind.GENERATE,
            prompt="a lighthouse at dusk",
            api_key=SecretStr(TOKEN),
            options=options,
            n=n,
        )
        view: JobView = anyio.run(lambda: self.jobs.submit(request))
        return view.id

    def wait(self, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
        arn = StepFunctionsRunner(str(self.settings.job_state_machine_arn), REGION)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer: dict[str, Any] = self.sfn.describe_execution(
                executionArn=arn.execution_arn(job_id)
            )
            if answer["status"] != "RUNNING":
                return answer
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still running after {timeout} s")

    def status(self, job_id: str) -> JobView:
        return anyio.run(lambda: self.jobs.status(job_id, TOKEN))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        arn = StepFunctionsRunner(str(self.settings.job_state_machine_arn), REGION)
        events: list[dict[str, Any]] = self.sfn.get_execution_history(
            executionArn=arn.execution_arn(job_id), maxResults=1000
        )["events"]
        return events

    def calls(self, task: str) -> list[dict[str, Any]]:
        return [event for arn, event in self.lambdas.calls if arn == self.arns[task]]


@pytest.fixture
def world(
    aws: MockedAws, monkeypatch: pytest.MonkeyPatch, fake_ms: FakeModelScope
) -> Callable[..., World]:
    """A state machine in the mocked account, its tasks dispatched to the real handlers."""
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arns = function_arns(REGION)
    handlers = load_task_handlers()
    lambdas = LocalLambdas({arns[name]: handler for name, handler in handlers.items()})
    monkeypatch.setattr(lambda_eval_utils, "_invoke_lambda_function", lambdas.moto_invoke)

    def make(**overrides: Any) -> World:
        machine = sfn.create_state_machine(
            name=f"image-job-{len(sfn.list_state_machines()['stateMachines'])}",
            definition=state_machine_definition(arns),
            roleArn="arn:aws:iam::123456789012:role/image-job",
            type="STANDARD",
        )
        values: dict[str, Any] = {
            "bucket": BUCKET,
            "modelscope_base_url": fake_ms.base_url,  # type: ignore[attr-defined]
            "job_state_machine_arn": machine["stateMachineArn"],
            "job_key_id": aws.key_id,
            "job_poll_interval": 0,
            "job_timeout": 600,
        }
        values.update(overrides)
        world = World(Settings(**values), sfn, aws.s3, lambdas, arns)
        # the Retry waits: recorded (and not slept) to see the backoff
        monkeypatch.setattr(
            retrier_decl, "time", type("Clock", (), {"sleep": world.retry_sleeps.append})
        )
        return world

    return make


def assert_no_plain_key(world: World, job_id: str, execution: dict[str, Any]) -> None:
    """The provider key is in no input, output or event of the execution."""
    history = json.dumps(world.history(job_id), default=str)
    assert "LambdaFunctionScheduled" in history  # the history is there to look at
    for text in (history, execution.get("input", ""), execution.get("output", "")):
        assert TOKEN not in text
        assert TOKEN.removeprefix("ms-") not in text


def test_a_job_runs_to_stored_images(world: Callable[..., World], fake_ms: FakeModelScope) -> None:
    # Given the state machine under moto and a ModelScope task that takes a moment
    w = world()
    fake_ms.task_duration = 0.3

    # When a job for two images is started as the API function starts it
    job_id = w.submit(n=2, size="640x480")
    execution = w.wait(job_id)

    # Then it succeeded: two provider tasks were submitted once each and polled until done...
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert len(fake_ms.submissions) == 2
    assert len(w.calls("JobSubmitFunctionArn")) == 1
    assert len(w.calls("JobPollFunctionArn")) >= 1
    # ...and its output names two copies in the bucket of the provider's 640x480 images
    output = json.loads(execution["output"])
    names = [image["name"] for image in output["images"]]
    assert len(names) == 2 and all(names)
    for name in names:
        data = w.s3.get_object(Bucket=BUCKET, Key=RESULTS + name)["Body"].read()
        assert sniff_image(data) == "png" and png_size(data) == (640, 480)
    assert sorted(output["task_ids"]) == sorted(fake_ms.tasks)
    # the status endpoint's view: succeeded, with lasting links
    view = w.status(job_id)
    assert view.status == "succeeded"
    assert view.output is not None and [i.name for i in view.output.images] == names
    assert_no_plain_key(w, job_id, execution)


def test_a_job_is_queued_until_the_provider_has_it(
    world: Callable[..., World], fake_ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Submit task held back, and a ModelScope task that takes a while
    w = world()
    fake_ms.task_duration = 1.0
    release = threading.Event()
    dispatch = w.lambdas.moto_invoke

    def held(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
        if parameters["FunctionName"] == w.arns["JobSubmitFunctionArn"]:
            assert release.wait(10)
        return dispatch(parameters, region, state_credentials)

    monkeypatch.setattr(lambda_eval_utils, "_invoke_lambda_function", held)

    # When the job is started, then Submit is let through
    job_id = w.submit()
    queued = w.status(job_id).status
    release.set()
    deadline = time.monotonic() + 10
    while (status := w.status(job_id).status) == "queued" and time.monotonic() < deadline:
        time.sleep(0.02)

    # Then the execution's history told queued (in Submit), then in_progress (polling)
    assert queued == "queued"
    assert status == "in_progress"
    assert w.wait(job_id)["status"] == "SUCCEEDED"


def test_a_failed_task_fails_the_job_with_the_providers_reason(
    world: Callable[..., World], fake_ms: FakeModelScope
) -> None:
    # Given ModelScope fails the task
    w = world()
    fake_ms.fail_reason = "The prompt did not pass content moderation."

    # When the job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then the execution failed in the Fail state with the gateway's error and body
    assert execution["status"] == "FAILED"
    assert execution["error"] == "ProviderError"
    cause = json.loads(execution["cause"])
    assert "content moderation" in cause["error"]["message"]
    assert not w.calls("JobStoreFunctionArn")
    # and the job shows it in the gateway's error shape
    view = w.status(job_id)
    assert view.status == "failed" and view.error is not None
    assert view.error["error"]["code"] == "generation_failed"
    assert "content moderation" in view.error["error"]["message"]
    assert_no_plain_key(w, job_id, execution)


def test_transient_poll_errors_are_retried_with_backoff(
    world: Callable[..., World], fake_ms: FakeModelScope
) -> None:
    # Given the next two polls answer 503
    w = world()
    fake_ms.poll_errors = 2

    # When the job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then the Poll task failed twice with TransientJobError, was retried by the state
    # machine's Retry (two waits, with jitter at most 2 s then 4 s), and the job succeeded
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    history = w.history(job_id)
    failed = [e for e in history if e["type"] == "LambdaFunctionFailed"]
    assert [e["lambdaFunctionFailedEventDetails"]["error"] for e in failed] == [
        "TransientJobError",
        "TransientJobError",
    ]
    assert "503" in failed[0]["lambdaFunctionFailedEventDetails"]["cause"]
    assert len(w.retry_sleeps) == 2
    assert 0 <= w.retry_sleeps[0] <= 2 and 0 <= w.retry_sleeps[1] <= 4
    assert w.status(job_id).status == "succeeded"
    assert_no_plain_key(w, job_id, execution)


def test_a_rate_limited_submission_is_retried(
    world: Callable[..., World], fake_ms: FakeModelScope
) -> None:
    # Given ModelScope refuses the first submission for rate (nothing started)
    w = world()
    fake_ms.submit_override = (429, {"errors": {"message": "Rate limit exceeded"}}, {})

    # When the job runs
    execution = w.wait(w.submit())

    # Then Submit was retried (one wait) and the second submission made the image
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert [s["status"] for s in fake_ms.submissions] == [429, 200]
    assert len(w.retry_sleeps) == 1


def test_a_job_that_polls_past_its_limit_times_out(
    world: Callable[..., World], fake_ms: FakeModelScope
) -> None:
    # Given a task that runs long and a job allowed three polls (JOB_TIMEOUT 3 s at 0 s waits)
    w = world(job_timeout=3)
    fake_ms.task_duration = 60

    # When the job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then it polled three times and failed in the TimedOut state
    assert execution["status"] == "FAILED"
    assert execution["error"] == "DeadlineExceededError"
    assert len(w.calls("JobPollFunctionArn")) == 3
    view = w.status(job_id)
    assert view.status == "failed" and view.error is not None
    assert view.error["error"]["code"] == "deadline_exceeded"
    assert view.error["error"]["type"] == "timeout_error"
    assert_no_plain_key(w, job_id, execution)
