"""The task-style providers (DashScope, Ark, BFL, Replicate, fal): how the gateway's options
map to each one's own fields (sizes, counts, edits), and how each one's task states map to the
gateway's (running, finished, failed, refused by moderation). Provider answers are the shapes
of provider-wire.md, served by an `httpx.MockTransport`; the whole path over HTTP is in
tests/e2e/test_task_providers.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from imagegw.core.plan import Ask, plan
from imagegw.errors import (
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    ProviderError,
    TransientProviderError,
)
from imagegw.infra.config import Settings
from imagegw.providers import PROVIDERS
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelKind,
    Provider,
    Running,
    Started,
)
from imagegw.providers.tasks import follow, host_patterns, is_own_host

pytestmark = pytest.mark.anyio
KEY = "provider-secret-key-123"
Handler = Callable[[httpx.Request], httpx.Response]


def make(name: str, handler: Handler | None = None, **settings: str) -> Provider:
    transport = httpx.MockTransport(handler or (lambda r: httpx.Response(500)))
    return PROVIDERS[name](Settings(**settings), httpx.AsyncClient(transport=transport))


def job(
    provider: Provider, model: str, fields: dict[str, Any], images: int = 0
) -> GenerationRequest:
    ask = Ask(model, provider.classify(model), "a cat", fields, images, prompt_param="prompt")
    return plan(provider, ask, SecretStr(KEY))


def answering(*bodies: tuple[int, Any]) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering `bodies` in turn (status, JSON), and the requests it got."""
    seen: list[httpx.Request] = []
    queue = list(bodies)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = queue.pop(0)
        return httpx.Response(status, json=body)

    return handle, seen


# ----------------------------------------------------------------------------- DashScope


def test_dashscope_sizes_use_a_star_and_n_goes_in_batches_of_four() -> None:
    provider = make("dashscope")
    request = job(provider, "wan2.2-t2i-flash", {"size": "1024x768", "n": 6, "seed": 7})
    assert request.options == {"size": "1024*768", "seed": 7}
    assert [part.n for part in provider.split(request)] == [4, 2]
    body = provider.body(provider.split(request)[0])  # type: ignore[attr-defined]
    assert body == {
        "model": "wan2.2-t2i-flash",
        "input": {"prompt": "a cat"},
        "parameters": {"size": "1024*768", "seed": 7, "n": 4},
    }
    # an aspect ratio becomes a size inside Wan's 512-1440 a side
    wide = job(provider, "wan2.2-t2i-flash", {"aspect_ratio": "16:9"})
    width, height = (int(side) for side in wide.options["size"].split("*"))
    assert 512 <= height < width <= 1440 and abs(width / height - 16 / 9) < 0.02


async def test_dashscope_submits_async_and_maps_task_states() -> None:
    handler, seen = answering(
        (200, {"output": {"task_id": "t-1", "task_status": "PENDING"}, "request_id": "r"}),
        (200, {"output": {"task_id": "t-1", "task_status": "RUNNING"}}),
        (200, {"output": {"task_status": "SUCCEEDED", "results": [{"url": "https://oss/a.png"}]}}),
        (200, {"output": {"task_status": "FAILED", "code": "InternalError", "message": "boom"}}),
        (200, {"output": {"task_status": "CANCELED"}}),
    )
    provider = make("dashscope", handler)
    request = job(provider, "wanx2.1-t2i-turbo", {})
    assert await provider.start(request) == Started("t-1")
    assert seen[0].headers["x-dashscope-async"] == "enable"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert str(seen[0].url).endswith("/services/aigc/text2image/image-synthesis")
    assert await provider.check(request, "t-1") == Running("RUNNING")
    assert str(seen[1].url) == "https://dashscope.aliyuncs.com/api/v1/tasks/t-1"
    assert await provider.check(request, "t-1") == Finished(("https://oss/a.png",), "SUCCEEDED")
    assert await provider.check(request, "t-1") == Failed("boom (InternalError)", "FAILED")
    assert isinstance(await provider.check(request, "t-1"), Failed)


