"""Chat completions as durable jobs end to end, with the OpenAI SDK against `make run`'s own
server (`python -m imagegw.frontends.local`, a subprocess with its stand-ins: moto's S3, KMS and
Step Functions running the repo's ASL file and the real task handlers), the providers faked on
loopback. The client sends `Prefer: respond-async`, reads the 202 raw, polls `GET /v1/jobs/{id}`
and parses the finished job with the SDK's `ChatCompletion`.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from e2e.test_jobs_api import AUTH, TOKEN, local_server, submit, wait_for
from fakes.modelscope import FakeModelScope
from fakes.png import make_png, png_size, sniff_image

pytestmark = pytest.mark.e2e
__all__ = ["local_server"]  # the module's fixture: `make run`'s server

PREFER = {"Prefer": "respond-async"}
CHAT = "/v1/chat/completions"
IMAGE_LINE = re.compile(r"^!\[image \d+\]\((\S+)\)$")


def client(base: str, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


def links(completion: ChatCompletion) -> list[str]:
    """The image links of a completion's markdown, every line being one."""
    content = completion.choices[0].message.content or ""
    found = [IMAGE_LINE.match(line) for line in content.splitlines()]
    assert all(found), content
    return [match.group(1) for match in found if match]


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def test_a_chat_job_with_the_sdk_answers_the_synchronous_completion(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given the synchronous answer to a chat request for two images, for comparison
    sdk = client(local_server)
    messages: Any = [{"role": "user", "content": "a fox in the snow"}]
    synchronous = sdk.chat.completions.create(
        model="Qwen/Qwen-Image", messages=messages, extra_body={"n": 2}
    )

    # When the same request is sent preferring an async answer, read raw
    raw = sdk.chat.completions.with_raw_response.create(
        model="Qwen/Qwen-Image", messages=messages, extra_body={"n": 2}, extra_headers=PREFER
    )

    # Then it is a 202 with a chat job, and where to ask about it
    assert raw.status_code == 202
    accepted = raw.http_response.json()
    assert set(accepted) == {"id", "object", "status", "created"}
    assert accepted["object"] == "chat.completion.job" and accepted["status"] == "queued"
    assert raw.headers["location"] == f"{local_server}/v1/jobs/{accepted['id']}"
    assert raw.headers["preference-applied"] == "respond-async"

    # When the client polls the job until it is over
    done = wait_for(raw.headers["location"])

    # Then it is the synchronous call's chat.completion (the SDK reads it), under the job's id,
    # with two lasting links to the stored images
    completion = ChatCompletion.model_validate(done)
    assert set(done) == set(synchronous.model_dump(exclude_none=True)) | {"status"}
    assert completion.id == accepted["id"] and completion.created == accepted["created"]
    assert completion.object == "chat.completion" and completion.model == "Qwen/Qwen-Image"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.role == "assistant"
    assert len(links(synchronous)) == 2
    urls = links(completion)
    assert len(urls) == 2
    for url in urls:
        assert url.startswith(f"{local_server}/v1/files/")
        image = httpx.get(url, follow_redirects=True, timeout=30)
        assert image.status_code == 200 and sniff_image(image.content) == "png"
    assert len(fake_ms.submissions) == 4  # two for each answer


def test_stream_and_async_the_job_wins(local_server: str, fake_ms: FakeModelScope) -> None:
    # When a streamed request on a provider's route also prefers an async answer
    accepted = submit(
        local_server,
        chat("Qwen/Qwen-Image", "a lighthouse", stream=True, size="512x384"),
        path="/modelscope" + CHAT,
    )

    # Then it is a job (a JSON 202, no event stream), whose answer is the chat.completion
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["content-type"].startswith("application/json")
    location = accepted.headers["location"]
    assert location == f"{local_server}/modelscope/v1/jobs/{accepted.json()['id']}"
    completion = ChatCompletion.model_validate(wait_for(location))
    (url,) = links(completion)
    assert png_size(httpx.get(url, follow_redirects=True, timeout=30).content) == (512, 384)


def test_the_same_idempotency_key_finds_the_same_chat_job(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    body = chat("Qwen/Qwen-Image", "a lighthouse", seed=7)
    key = {"idempotency-key": "chat-batch/item-1"}

    # Given a chat job submitted with an Idempotency-Key
    first = submit(local_server, body, path=CHAT, **key)
    assert first.status_code == 202, first.text

    # When the client retries, at once and after the job is done
    again = submit(local_server, body, path=CHAT, **key)
    done = wait_for(first.headers["location"])
    later = submit(local_server, body, path=CHAT, **key)

    # Then every answer names the same job, and the provider got one submission
    assert again.status_code == 202 and later.status_code == 202
    assert first.json()["id"] == again.json()["id"] == later.json()["id"] == done["id"]
    assert later.json()["status"] == "succeeded"
    assert len(fake_ms.submissions) == 1
    # the same key for another request, or for the same prompt on the Images API, is a 409
    for path, other in [
        (CHAT, {**body, "seed": 8}),
        (
            "/v1/images/generations",
            {"model": "Qwen/Qwen-Image", "prompt": "a lighthouse", "seed": 7},
        ),
    ]:
        clash = submit(local_server, other, path=path, **key)
        assert clash.status_code == 409, clash.text
        assert clash.json()["error"]["code"] == "idempotency_key_reused"
    assert len(fake_ms.submissions) == 1


def test_another_callers_chat_job_is_404(local_server: str, fake_ms: FakeModelScope) -> None:
    # Given a chat job
    accepted = submit(local_server, chat("Qwen/Qwen-Image", "a fox"), path=CHAT)
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]

    # When someone else asks about it, or nobody says who they are
    foreign = httpx.get(location, headers={"authorization": "Bearer ms-someone-else"}, timeout=30)
    anonymous = httpx.get(location, timeout=30)

    # Then it is not found for them (as an unknown id), and unauthorized without a key
    assert foreign.status_code == 404
    assert foreign.json()["error"]["code"] == "job_not_found"
    assert anonymous.status_code == 401
    assert wait_for(location)["status"] == "succeeded"  # its owner still reads it


def test_a_failed_chat_job_gives_the_providers_reason(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given ModelScope fails the task
    fake_ms.fail_reason = "The worker ran out of memory."

    # When a chat job runs
    accepted = submit(local_server, chat("Qwen/Qwen-Image", "a fox"), path=CHAT)
    done = wait_for(accepted.headers["location"])

    # Then it failed with the provider's reason in the gateway's error shape, no completion
    assert done["status"] == "failed" and done["object"] == "chat.completion.job"
    assert "choices" not in done
    assert set(done["error"]) == {"message", "type", "param", "code"}
    assert done["error"]["code"] == "generation_failed"
    assert "out of memory" in done["error"]["message"]


def test_an_iterative_edit_as_a_job_edits_the_gateways_earlier_image(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given a conversation whose assistant answered an image (a lasting gateway link)
    sdk = client(local_server)
    first = sdk.chat.completions.create(
        model="Qwen/Qwen-Image", messages=[{"role": "user", "content": "a red barn"}]
    )
    (link,) = links(first)
    assert link.startswith(f"{local_server}/v1/files/")
    earlier = httpx.get(link, follow_redirects=True, timeout=30).content

    # When the next turn asks an edit model for a change, as a job
    raw = sdk.chat.completions.with_raw_response.create(
        model="Qwen/Qwen-Image-Edit",
        messages=[
            {"role": "user", "content": "a red barn"},
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "make it night"},
        ],
        extra_headers=PREFER,
    )
    assert raw.status_code == 202
    completion = ChatCompletion.model_validate(wait_for(raw.headers["location"]))

    # Then the earlier image was edited: staged from the bucket (not fetched through the
    # gateway's link) before the job ran, and the edit is a new lasting link
    assert len(links(completion)) == 1 and links(completion)[0] != link
    edit = fake_ms.submissions[-1]["body"]
    assert edit["model"] == "Qwen/Qwen-Image-Edit" and edit["prompt"] == "make it night"
    assert "/v1/files/" not in edit["image_url"][0]
    task = fake_ms.tasks[list(fake_ms.tasks)[-1]]
    assert task.inputs == [earlier]


def test_a_pasted_picture_is_in_the_bucket_before_the_job_runs(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given a picture pasted into the chat as a data URI
    photo = make_png(40, 30)
    uri = "data:image/png;base64," + base64.b64encode(photo).decode()
    content: Any = [
        {"type": "text", "text": "make it night"},
        {"type": "image_url", "image_url": {"url": uri}},
    ]

    # When an edit model is asked for the change as a job
    accepted = submit(
        local_server,
        {"model": "Qwen/Qwen-Image-Edit", "messages": [{"role": "user", "content": content}]},
        path=CHAT,
    )
    assert accepted.status_code == 202, accepted.text
    completion = ChatCompletion.model_validate(wait_for(accepted.headers["location"]))

    # Then ModelScope got the picture itself, by a link (the bucket's) rather than its bytes
    assert len(links(completion)) == 1
    (task,) = fake_ms.tasks.values()
    assert task.inputs == [photo]
    assert not fake_ms.submissions[0]["body"]["image_url"][0].startswith("data:")


def test_a_chat_model_is_refused_for_async(local_server: str, fake_ms: FakeModelScope) -> None:
    # When a chat (pass-through) model is asked for an async answer, streamed or not
    for stream in (False, True):
        answer = submit(
            local_server,
            chat("Qwen/Qwen3-VL-30B-A3B-Instruct", "hello", stream=stream),
            path=CHAT,
        )

        # Then it is a clear 400 naming the model, and nothing reached the provider
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "async_not_supported" and error["param"] == "model"
        assert "Prefer: respond-async" in error["message"]
        assert answer.headers["x-should-retry"] == "false"
    assert fake_ms.chat_requests == [] and fake_ms.submissions == []
    # without the preference the same model is passed through as usual
    plain = httpx.post(
        f"{local_server}{CHAT}",
        json=chat("Qwen/Qwen3-VL-30B-A3B-Instruct", "hello"),
        headers=AUTH,
        timeout=30,
    )
    assert plain.status_code == 200, plain.text
    assert len(fake_ms.chat_requests) == 1


def test_without_jobs_the_preference_is_ignored(gateway_url: str, fake_ms: FakeModelScope) -> None:
    # Given a gateway that runs no durable jobs (no JOB_STATE_MACHINE_ARN)
    sdk = client(gateway_url)

    # When chat requests prefer an async answer, for an image model and for a chat model
    image = sdk.chat.completions.with_raw_response.create(
        model="Qwen/Qwen-Image",
        messages=[{"role": "user", "content": "a fox"}],
        extra_headers=PREFER,
    )
    passed = sdk.chat.completions.with_raw_response.create(
        model="Qwen/Qwen3-VL-30B-A3B-Instruct",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers=PREFER,
    )

    # Then both are answered as usual (RFC 7240 lets a server ignore a preference)
    assert image.status_code == 200 and "preference-applied" not in image.headers
    assert len(links(image.parse())) == 1
    assert passed.status_code == 200 and passed.parse().object == "chat.completion"
    assert len(fake_ms.chat_requests) == 1


def test_a_chat_job_names_the_parameters_it_ignores(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # When a chat job carries a misspelt option and a standard chat parameter
    body = chat("Qwen/Qwen-Image", "a kite", stpes=30, temperature=0.2)
    accepted = submit(local_server, body, path=CHAT)

    # Then it starts, and the misspelling (only) is named, as for a JSON answer
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["x-ignored-parameters"] == "stpes"
    # (its end waited for: a job still submitting after the test would reach the next test's
    # fake ModelScope, which shares the server)
    assert wait_for(accepted.headers["location"])["status"] == "succeeded"
