"""Chat completions as durable jobs, the state machine run whole under moto (`functional.machine`):
the app is asked as the Web Adapter forwards the Function URL's and API Gateway's events, the
execution runs the real task handlers against the fake ModelScope, and the status endpoint
answers the `chat.completion` the synchronous call gives.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from openai.types.chat import ChatCompletion

from fakes.aws import BUCKET
from fakes.modelscope import FakeModelScope
from fakes.png import png_size
from functional.machine import TOKEN, World
from functional.test_events import EVENTS
from imagegw.frontends.app import create_app
from imagegw.infra.storage import RESULTS
from imagegw.runners.stepfunctions.schema import JobInput
from lambdahost.events import HttpRequest, to_http_request

pytestmark = pytest.mark.functional

AUTH = {"authorization": f"Bearer {TOKEN}"}
LINK = r"!\[image 1\]\(https://[^)\s]+/v1/files/([^)\s]+)\)"


def event_request(name: str, **headers: str) -> HttpRequest:
    """An events/ sample as the Web Adapter forwards it, with extra headers."""
    request = to_http_request(json.loads((EVENTS / name).read_text()))
    request.headers.update(headers)
    return request


async def ask(w: World, request: HttpRequest) -> httpx.Response:
    """`request` answered by the app on `w`'s settings (jobs on the state machine)."""
    transport = httpx.ASGITransport(app=create_app(w.settings))
    async with httpx.AsyncClient(transport=transport, base_url="https://gw") as client:
        return await client.request(
            request.method, request.target, headers=request.headers, content=request.body
        )


async def job(w: World, path: str, token: str = TOKEN) -> httpx.Response:
    """`GET path` (a job's Location, less API Gateway's stage) answered by the app."""
    return await ask(w, HttpRequest("GET", path, headers={"authorization": f"Bearer {token}"}))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("event", "route"),
    [("function-url-chat.json", "/v1/jobs/"), ("apigw-rest-chat.json", "/modelscope/v1/jobs/")],
)
async def test_a_chat_job_runs_whole_to_the_chat_completion(
    world: Callable[..., World], fake_ms: FakeModelScope, event: str, route: str
) -> None:
    # Given the state machine under moto, and the Function URL's or API Gateway's chat event
    w = world()
    request = event_request(event, prefer="respond-async")

    # When the client sends it preferring an async answer
    accepted = await ask(w, request)

    # Then it is a 202 with a chat job object, its Location on the route it came by
    assert accepted.status_code == 202, accepted.text
    summary = accepted.json()
    assert summary["object"] == "chat.completion.job" and summary["status"] == "queued"
    assert accepted.headers["location"].endswith(route + summary["id"])
    # the job records the front end it answers, and no image bytes nor the key
    execution = w.wait(summary["id"])
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    assert JobInput.model_validate_json(execution["input"]).job.api == "chat"
    assert TOKEN not in execution["input"]

    # When the client reads the job
    done = await job(w, route + summary["id"])

    # Then it is the synchronous call's chat.completion, which the OpenAI SDK reads, linking
    # the copy the job stored
    assert done.status_code == 200, done.text
    completion = ChatCompletion.model_validate(done.json())
    assert completion.id == summary["id"] and completion.created == summary["created"]
    assert completion.object == "chat.completion"
    assert completion.model == request.json()["model"]
    (choice,) = completion.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert done.json()["status"] == "succeeded"
    match = re.fullmatch(LINK, choice.message.content or "")
    assert match, choice.message.content
    stored = w.s3.get_object(Bucket=BUCKET, Key=RESULTS + match.group(1))["Body"].read()
    assert png_size(stored) == (1024, 1024)
    assert len(fake_ms.submissions) == 1


@pytest.mark.anyio
async def test_a_running_chat_job_shows_the_providers_progress(
    world: Callable[..., World], fake_ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a ModelScope task that runs until told, and a job whose second poll is held back
    w = world()
    fake_ms.pending_seconds, fake_ms.task_duration = 0.0, 600.0
    fake_ms.running_status_name = "PROCESSING"
    polls: list[str] = []
    polled_once, release = threading.Event(), threading.Event()
    dispatch = w.lambdas.moto_invoke

    def held(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
        if parameters["FunctionName"] == w.arns["JobPollFunctionArn"]:
            polls.append("poll")
            if len(polls) == 2:
                polled_once.set()
                assert release.wait(10)
        return dispatch(parameters, region, state_credentials)

    monkeypatch.setattr(lambda_eval_utils, "_invoke_lambda_function", held)
    accepted = await ask(w, event_request("function-url-chat.json", prefer="respond-async"))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]

    # When the client reads the job after the provider answered its first poll
    try:
        assert polled_once.wait(10)
        running = (await job(w, "/v1/jobs/" + job_id)).json()
    finally:
        (task,) = fake_ms.tasks.values()
        task.finishes_at = 0.0  # the task is done: the held poll finds it so
        release.set()

    # Then it is in progress, with the provider's own state of its task
    assert running["status"] == "in_progress", running
    assert running["object"] == "chat.completion.job"
    assert running["progress"] == {
        "state": "PROCESSING",
        "done": 0,
        "total": 1,
        "task_ids": [task.task_id],
    }
    assert "choices" not in running
    assert w.wait(job_id)["status"] == "SUCCEEDED"


@pytest.mark.anyio
async def test_a_failed_chat_job_gives_the_providers_reason(
    world: Callable[..., World], fake_ms: FakeModelScope
) -> None:
    # Given ModelScope fails the task
    w = world()
    fake_ms.fail_reason = "The prompt did not pass content moderation."

    # When a chat job runs
    accepted = await ask(w, event_request("function-url-chat.json", prefer="respond-async"))
    assert accepted.status_code == 202, accepted.text
    assert w.wait(accepted.json()["id"])["status"] == "FAILED"
    failed = (await job(w, "/v1/jobs/" + accepted.json()["id"])).json()

    # Then the job failed with the provider's reason in the gateway's error shape
    assert failed["status"] == "failed" and failed["object"] == "chat.completion.job"
    assert "choices" not in failed
    assert set(failed["error"]) == {"message", "type", "param", "code"}
    # (a refusal of the content: the client's request, a 400 no client retries)
    assert failed["error"]["code"] == "content_policy_violation"
    assert failed["error"]["type"] == "invalid_request_error"
    assert "content moderation" in failed["error"]["message"]