async def test_dashscope_inspection_failures_are_content_policy_400s() -> None:
    inspection = {"code": "DataInspectionFailed", "message": "Input data may contain bad content."}
    handler, _ = answering(
        (400, {**inspection, "request_id": "r"}),
        (200, {"output": {"task_status": "FAILED", **inspection}}),
    )
    provider = make("dashscope", handler)
    request = job(provider, "wanx2.1-t2i-turbo", {})
    for call in (lambda: provider.start(request), lambda: provider.check(request, "t-1")):
        with pytest.raises(InvalidRequestError) as caught:
            await call()
        assert caught.value.code == "content_policy_violation"
        assert "may contain bad content" in caught.value.message


def test_dashscope_edits_send_the_function_and_the_image_url() -> None:
    from imagegw.providers.base import InputImage

    provider = make("dashscope")
    request = job(provider, "wanx2.1-imageedit", {"size": "1024x1024"}, images=1)
    assert request.options == {"function": "description_edit"}
    with_image = GenerationRequest(**{**request.__dict__, "images": (InputImage("https://b/x"),)})
    body = provider.body(with_image)  # type: ignore[attr-defined]
    assert str(body["input"]) == str(
        {"prompt": "a cat", "function": "description_edit", "base_image_url": "https://b/x"}
    )
    assert "/image2image/" not in str(body)


# ----------------------------------------------------------------------------- Ark


def test_ark_sizes_per_model() -> None:
    provider = make("ark")
    # Seedream 4: at least 1280x720 pixels, shape kept; its named sizes pass
    small = job(provider, "doubao-seedream-4-0-250828", {"size": "1024x768"}).options["size"]
    width, height = (int(s) for s in small.split("x"))
    assert width * height >= 1280 * 720 and abs(width / height - 4 / 3) < 0.02
    assert job(provider, "doubao-seedream-4-0-250828", {"size": "2k"}).options["size"] == "2K"
    # Seedream 3: 512-2048 a side, as asked; SeedEdit: only "adaptive"
    assert job(provider, "doubao-seedream-3-0-t2i-250415", {"size": "1024x768"}).options == {
        "size": "1024x768"
    }
    assert job(provider, "doubao-seededit-3-0-i2i-250628", {}, images=1).options == {
        "size": "adaptive"
    }
    # one picture a call, sequential generation off, so n is never silently fewer
    request = job(provider, "doubao-seedream-4-0-250828", {"n": 3})
    assert [part.n for part in provider.split(request)] == [1, 1, 1]
    body = provider.body(request)  # type: ignore[attr-defined]
    assert body["sequential_image_generation"] == "disabled"
    assert body["response_format"] == "url"


async def test_ark_moderation_and_auth_errors() -> None:
    sensitive = {
        "error": {
            "code": "OutputImageSensitiveContentDetected",
            "message": "The output image may contain sensitive information.",
            "param": "",
            "type": "BadRequest",
        }
    }
    bad_key = {"error": {"code": "AuthenticationError", "message": "The API key is invalid."}}
    handler, seen = answering((400, sensitive), (401, bad_key))
    provider = make("ark", handler)
    request = job(provider, "doubao-seedream-4-0-250828", {})
    with pytest.raises(InvalidRequestError) as moderated:
        await provider.start(request)
    assert moderated.value.code == "content_policy_violation"
    with pytest.raises(AuthenticationError):
        await provider.start(request)
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


# ----------------------------------------------------------------------------- BFL


