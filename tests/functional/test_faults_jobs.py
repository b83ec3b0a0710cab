"""The fault matrix, durable-job half (issue 8): jobs run whole on the state machine under moto
(`functional.machine`) while the provider or the bucket fails (`fakes.faulty_jobs`).

Each case says what the client gets (the body of `GET /v1/jobs/{id}`) and what the provider saw
(submissions, polls). The state machine's waits are recorded, not slept, and a job's pace is
JOB_POLL_INTERVAL 0 with a short JOB_TIMEOUT, so the deadline is reached in a few polls.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fakes.faulty_jobs import ALWAYS, BucketOutage, FaultyModelScope, PollFault
from fakes.openai_images import FakeOpenAIImages
from fakes.png import png_size
from functional.machine import World, function_env
from imagegw.errors import StorageError, render
from imagegw.infra.storage import RESULTS
from imagegw.runners.stepfunctions import steps

pytestmark = pytest.mark.functional

SUBMIT, POLL, STORE = "JobSubmitFunctionArn", "JobPollFunctionArn", "JobStoreFunctionArn"


@pytest.fixture(autouse=True)
def _quick_saves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps' own retries of the bucket, without their pauses (their count stays)."""
    monkeypatch.setattr(steps, "SAVE_RETRY_DELAYS", (0.0, 0.0))


def stored_results(w: World) -> set[str]:
    """The result images in the bucket (moto's account outlives a test: compare sets)."""
    listed = w.s3.list_objects_v2(Bucket=w.settings.bucket, Prefix=RESULTS)
    return {item["Key"] for item in listed.get("Contents", [])}


def output_names(execution: dict[str, Any]) -> list[str | None]:
    """The result images' names in the bucket as the job's output gives them (None: a link)."""
    return [image["name"] for image in json.loads(execution["output"])["images"]]


# ----------------------------------------------------------------- the provider refuses


def test_a_submission_refused_for_rate_until_the_retries_run_out_is_a_rate_limit_error(
    world: Callable[..., World], faulty_ms: FaultyModelScope
) -> None:
    # Given ModelScope refuses every submission for rate (nothing starts)
    w = world()
    faulty_ms.refuse_submits = ALWAYS

    # When a job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then Submit was tried again with backoff (the ASL's Retry), then the job failed...
    assert execution["status"] == "FAILED"
    assert len(w.retry_sleeps) == 6
    assert [s["status"] for s in faulty_ms.submissions] == [429] * 7
    assert not faulty_ms.tasks and not w.calls(POLL) and not w.calls(STORE)
    # ...and the client is told it was a rate limit, in the gateway's error shape
    body = w.render(job_id)
    assert body["status"] == "failed"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "Rate limit exceeded" in body["error"]["message"]


def test_a_rate_limit_that_lifts_submits_each_image_once(
    world: Callable[..., World], faulty_ms: FaultyModelScope
) -> None:
    # Given ModelScope refuses the first two submissions for rate, a job of two images
    w = world()
    faulty_ms.refuse_submits = 2
    faulty_ms.task_duration = 0.0

    # When the job runs
    job_id = w.submit(n=2)
    execution = w.wait(job_id)

    # Then the whole submission was retried once, and each image was started once
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert [s["status"] for s in faulty_ms.submissions] == [429, 429, 200, 200]
    assert len(faulty_ms.tasks) == 2 and len(w.calls(SUBMIT)) == 2
    body = w.render(job_id)
    assert body["status"] == "succeeded" and len(body["data"]) == 2


