"""The durable-job state machine (statemachine/image_job.asl.json) run whole under moto.

moto's Step Functions interpreter (`execute_state_machine`) runs the ASL file; its Lambda tasks
are dispatched in-process to the real task handlers (`functions/job_*/app.py`); S3 and KMS are
moto's too; the provider is the fake ModelScope on loopback (`functional.machine`, the `world`
fixture). Jobs are started the way the API function starts them
(`imagegw.runners.stepfunctions.service`).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

from fakes.aws import BUCKET, TABLE_BUDGET, new_access_table
from fakes.modelscope import FakeModelScope
from fakes.png import png_size, sniff_image
from functional.machine import TOKEN, World, simulate_time, transitions
from imagegw.access import shared_estimates
from imagegw.access.shared_estimates import SharedEstimates
from imagegw.core.estimates import Estimates, MemoryEstimates
from imagegw.core.schedule import QUEUE_MODEL
from imagegw.infra.config import Settings
from imagegw.infra.storage import RESULTS
from imagegw.providers import priors
from imagegw.runners.stepfunctions import steps

pytestmark = pytest.mark.functional


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
    fake_ms.fail_reason = "The worker ran out of memory."

    # When the job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then the execution failed in the Fail state with the gateway's error and body
    assert execution["status"] == "FAILED"
    assert execution["error"] == "ProviderError"
    cause = json.loads(execution["cause"])
    assert "out of memory" in cause["error"]["message"]
    assert not w.calls("JobStoreFunctionArn")
    # and the job shows it in the gateway's error shape
    view = w.status(job_id)
    assert view.status == "failed" and view.error is not None
    assert view.error["error"]["code"] == "generation_failed"
    assert "out of memory" in view.error["error"]["message"]
    assert_no_plain_key(w, job_id, execution)


def test_transient_poll_errors_are_polled_again_with_backoff(
    world: Callable[..., World], fake_ms: FakeModelScope
) -> None:
    # Given the next two polls answer 503
    w = world()
    fake_ms.poll_errors = 2

    # When the job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then the Poll task recorded each failure (no Lambda error, no Retry) and the state
    # machine waited longer after each (Backoff: 2 s, then 4 s), and the job succeeded
    # (issue 8: a paid task is polled until the job's deadline, not given up after 7 errors)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    history = w.history(job_id)
    assert not [e for e in history if e["type"] == "LambdaFunctionFailed"]
    assert not w.retry_sleeps
    assert [wait for wait in w.waits if wait] == [2, 4]
    assert [answer for _, _, answer in fake_ms.polls][:2] == ["HTTP 503", "HTTP 503"]
    assert len(fake_ms.submissions) == 1
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


def test_a_30_s_job_takes_at_most_10_state_transitions_once_its_model_is_learned(
    world: Callable[..., World], fake_ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given tasks that queue 0-5 s and run 30 s +-20% (on simulated time), polled at the
    # default pace (JOB_POLL_INTERVAL 5 s) were that model's waits not predicted
    w = world(job_poll_interval=5)
    simulate_time(w, monkeypatch, fake_ms)
    monkeypatch.setattr(steps, "ESTIMATES", MemoryEstimates(priors()))
    rng = random.Random(30)
    counts = []
    for _ in range(8):
        queue, run = rng.uniform(0, 5), 30 * rng.uniform(0.8, 1.2)
        fake_ms.pending_seconds, fake_ms.task_duration = queue, queue + run

        # When a job runs
        job_id = w.submit()
        assert w.wait(job_id)["status"] == "SUCCEEDED"
        counts.append(transitions(w.history(job_id)))

    # Then the first jobs waited for the catalogue's prior, then for longer as the task aged
    # (12 transitions at most, where a poll every 5 s took 22), and once learned, each job
    # waited for its predicted end: 10 transitions at most, 7 (one poll) for most
    assert max(counts[:3]) <= 12, counts
    assert max(counts[3:]) <= 10, counts
    assert sorted(counts[3:])[len(counts[3:]) // 2] <= 7, counts


def test_a_fresh_instance_waits_for_the_end_other_instances_learned_through_the_access_table(
    world: Callable[..., World], fake_ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given job functions with the access table (ACCESS_TABLE) and 30-s tasks on simulated time
    w = world(job_poll_interval=5)
    simulate_time(w, monkeypatch, fake_ms)
    monkeypatch.setenv("ACCESS_TABLE", new_access_table())
    monkeypatch.setattr(steps, "ESTIMATES", None)
    # the instances' stores wait for moto as long as it takes on a busy machine: one call over
    # the deployed 0.5 s would leave a store learning alone, and sharing is tested here
    made = steps.learned_times

    def learned_times(settings: Settings) -> Estimates:
        store = made(settings)
        assert isinstance(store, SharedEstimates)
        store.budget = TABLE_BUDGET
        return store

    monkeypatch.setattr(steps, "learned_times", learned_times)
    # the jobs are 30 s apart on the simulated clock but moments apart on the table's (real)
    # one: each writes its samples as it would 30 s after the last write
    monkeypatch.setattr(shared_estimates, "FLUSH_SECONDS", 0.0)
    rng = random.Random(31)

    def job() -> int:
        queue, run = rng.uniform(0, 5), 30 * rng.uniform(0.8, 1.2)
        fake_ms.pending_seconds, fake_ms.task_duration = queue, queue + run
        job_id = w.submit()
        assert w.wait(job_id)["status"] == "SUCCEEDED"
        return transitions(w.history(job_id))

    # When three jobs teach the model's run time on one instance
    learning = [job() for _ in range(3)]
    assert isinstance(steps.ESTIMATES, SharedEstimates)

    # Then a job polled by a fresh instance (a store of its own, nothing learned in it) waits
    # for the predicted end in one poll: 7 transitions, where the first job, with the
    # catalogue's prior alone, took more (12 at most)
    monkeypatch.setattr(steps, "ESTIMATES", None)
    fresh = job()
    assert learning[0] <= 12 and fresh <= 7 < learning[0], (learning, fresh)
    # what the fresh instance learned itself is the last job's run only; the table has all four
    store = steps.ESTIMATES
    assert isinstance(store, SharedEstimates)
    runs = {key: e.samples for key, e in store.memory.learned.items() if key.model != QUEUE_MODEL}
    assert list(runs.values()) == [1]
    (key,) = runs
    shared = asyncio.run(store.get(key))
    assert shared is not None and shared.samples == 4