def test_bfl_sizes_are_multiples_of_32_or_an_aspect_ratio() -> None:
    provider = make("bfl")
    assert job(provider, "flux-pro-1.1", {"size": "1000x750"}).options == {
        "width": 992,
        "height": 736,
        "output_format": "png",
    }
    kontext = job(provider, "flux-kontext-pro", {"size": "1024x768"}, images=1)
    assert kontext.options["aspect_ratio"] == "4:3"
    # one image a task: n=3 is three tasks
    request = job(provider, "flux-pro-1.1", {"n": 3})
    assert [part.n for part in provider.split(request)] == [1, 1, 1]


def test_bfl_and_replicate_and_fal_take_any_model_id() -> None:
    for name, generate, edit in (
        ("bfl", "flux-pro-1.2-new", "flux-kontext-dev"),
        ("replicate", "someone/new-model", "someone/new-image-edit"),
        ("fal", "fal-ai/new-model", "fal-ai/new-model/edit"),
    ):
        provider = make(name)
        assert provider.classify(generate) is ModelKind.GENERATE
        assert provider.classify(edit) is ModelKind.EDIT


async def test_bfl_polls_the_returned_url_and_maps_its_states() -> None:
    polling = "https://api.us1.bfl.ai/v1/get_result?id=abc"
    handler, seen = answering(
        (200, {"id": "abc", "polling_url": polling}),
        (200, {"id": "abc", "status": "Pending", "progress": None}),
        (200, {"id": "abc", "status": "Pending", "progress": 0.4}),
        (200, {"id": "abc", "status": "Ready", "result": {"sample": "https://d.bfl.ai/x.png"}}),
        (200, {"id": "abc", "status": "Error", "details": "out of memory"}),
        (200, {"id": "abc", "status": "Task not found"}),
        (200, {"id": "abc", "status": "Request Moderated"}),
    )
    # the polling host is BFL's base host here, so the mock answers it
    provider = make("bfl", handler, bfl_base_url="https://api.us1.bfl.ai/v1")
    request = job(provider, "flux-pro-1.1", {})
    assert await provider.start(request) == Started(polling)
    assert seen[0].headers["x-key"] == KEY and "authorization" not in seen[0].headers
    assert await provider.check(request, polling) == Running("PENDING")
    assert await provider.check(request, polling) == Running("RUNNING", "40 %")
    assert await provider.check(request, polling) == Finished(
        ("https://d.bfl.ai/x.png",), "SUCCEEDED"
    )
    assert await provider.check(request, polling) == Failed("out of memory", "ERROR")
    assert isinstance(await provider.check(request, polling), Failed)
    with pytest.raises(InvalidRequestError) as caught:
        await provider.check(request, polling)
    assert caught.value.code == "content_policy_violation"
    assert all(str(r.url) == polling for r in seen[1:])


async def test_bfl_bad_key_is_401_and_no_credit_is_403() -> None:
    handler, _ = answering((403, {"detail": "Not authenticated"}), (402, {"detail": "No credits"}))
    provider = make("bfl", handler)
    request = job(provider, "flux-pro-1.1", {})
    with pytest.raises(AuthenticationError):
        await provider.start(request)
    with pytest.raises(PermissionDeniedError):
        await provider.start(request)


# ----------------------------------------------------------------------------- Replicate


def test_replicate_aspect_ratios_and_num_outputs() -> None:
    provider = make("replicate")
    request = job(provider, "black-forest-labs/flux-schnell", {"size": "1024x768", "n": 6})
    assert request.options == {"aspect_ratio": "4:3"}
    parts = provider.split(request)
    assert [part.n for part in parts] == [4, 2]
    url, body = provider.call(parts[0])  # type: ignore[attr-defined]
    assert url.endswith("/models/black-forest-labs/flux-schnell/predictions")
    assert body == {"input": {"prompt": "a cat", "aspect_ratio": "4:3", "num_outputs": 4}}
    # each model's own list of aspect ratios: 21:9 where FLUX has it, Imagen's nearest (16:9)
    wide = {"size": "1344x576"}
    assert job(provider, "black-forest-labs/flux-dev", wide).options["aspect_ratio"] == "21:9"
    assert job(provider, "google/imagen-4", wide).options["aspect_ratio"] == "16:9"
    # models without num_outputs: one prediction an image
    pro = job(provider, "black-forest-labs/flux-1.1-pro", {"n": 2})
    assert [part.n for part in provider.split(pro)] == [1, 1]
    # a pinned version goes to /predictions
    pinned = job(provider, "someone/model:abc123", {})
    url, body = provider.call(pinned)  # type: ignore[attr-defined]
    assert url.endswith("/predictions") and body["version"] == "abc123"