def test_a_provider_down_at_submit_fails_the_job_with_nothing_started(
    world: Callable[..., World], faulty_ms: FaultyModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the task functions' ModelScope cannot be reached (nothing listens there)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("MODELSCOPE_BASE_URL", f"http://127.0.0.1:{port}/v1")
    w = world()

    # When a job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then it failed naming the unreachable provider; nothing was polled or stored
    assert execution["status"] == "FAILED"
    body = w.render(job_id)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "provider_unreachable"
    assert "could not be reached" in body["error"]["message"]
    assert not w.calls(POLL) and not w.calls(STORE)
    assert not faulty_ms.submissions and not faulty_ms.polls


# ----------------------------------------------------------------- polls without an answer


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("503", "answered 503"),
        ("garbage", "unreadable status"),
        ("cut", "could not be reached"),  # the provider dying mid-poll
        # a byte every 0.2 s: no read waits PROVIDER_TIMEOUT (1 s for the polls here), the
        # whole poll does
        ("trickle", "no answer within 1 s"),
    ],
)
def test_polls_that_keep_failing_are_tried_until_the_deadline_then_named(
    world: Callable[..., World],
    faulty_ms: FaultyModelScope,
    fault: PollFault,
    named: str,
) -> None:
    # Given a job allowed 30 s (JOB_TIMEOUT, at 0 s polls) and every poll failing
    w = world(job_timeout=30)
    if fault == "trickle":
        # the Poll function's own: the submission keeps the default (on a busy machine a
        # submission could take over 1 s and fail the job before any poll)
        function_env(w, POLL, PROVIDER_TIMEOUT="1")
    faulty_ms.poll_fault = fault
    faulty_ms.poll_faults = ALWAYS

    # When the job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then the task was polled again after ever longer waits, never given up early, and
    # the deadline (the waits add up to 30 s) ended it; no Lambda error, no Retry
    assert w.waits == [0, 2, 4, 8, 16]
    assert faulty_ms.faulted_polls() == [fault] * 5
    assert len(faulty_ms.submissions) == 1 and not w.retry_sleeps
    assert execution["status"] == "FAILED" and execution["error"] == "DeadlineExceededError"
    # and the client gets the deadline, naming the provider's last error
    body = w.render(job_id)
    assert body["status"] == "failed"
    assert body["error"]["type"] == "timeout_error"
    assert body["error"]["code"] == "deadline_exceeded"
    assert "The last 5 polls failed" in body["error"]["message"]
    assert named in body["error"]["message"]


def test_a_task_that_answers_again_after_a_503_streak_succeeds(
    world: Callable[..., World], faulty_ms: FaultyModelScope
) -> None:
    # Given a finished task whose next three polls answer 503
    w = world(job_timeout=30)
    faulty_ms.task_duration = 0.0
    faulty_ms.poll_faults = 3

    # When the job runs
    job_id = w.submit(size="96x64")
    execution = w.wait(job_id)

    # Then it was polled through the streak, with backoff, and succeeded with a stored copy
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert faulty_ms.faulted_polls() == ["503", "503", "503", "SUCCEED"]
    assert w.waits == [0, 2, 4, 8]
    assert len(faulty_ms.submissions) == 1
    body = w.render(job_id)
    assert body["status"] == "succeeded"
    (name,) = output_names(execution)
    assert body["data"] == [{"url": f"https://gw/v1/files/{name}"}]
    assert f"{RESULTS}{name}" in stored_results(w)


# ----------------------------------------------------------------- the bucket fails


