"""Durable jobs end to end over HTTP, against `make run`'s own server.

The gateway runs as `make run` runs it (`python -m imagegw.frontends.local`, a subprocess): with
moto on loopback standing in for S3, KMS and Step Functions, where the repo's ASL file runs and
its Lambda tasks go to the real handlers in that process. The providers are the fakes of the
other tests, on loopback. Clients submit with `Prefer: respond-async` and poll
`GET /v1/jobs/{id}`.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageStat

from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png, png_size, sniff_image
from fakes.server import ServerThread, SwappableApp
from local_run import serve_locally

TOKEN = "ms-test-token"
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
ASYNC = {"prefer": "respond-async", "authorization": f"Bearer {TOKEN}"}
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def local_server(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
    _fake_openai_server: tuple[ServerThread, SwappableApp],
) -> Iterator[str]:
    """`make run`'s server (its stand-ins embedded), pointed at the fake providers."""
    with serve_locally(
        tmp_path_factory.mktemp("local"),
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        OPENAI_BASE_URL=f"{_fake_openai_server[0].url}/v1",
        JOB_POLL_INTERVAL="0",
        POWERTOOLS_LOG_LEVEL="WARNING",
    ) as (url, _):
        yield url


def submit(
    url: str, body: dict[str, Any], path: str = "/v1/images/generations", **headers: str
) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={**ASYNC, **headers}, timeout=30)