async def test_replicate_follows_urls_get_and_maps_states() -> None:
    get = "https://api.replicate.com/v1/predictions/p1"
    handler, seen = answering(
        (201, {"id": "p1", "status": "starting", "urls": {"get": get}}),
        (200, {"id": "p1", "status": "starting"}),
        (200, {"id": "p1", "status": "processing"}),
        (200, {"id": "p1", "status": "succeeded", "output": "https://replicate.delivery/a.png"}),
        (200, {"id": "p1", "status": "succeeded", "output": ["https://r.d/1", "https://r.d/2"]}),
        (200, {"id": "p1", "status": "failed", "error": "CUDA error"}),
        (200, {"id": "p1", "status": "failed", "error": "NSFW content detected."}),
    )
    provider = make("replicate", handler)
    request = job(provider, "black-forest-labs/flux-1.1-pro", {})
    assert await provider.start(request) == Started(get)
    assert await provider.check(request, get) == Running("PENDING")
    assert await provider.check(request, get) == Running("RUNNING")
    assert (await provider.check(request, get)).images == (  # type: ignore[union-attr]
        "https://replicate.delivery/a.png",
    )
    assert len((await provider.check(request, get)).images) == 2  # type: ignore[union-attr]
    assert await provider.check(request, get) == Failed("CUDA error")
    with pytest.raises(InvalidRequestError):
        await provider.check(request, get)
    assert {r.headers["authorization"] for r in seen} == {f"Bearer {KEY}"}


# ----------------------------------------------------------------------------- fal


def test_fal_image_size_and_num_images() -> None:
    provider = make("fal")
    request = job(provider, "fal-ai/flux/dev", {"size": "1024x768", "n": 5, "steps": 20})
    assert request.options == {
        "image_size": {"width": 1024, "height": 768},
        "num_inference_steps": 20,
    }
    parts = provider.split(request)
    assert [part.n for part in parts] == [4, 1]
    assert provider.body(parts[0])["num_images"] == 4  # type: ignore[attr-defined]
    kontext = job(provider, "fal-ai/flux-pro/kontext", {"size": "1024x768"}, images=1)
    assert kontext.options == {"aspect_ratio": "4:3"}


async def test_fal_polls_status_then_reads_the_response() -> None:
    base = "https://queue.fal.run/fal-ai/flux/requests/r1"
    handler, seen = answering(
        (200, {"request_id": "r1", "status_url": f"{base}/status", "response_url": base}),
        (202, {"status": "IN_QUEUE", "queue_position": 3}),
        (202, {"status": "IN_PROGRESS"}),
        (200, {"status": "COMPLETED"}),
        (200, {"images": [{"url": "https://v3.fal.media/a.png", "width": 1, "height": 1}]}),
        (200, {"status": "COMPLETED"}),
        (422, {"detail": [{"msg": "flagged", "type": "content_policy_violation"}]}),
        (200, {"status": "COMPLETED"}),
        (500, {"detail": "worker crashed"}),
        (200, {"status": "COMPLETED"}),
        (502, {"upstream": "bad gateway"}),
    )
    provider = make("fal", handler)
    request = job(provider, "fal-ai/flux/dev", {})
    task = f"{base}/status {base}"
    assert await provider.start(request) == Started(task)
    assert seen[0].headers["authorization"] == f"Key {KEY}"
    assert await provider.check(request, task) == Running("QUEUED", "position 3 in the queue")
    assert await provider.check(request, task) == Running("RUNNING")
    assert await provider.check(request, task) == Finished(
        ("https://v3.fal.media/a.png",), "SUCCEEDED"
    )
    with pytest.raises(InvalidRequestError):
        await provider.check(request, task)
    assert await provider.check(request, task) == Failed("worker crashed")
    with pytest.raises(TransientProviderError):  # a proxy's 502 without fal's detail
        await provider.check(request, task)