def test_a_bucket_down_at_store_gives_the_providers_links(
    world: Callable[..., World], faulty_ms: FaultyModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the bucket cannot be reached when results are stored
    outage = BucketOutage(["put_object"]).install(monkeypatch)
    w = world()
    faulty_ms.task_duration = 0.0
    before = stored_results(w)

    # When a job of two images runs
    job_id = w.submit(n=2, size="96x64")
    execution = w.wait(job_id)

    # Then it succeeded: Store tried the bucket three times an image, then kept the links
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert outage.refused == ["put_object"] * 6
    assert len(w.calls(STORE)) == 1 and stored_results(w) == before
    assert output_names(execution) == [None, None]
    # and the client gets the provider's own links, which work
    body = w.render(job_id)
    assert body["status"] == "succeeded"
    base = faulty_ms.base_url.removesuffix("/v1")  # type: ignore[attr-defined]
    expected = {f"{base}/files/{task.output_names[0]}" for task in faulty_ms.tasks.values()}
    assert {item["url"] for item in body["data"]} == expected
    for item in body["data"]:
        assert png_size(httpx.get(item["url"], timeout=30).content) == (96, 64)
    assert len(faulty_ms.submissions) == 2


def sync_world(
    world: Callable[..., World],
    fake_openai: FakeOpenAIImages,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    """A state machine whose tasks reach the fake OpenAI-compatible server (seed 003's, which
    answers the image itself: a synchronous provider that answers inline)."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    return world(openai_base_url=fake_openai.base_url)


def test_a_bucket_down_while_inline_images_are_kept_never_submits_again(
    world: Callable[..., World],
    fake_openai: FakeOpenAIImages,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a synchronous provider that answers a small image inline, and the bucket down
    w = sync_world(world, fake_openai, monkeypatch)
    outage = BucketOutage(["put_object"]).install(monkeypatch)

    # When a job runs on it
    job_id = w.submit(provider="openai", width=80, height=64)
    execution = w.wait(job_id)

    # Then the image was made once (Submit ran once: no paid generation twice); Submit and
    # Store each tried the bucket three times, and the image stayed in the job
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert len(fake_openai.requests) == 1 and len(w.calls(SUBMIT)) == 1
    assert outage.refused == ["put_object"] * 6
    # and the client gets the image itself
    (item,) = w.render(job_id)["data"]
    assert item["url"].startswith("data:image/png;base64,")
    assert png_size(base64.b64decode(item["url"].split(",", 1)[1])) == (80, 64)


def test_a_bucket_back_by_store_takes_the_image_kept_inline(
    world: Callable[..., World],
    fake_openai: FakeOpenAIImages,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the bucket fails Submit's three attempts to keep the image, then is back
    w = sync_world(world, fake_openai, monkeypatch)
    outage = BucketOutage(["put_object"], times=3).install(monkeypatch)

    # When a job runs on it
    job_id = w.submit(provider="openai", width=80, height=64)
    execution = w.wait(job_id)

    # Then Store copied the image into the bucket: the client gets a lasting link
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert len(fake_openai.requests) == 1 and outage.refused == ["put_object"] * 3
    (name,) = output_names(execution)
    assert w.render(job_id)["data"] == [{"url": f"https://gw/v1/files/{name}"}]
    assert f"{RESULTS}{name}" in stored_results(w)


def test_an_image_too_large_to_keep_in_the_job_fails_it_without_a_second_generation(
    world: Callable[..., World],
    fake_openai: FakeOpenAIImages,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the bucket down and images too large for the job's state (the fake's solid-colour
    # PNGs are tiny: the room for images in the state is taken away here)
    w = sync_world(world, fake_openai, monkeypatch)
    BucketOutage(["put_object"]).install(monkeypatch)
    monkeypatch.setattr(steps, "BUDGET_INLINE", 0)

    # When a job runs on it
    job_id = w.submit(provider="openai", width=80, height=64)
    execution = w.wait(job_id)

    # Then it failed once, as the bucket being unavailable, and was never submitted again
    assert execution["status"] == "FAILED"
    assert len(fake_openai.requests) == 1 and len(w.calls(SUBMIT)) == 1
    body = w.render(job_id)
    assert body["error"]["code"] == "storage_unavailable"
    assert "too large to keep" in body["error"]["message"]


def test_a_b64_job_whose_stored_image_cannot_be_read_is_a_retryable_503(
    world: Callable[..., World], faulty_ms: FaultyModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a b64_json job that stored its image
    w = world()
    faulty_ms.task_duration = 0.0
    job_id = w.submit(response_format="b64_json", size="96x64")
    assert w.wait(job_id)["status"] == "SUCCEEDED"
    (item,) = w.render(job_id)["data"]
    assert png_size(base64.b64decode(item["b64_json"])) == (96, 64)

    # When the bucket cannot be read and the client asks for the job
    BucketOutage(["get_object"]).install(monkeypatch)
    with pytest.raises(StorageError) as caught:
        w.render(job_id)

    # Then it gets a 503 storage_unavailable that says to try again (nothing is lost)
    status, body, headers = render(caught.value)
    assert status == 503 and headers["x-should-retry"] == "true"
    assert body["error"]["code"] == "storage_unavailable"
    assert "secret" not in json.dumps(body).lower()


# ----------------------------------------------------------------- malformed result links


def test_a_malformed_result_link_fails_the_copy_and_keeps_the_providers_link(
    world: Callable[..., World], faulty_ms: FaultyModelScope
) -> None:
    # Given a task that succeeds with a link no URL parser takes (an invalid IDNA host)
    w = world()
    faulty_ms.task_duration = 0.0
    faulty_ms.result_links = ["http://xn--a.com/x.png"]
    before = stored_results(w)

    # When a job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then it succeeded: Store could not copy the image and kept the provider's link, once
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert output_names(execution) == [None]
    assert stored_results(w) == before
    body = w.render(job_id)
    assert body["status"] == "succeeded"
    assert [item["url"] for item in body["data"]] == ["http://xn--a.com/x.png"]
    assert len(faulty_ms.submissions) == 1


def test_a_200_mb_poll_answer_fails_the_job_naming_the_limit(
    world: Callable[..., World], faulty_ms: FaultyModelScope
) -> None:
    # Given a task whose status comes as 200 MB (streamed: never held whole by the fake)
    w = world(job_timeout=30)
    faulty_ms.poll_fault = "huge"
    faulty_ms.poll_faults = ALWAYS

    # When the job runs
    job_id = w.submit()
    execution = w.wait(job_id)

    # Then the poll abandoned the answer at its limit and the job failed with that error, once
    assert execution["status"] == "FAILED"
    body = w.render(job_id)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "provider_answer_too_large"
    assert "ModelScope answered more than 4 MiB" in body["error"]["message"]
    assert len(faulty_ms.submissions) == 1