def wait_for(location: str, timeout: float = 30.0, token: str = TOKEN) -> dict[str, Any]:
    """Poll a job until it is over; its last answer."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        answer = httpx.get(location, headers={"authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        seen.append(job["status"])
        assert job["status"] in ("queued", "in_progress", "succeeded", "failed")
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job not done after {timeout} s: {seen[-5:]}")


def test_a_job_is_accepted_at_once_and_polled_to_lasting_links(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given `make run`'s server and a ModelScope task that takes a moment
    fake_ms.task_duration = 0.5

    # When a client asks for two images asynchronously
    accepted = submit(local_server, {"model": "Qwen/Qwen-Image", "prompt": "a fox", "n": 2})

    # Then it gets a 202 at once (the job queued, not waited for), and where to ask about it
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert set(job) == {"id", "object", "status", "created"}
    assert job["object"] == "image.job" and job["status"] == "queued"
    assert accepted.headers["location"] == f"{local_server}/v1/jobs/{job['id']}"
    assert accepted.headers["preference-applied"] == "respond-async"

    # When it polls the job until it is over
    done = wait_for(accepted.headers["location"])

    # Then it succeeded with two lasting links, like the synchronous call's data
    assert done["status"] == "succeeded", done
    assert done["id"] == job["id"] and done["created"] == job["created"]
    assert [set(item) for item in done["data"]] == [{"url"}, {"url"}]
    for item in done["data"]:
        assert item["url"].startswith(f"{local_server}/v1/files/")
        image = httpx.get(item["url"], follow_redirects=True, timeout=30)
        assert image.status_code == 200 and sniff_image(image.content) == "png"
    assert len(fake_ms.submissions) == 2


def test_b64_json_on_a_provider_route(local_server: str, fake_ms: FakeModelScope) -> None:
    # Given a job on the provider-prefixed route, asking for the image bytes
    accepted = submit(
        local_server,
        {
            "model": "Qwen/Qwen-Image",
            "prompt": "a fox",
            "size": "512x384",
            "response_format": "b64_json",
        },
        path="/modelscope/v1/images/generations",
    )
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    assert location == f"{local_server}/modelscope/v1/jobs/{accepted.json()['id']}"

    # When it is done
    done = wait_for(location)

    # Then the data holds the image itself, read back from the bucket
    assert done["status"] == "succeeded", done
    (item,) = done["data"]
    assert set(item) == {"b64_json"}
    assert png_size(base64.b64decode(item["b64_json"])) == (512, 384)
    # and the plain route finds the same job
    plain = httpx.get(f"{local_server}/v1/jobs/{done['id']}", headers=AUTH, timeout=30)
    assert plain.json() == done


def test_an_async_edit_hands_over_the_uploaded_picture(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given a picture to edit, sent as the OpenAI SDKs send it (multipart)
    photo = make_png(32, 24)

    # When the edit runs as a job
    accepted = httpx.post(
        f"{local_server}/v1/images/edits",
        headers=ASYNC,
        files={"image": ("photo.png", photo, "image/png")},
        data={"model": "Qwen/Qwen-Image-Edit", "prompt": "make it night"},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    done = wait_for(accepted.headers["location"])

    # Then the picture was in the bucket before the job ran, and ModelScope fetched it from
    # there (a presigned URL made by the Submit task)
    assert done["status"] == "succeeded", done
    (task,) = fake_ms.tasks.values()
    assert task.inputs == [photo]
    assert fake_ms.submissions[0]["body"]["image_url"][0].startswith("http://127.0.0.1:")


def test_a_synchronous_provider_goes_straight_to_store(
    local_server: str, fake_openai: FakeOpenAIImages
) -> None:
    # Given an OpenAI-compatible server, which answers with the image itself
    # When a job is run on it
    accepted = submit(
        local_server,
        {"model": "Qwen/Qwen-Image", "prompt": "a fox", "width": 320, "height": 200},
        path="/openai/v1/images/generations",
    )
    assert accepted.status_code == 202, accepted.text
    done = wait_for(accepted.headers["location"])

    # Then it succeeded with a lasting link to a copy of that image, made with one call
    assert done["status"] == "succeeded", done
    (item,) = done["data"]
    image = httpx.get(item["url"], follow_redirects=True, timeout=30)
    assert png_size(image.content) == (320, 200)
    assert len(fake_openai.requests) == 1


def test_the_same_idempotency_key_finds_the_same_job(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    body = {"model": "Qwen/Qwen-Image", "prompt": "a lighthouse", "seed": 7}

    # Given a job submitted with an Idempotency-Key
    first = submit(local_server, body, **{"idempotency-key": "batch-42/item-1"})
    assert first.status_code == 202, first.text

    # When the client retries the same submission, at once and after the job is done
    again = submit(local_server, body, **{"idempotency-key": "batch-42/item-1"})
    done = wait_for(first.headers["location"])
    later = submit(local_server, body, **{"idempotency-key": "batch-42/item-1"})

    # Then every answer names the same job, and the provider got one submission
    assert again.status_code == 202 and later.status_code == 202
    assert first.json()["id"] == again.json()["id"] == later.json()["id"] == done["id"]
    assert later.headers["location"] == first.headers["location"]
    assert later.json()["status"] == "succeeded"
    assert len(fake_ms.submissions) == 1
    # a different request under the same key is refused, not run
    clash = submit(local_server, {**body, "seed": 8}, **{"idempotency-key": "batch-42/item-1"})
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "idempotency_key_reused"
    assert clash.headers["x-should-retry"] == "false"
    # another caller's same key is another job
    other = submit(
        local_server,
        body,
        authorization="Bearer ms-someone-else",
        **{"idempotency-key": "batch-42/item-1"},
    )
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    wait_for(other.headers["location"], token="ms-someone-else")  # (ModelScope refuses it)
    assert [s["status"] for s in fake_ms.submissions] == [200, 401]


def test_a_job_that_fails_gives_the_providers_reason(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given ModelScope fails the task
    fake_ms.fail_reason = "The worker ran out of memory."

    # When a job runs
    accepted = submit(local_server, {"model": "Qwen/Qwen-Image", "prompt": "a fox"})
    done = wait_for(accepted.headers["location"])

    # Then the job failed with the provider's reason in the gateway's error shape
    assert done["status"] == "failed"
    assert "data" not in done
    error = done["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "generation_failed" and error["type"] == "provider_error"
    assert "out of memory" in error["message"]


def test_a_refused_key_fails_the_job(local_server: str, fake_ms: FakeModelScope) -> None:
    # Given a key ModelScope does not accept
    # When a job runs with it
    accepted = submit(
        local_server,
        {"model": "Qwen/Qwen-Image", "prompt": "a fox"},
        authorization="Bearer ms-not-a-real-token",
    )
    assert accepted.status_code == 202
    job = wait_for(accepted.headers["location"], token="ms-not-a-real-token")

    # Then it failed with ModelScope's own refusal
    assert job["status"] == "failed"
    assert job["error"]["type"] == "authentication_error"
    assert "Authentication failed" in job["error"]["message"]


def test_unknown_and_foreign_jobs_are_404(local_server: str, fake_ms: FakeModelScope) -> None:
    # an id that was never issued, and one that is not even an id
    for job_id in ("job-" + "0" * 32, "nope"):
        answer = httpx.get(f"{local_server}/v1/jobs/{job_id}", headers=AUTH, timeout=30)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "job_not_found"
    # a real job, asked about by someone else
    accepted = submit(local_server, {"model": "Qwen/Qwen-Image", "prompt": "a fox"})
    foreign = httpx.get(
        accepted.headers["location"],
        headers={"authorization": "Bearer ms-someone-else"},
        timeout=30,
    )
    assert foreign.status_code == 404
    assert httpx.get(accepted.headers["location"], timeout=30).status_code == 401
    wait_for(accepted.headers["location"])


def test_anonymous_demo_jobs_share_no_idempotency_key_and_others_jobs_stay_theirs(
    local_server: str,
) -> None:
    demo = f"{local_server}/demo/v1/images/generations"
    body = {"model": "demo/shapes", "prompt": "a red square", "size": "64x64"}
    anonymous = {"prefer": "respond-async"}

    # Given a demo caller with a token of their own, whose job has an Idempotency-Key
    mine = {**anonymous, "authorization": "Bearer anything-a", "idempotency-key": "k1"}
    accepted = httpx.post(demo, json=body, headers=mine, timeout=30)
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]

    # When a caller without a token asks for it, or sends the same Idempotency-Key
    asked = httpx.get(location, timeout=30)
    same_key = httpx.post(
        demo, json=body, headers={**anonymous, "idempotency-key": "k1"}, timeout=30
    )

    # Then the job is not theirs (a 404), and the key is refused before anything starts: it
    # would name one job for every caller without a token
    assert asked.status_code == 404
    assert same_key.status_code == 400
    assert same_key.json()["error"]["code"] == "idempotency_key_needs_token"
    # while the owner reads the job, and a caller without a token reads their own by its link
    assert wait_for(location, token="anything-a")["status"] == "succeeded"
    own = httpx.post(demo, json=body, headers=anonymous, timeout=30)
    assert own.status_code == 202, own.text
    assert httpx.get(own.headers["location"], timeout=30).status_code == 200


def test_a_demo_edit_job_draws_from_its_input_kept_in_the_bucket(local_server: str) -> None:
    # Given a picture red on the left, blue on the right, to edit with the demo as a job
    picture = Image.new("RGB", (200, 100), (220, 30, 30))
    picture.paste((30, 30, 220), (100, 0, 200, 100))
    sent = io.BytesIO()
    picture.save(sent, "PNG")
    token = "anything-e"

    accepted = httpx.post(
        f"{local_server}/demo/v1/images/edits",
        headers={"prefer": "respond-async", "authorization": f"Bearer {token}"},
        files={"image": ("photo.png", sent.getvalue(), "image/png")},
        data={"model": "demo/edit", "prompt": "make it night", "size": "200x100", "seed": "1"},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    done = wait_for(accepted.headers["location"], token=token)

    # Then the Poll step gave the demo the job's input (its task id holds none): the picture
    # is the input edited, mirrored (blue now on the left)
    assert done["status"] == "succeeded", done
    (item,) = done["data"]
    image = httpx.get(item["url"], follow_redirects=True, timeout=30)
    edited = Image.open(io.BytesIO(image.content)).convert("RGB")
    assert edited.size == (200, 100)
    left = ImageStat.Stat(edited.crop((20, 20, 80, 60))).mean
    right = ImageStat.Stat(edited.crop((120, 20, 180, 60))).mean
    assert left[2] > left[0] and right[0] > right[2], (left, right)