# ----------------------------------------------------------------------------- own hosts


def test_own_hosts_are_the_named_hosts_subdomains_and_ports() -> None:
    patterns = host_patterns(" *.bfl.ai, api.replicate.com ,127.0.0.1:9000")
    own = [
        "https://api.us1.bfl.ai/v1/get_result?id=1",
        "https://bfl.ai/x",
        "https://api.replicate.com/v1/predictions/1",
        "http://127.0.0.1:9000/x",
    ]
    foreign = [
        "https://bfl.ai.evil.com/x",
        "https://evilbfl.ai/x",
        "https://api.us1.bfl.ai:8443/x",
        "https://api.replicate.com.evil.com/x",
        "http://127.0.0.1:9001/x",
        "https://169.254.169.254/latest",
    ]
    assert all(is_own_host(httpx.URL(url), patterns) for url in own)
    assert not any(is_own_host(httpx.URL(url), patterns) for url in foreign)


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example/v1/get_result?id=1",
        "http://api.us1.bfl.ai/v1/get_result?id=1",  # https only where the base is https
        "ftp://api.bfl.ai/x",
        "not a url",
    ],
)
async def test_a_url_not_on_the_providers_hosts_is_refused_before_sending(url: str) -> None:
    sent: list[httpx.Request] = []
    provider = make("bfl", lambda r: sent.append(r) or httpx.Response(200, json={}))  # type: ignore[func-returns-value]
    with pytest.raises(ProviderError):
        await follow(provider, url, {"x-key": KEY}, host_patterns("*.bfl.ai"))
    assert sent == []


async def test_a_task_polled_at_a_url_not_the_providers_is_refused_at_every_poll() -> None:
    # Given a BFL task whose polling URL is on another host than BFL's own
    sent: list[httpx.Request] = []
    provider = make("bfl", lambda r: sent.append(r) or httpx.Response(200, json={}))  # type: ignore[func-returns-value]
    request = job(provider, "flux-pro-1.1", {})
    # Then each poll of it is refused before anything is sent (no request is kept for it)
    for _ in range(2):
        with pytest.raises(ProviderError, match="not its own"):
            await provider.check(request, "https://attacker.example/v1/get_result?id=1")
    assert sent == []


async def test_the_base_urls_own_origin_goes_through_the_provider_client() -> None:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"ok": True})

    provider = make("bfl", handle)
    answer = await follow(provider, "https://api.bfl.ai/v1/get_result?id=1", {"x-key": KEY}, ())
    assert json.loads(answer.content) == {"ok": True} and len(sent) == 1


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("bfl", "../credits"),
        ("bfl", "flux-pro-1.1?id=1"),
        ("bfl", "v1/get_result"),
        ("replicate", "owner/../../account"),
        ("replicate", "owner/name/extra"),
        ("replicate", "https://evil.example/x"),
        ("replicate", "owner/name:../x"),
        ("fal", "fal-ai/../../admin"),
        ("fal", "fal-ai/%2e%2e/x"),
        ("fal", "flux"),
    ],
)
def test_model_ids_that_would_steer_the_url_path_are_400s(name: str, model: str) -> None:
    # Given a model id that is part of the provider's URL path, bent to reach another path
    provider = make(name)
    with pytest.raises(InvalidRequestError) as caught:
        job(provider, model, {})
    # Then it is refused before anything is sent
    assert caught.value.param == "model" and caught.value.status == 400
