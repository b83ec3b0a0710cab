"""ModelScope: option checks (seeds 000 and 002), and the async protocol against the fake
ModelScope over loopback HTTP (provider-wire.md)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr

from fakes.modelscope import AUTH_FAILED, FakeModelScope
from fakes.png import make_png
from imagegw.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    TransientProviderError,
    render,
)
from imagegw.infra.config import Settings
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    InputImage,
    ModelKind,
    Running,
    Started,
    TaskStatus,
    classify,
)
from imagegw.providers.modelscope import ModelScope

TOKEN = "ms-test-token"
QWEN = "Qwen/Qwen-Image"
EDIT = "Qwen/Qwen-Image-Edit"

# prepare() does no I/O: a provider without a client is enough
OFFLINE = ModelScope(Settings(), None)  # type: ignore[arg-type]


def prepare(fields: dict[str, Any], model: str = QWEN, images: int = 0) -> dict[str, Any]:
    kind = ModelKind.EDIT if "edit" in model.lower() else ModelKind.GENERATE
    return OFFLINE.prepare(model, kind, fields, images)


def refused(fields: dict[str, Any], model: str = QWEN) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        prepare(fields, model)
    assert caught.value.status == 400
    return caught.value


# ----------------------------------------------------------------------------- prepare: options


def test_every_documented_option_is_sent_in_modelscope_names() -> None:
    fields = {
        "negative_prompt": "lowres, blurry",
        "size": "1328x1328",
        "seed": 12345,
        "steps": 30,
        "guidance": 3.5,
        "loras": {"repo-a": 0.6, "repo-b": 0.4},
    }

    assert prepare(fields) == fields


def test_aliases_and_numeric_strings_are_sent_in_modelscope_names() -> None:
    fields = {"image_size": "512 x 512", "num_inference_steps": "20", "cfg": "4", "seed": "7"}

    assert prepare(fields) == {"size": "512x512", "steps": 20, "guidance": 4.0, "seed": 7}


def test_guidance_scale_alias() -> None:
    assert prepare({"guidance_scale": 7.5}) == {"guidance": 7.5}


def test_chat_client_fields_and_n_are_not_sent() -> None:
    fields = {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 4096,
        "presence_penalty": 0,
        "stream_options": {"include_usage": True},
        "n": 3,  # the service has no batch parameter: n means n tasks
        "steps": 10,
    }

    assert prepare(fields) == {"steps": 10}


def test_negative_prompt_must_be_shorter_than_2000_chars() -> None:
    assert prepare({"negative_prompt": "x" * 1999}) == {"negative_prompt": "x" * 1999}

    error = refused({"negative_prompt": "x" * 2000})

    assert error.param == "negative_prompt"
    assert "shorter than 2000 characters" in error.message


@pytest.mark.parametrize(
    ("model", "lo", "hi"),
    [
        ("Qwen/Qwen-Image", 64, 1664),
        ("Qwen/Qwen-Image-Edit-2509", 64, 1664),
        ("Tongyi-MAI/Z-Image-Turbo", 512, 2048),
        ("black-forest-labs/FLUX.1-Krea-dev", 64, 1024),
        ("AI-ModelScope/stable-diffusion-xl-base-1.0", 64, 2048),
    ],
)
def test_size_range_per_model_family(model: str, lo: int, hi: int) -> None:
    images = 1 if "edit" in model.lower() else 0
    assert prepare({"size": f"{lo}x{hi}"}, model, images) == {"size": f"{lo}x{hi}"}
    assert prepare({"size": f"{hi}x{lo}"}, model, images) == {"size": f"{hi}x{lo}"}

    for bad in (f"{lo - 1}x{hi}", f"{lo}x{hi + 1}"):
        with pytest.raises(InvalidRequestError) as caught:
            prepare({"size": bad}, model, images)
        assert caught.value.param == "size"
        assert f"from {lo}x{lo} to {hi}x{hi}" in caught.value.message


def test_alias_value_is_checked_against_the_same_range() -> None:
    error = refused({"image_size": "4096x4096"})

    assert error.param == "image_size"  # named as the client sent it
    assert "from 64x64 to 1664x1664" in error.message


@pytest.mark.parametrize(
    ("field", "good", "bad", "range_text"),
    [
        ("seed", [0, 2**31 - 1], [-1, 2**31, "x", 1.5, True], "from 0 to 2147483647"),
        ("steps", [1, 100], [0, 101, "lots", 50.5], "from 1 to 100"),
        ("guidance", [1.5, 20, "7.5"], [1.4, 20.5, "strong", False], "from 1.5 to 20"),
    ],
)
def test_numeric_option_ranges(
    field: str, good: list[Any], bad: list[Any], range_text: str
) -> None:
    for value in good:
        assert field in prepare({field: value})
    for value in bad:
        error = refused({field: value})
        assert error.param == field
        assert range_text in error.message


@pytest.mark.parametrize(
    "loras",
    [
        "repo/lora-a",
        {"repo/a": 1.0},
        {"a": 0.1, "b": 0.2, "c": 0.7},
        {f"repo/{i}": 1 / 6 for i in range(6)},
    ],
)
def test_loras_accepted(loras: Any) -> None:
    assert prepare({"loras": loras})["loras"] == loras


@pytest.mark.parametrize(
    ("loras", "text"),
    [
        ({"a": 0.6, "b": 0.3}, "sum to 1.0"),
        ({f"repo/{i}": 1 / 7 for i in range(7)}, "at most 6"),
        ({}, "at most 6"),
        ("", "LoRA repo id"),
        (["repo/a"], "LoRA repo id"),
    ],
)
def test_loras_refused(loras: Any, text: str) -> None:
    error = refused({"loras": loras})

    assert error.param == "loras"
    assert text in error.message


def test_lora_weight_out_of_range_names_the_lora() -> None:
    error = refused({"loras": {"repo-a": 1.5, "repo-b": -0.5}})

    assert error.param is not None
    assert error.param.startswith("loras")
    assert "from 0 to 1" in error.message


def test_prompt_must_be_shorter_than_2000_chars() -> None:
    OFFLINE.check_prompt("x" * 1999)

    with pytest.raises(InvalidRequestError) as caught:
        OFFLINE.check_prompt("x" * 2000)

    assert caught.value.status == 400
    assert caught.value.code == "prompt_too_long"
    assert "2000" in caught.value.message


# ----------------------------------------------------------------------------- prepare: images


def test_generate_model_with_an_image_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        OFFLINE.prepare(QWEN, ModelKind.GENERATE, {}, 1)

    assert caught.value.status == 400
    assert caught.value.param == "messages"
    assert caught.value.code == "unexpected_image"
    assert "edit model" in caught.value.message


def test_edit_model_without_an_image_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        OFFLINE.prepare(EDIT, ModelKind.EDIT, {}, 0)

    assert caught.value.status == 400
    assert caught.value.code == "image_required"
    assert EDIT in caught.value.message


def test_edit_model_with_an_image_is_fine() -> None:
    assert OFFLINE.prepare(EDIT, ModelKind.EDIT, {"seed": 1}, 1) == {"seed": 1}


# ----------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("Qwen/Qwen-Image", ModelKind.GENERATE),
        ("qwen/qwen-image", ModelKind.GENERATE),
        ("Tongyi-MAI/Z-Image-Turbo", ModelKind.GENERATE),
        ("Qwen/Qwen-Image-Edit", ModelKind.EDIT),
        ("Qwen/Qwen-Image-Edit-2509", ModelKind.EDIT),
        ("Qwen/Qwen-Image-Edit-2511", ModelKind.EDIT),
        ("MAILAND/majicflus_v1", ModelKind.GENERATE),
        ("black-forest-labs/FLUX.1-dev", ModelKind.GENERATE),
        ("foo/Some-Image-Edit-X", ModelKind.EDIT),
        ("Qwen/Qwen3-VL-30B-A3B-Instruct", ModelKind.CHAT),
        ("deepseek-ai/DeepSeek-V3", ModelKind.CHAT),
    ],
)
def test_classify(model: str, kind: ModelKind) -> None:
    assert OFFLINE.classify(model) is kind
    assert classify(model, ModelScope.catalog) is kind


def test_classify_catalog_wins_over_the_guess() -> None:
    from imagegw.providers.base import ModelInfo

    catalog = (ModelInfo("acme/Image-Edit-Pro", ModelKind.GENERATE),)

    assert classify("acme/Image-Edit-Pro", catalog) is ModelKind.GENERATE


# ----------------------------------------------------------------------------- the protocol


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


@pytest.fixture
def provider(make_settings: Callable[..., Settings], client: httpx.AsyncClient) -> ModelScope:
    return ModelScope(make_settings(), client)


def job(
    model: str = QWEN,
    *,
    options: dict[str, Any] | None = None,
    images: tuple[InputImage, ...] = (),
    token: str = TOKEN,
) -> GenerationRequest:
    kind = ModelKind.EDIT if images else ModelKind.GENERATE
    return GenerationRequest(
        provider="modelscope",
        model=model,
        kind=kind,
        prompt="A golden cat",
        api_key=SecretStr(token),
        options=options or {},
        images=images,
    )


def root_of(fake: FakeModelScope) -> str:
    """The fake's server URL (its API base URL without /v1)."""
    base: str = fake.base_url  # type: ignore[attr-defined]
    return base.removesuffix("/v1")


async def wait_until_done(
    provider: ModelScope, request: GenerationRequest, task_id: str
) -> list[TaskStatus]:
    """Every status seen while polling every 20 ms until the task ends (at most 5 s)."""
    seen: list[TaskStatus] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen.append(await provider.check(request, task_id))
        if not isinstance(seen[-1], Running):
            return seen
        await anyio.sleep(0.02)
    raise AssertionError(f"task {task_id} did not end: {seen[-3:]}")


@pytest.mark.anyio
async def test_start_submits_an_async_task(provider: ModelScope, fake_ms: FakeModelScope) -> None:
    options = {"size": "1024x1024", "seed": 42, "steps": 30, "negative_prompt": "blurry"}

    started = await provider.start(job(options=options))

    assert isinstance(started, Started)
    [submission] = fake_ms.submissions
    assert submission["status"] == 200
    assert submission["headers"]["x-modelscope-async-mode"] == "true"
    assert submission["body"] == {"model": QWEN, "prompt": "A golden cat", **options}
    assert submission["task_id"] == started.task_id


@pytest.mark.anyio
async def test_start_sends_the_input_image_as_a_list_of_urls(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    url = root_of(fake_ms) + fake_ms.add_file("in.png", make_png(8, 8))

    await provider.start(job(EDIT, images=(InputImage(url),)))

    [submission] = fake_ms.submissions
    assert submission["body"]["image_url"] == [url]
    assert fake_ms.fetched_urls == [url]


@pytest.mark.anyio
async def test_check_polls_until_the_images_are_ready(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    # Given a task pending 0.05 s then running to 0.2 s, on a clock the test moves
    now = [100.0]
    fake_ms.clock = lambda: now[0]
    fake_ms.task_duration = 0.2
    fake_ms.pending_seconds = 0.05
    request = job()
    started = await provider.start(request)

    seen = []
    for seconds in (0.0, 0.1, 0.2):
        now[0] = 100.0 + seconds
        seen.append(await provider.check(request, started.task_id))

    # Then it was PENDING, RUNNING, and finally gave the image links
    assert seen[:2] == [Running("PENDING"), Running("RUNNING")]
    final = seen[-1]
    assert isinstance(final, Finished)
    assert final.images == (f"{root_of(fake_ms)}/files/{started.task_id}-0.png",)
    # the task-type header was sent: without it the fake answers "task not found"
    assert all(answer != "FAILED" for _, _, answer in fake_ms.polls)


@pytest.mark.anyio
async def test_a_failed_task_gives_the_provider_reason(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    fake_ms.task_duration = 0.05
    fake_ms.fail_reason = "Content moderation rejected the prompt"
    request = job()
    started = await provider.start(request)

    seen = await wait_until_done(provider, request, started.task_id)

    assert seen[-1] == Failed("Content moderation rejected the prompt")


@pytest.mark.anyio
async def test_unknown_status_names_mean_still_running(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    fake_ms.task_duration = 30
    fake_ms.pending_seconds = 0
    fake_ms.running_status_name = "PROCESSING"
    request = job()
    started = await provider.start(request)

    assert await provider.check(request, started.task_id) == Running("PROCESSING")


@pytest.mark.anyio
async def test_503_while_polling_is_transient(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    fake_ms.task_duration = 30
    request = job()
    started = await provider.start(request)
    fake_ms.poll_errors = 1

    with pytest.raises(TransientProviderError) as caught:
        await provider.check(request, started.task_id)

    assert started.task_id in caught.value.message
    assert "503" in caught.value.message
    # and the next poll works again
    assert isinstance(await provider.check(request, started.task_id), Running)


@pytest.mark.anyio
async def test_unreachable_provider_while_polling_is_transient(
    make_settings: Callable[..., Settings], client: httpx.AsyncClient
) -> None:
    provider = ModelScope(make_settings(modelscope_base_url="http://127.0.0.1:9/v1"), client)

    with pytest.raises(TransientProviderError) as caught:
        await provider.check(job(), "task-1")

    assert caught.value.code == "provider_unreachable"
    assert "task-1" in caught.value.message


@pytest.mark.anyio
async def test_unreachable_provider_on_submit_is_a_502(
    make_settings: Callable[..., Settings], client: httpx.AsyncClient
) -> None:
    provider = ModelScope(make_settings(modelscope_base_url="http://127.0.0.1:9/v1"), client)

    with pytest.raises(ProviderError) as caught:
        await provider.start(job())

    assert not isinstance(caught.value, TransientProviderError)
    assert caught.value.status == 502
    assert caught.value.code == "provider_unreachable"


@pytest.mark.anyio
async def test_bad_token_is_a_401_with_modelscope_message(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await provider.start(job(token="ms-wrong-token"))

    assert caught.value.status == 401
    assert AUTH_FAILED in caught.value.message
    assert "ms-wrong-token" not in caught.value.message


@pytest.mark.anyio
async def test_unknown_model_is_a_404(provider: ModelScope) -> None:
    with pytest.raises(NotFoundError) as caught:
        await provider.start(job("nobody/No-Such-Image"))

    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "The model 'nobody/No-Such-Image' does not exist." in caught.value.message


@pytest.mark.anyio
async def test_429_on_submit_keeps_the_message_and_retry_after(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    fake_ms.submit_override = (
        429,
        {"errors": {"message": "Rate limit exceeded"}, "request_id": "r-1"},
        {"retry-after": "7", "modelscope-ratelimit-requests-remaining": "0"},
    )

    with pytest.raises(RateLimitError) as caught:
        await provider.start(job())

    error = caught.value
    assert "Rate limit exceeded" in error.message
    status, body, headers = render(error)
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert headers["retry-after"] == "7"
    assert headers["modelscope-ratelimit-requests-remaining"] == "0"
    assert headers["x-should-retry"] == "true"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_on_submit_is_a_502(
    provider: ModelScope, fake_ms: FakeModelScope, status: int
) -> None:
    fake_ms.submit_override = (status, {"errors": {"message": "internal failure"}}, {})

    with pytest.raises(ProviderError) as caught:
        await provider.start(job())

    assert caught.value.status == 502
    assert "internal failure" in caught.value.message
    assert render(caught.value)[2]["x-should-retry"] == "false"


@pytest.mark.anyio
async def test_non_json_error_body_is_reported(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    fake_ms.submit_override = (400, "Invalid parameter: steps ???", {})

    with pytest.raises(InvalidRequestError) as caught:
        await provider.start(job())

    assert "Invalid parameter: steps ???" in caught.value.message


@pytest.mark.anyio
async def test_submit_answer_without_task_id_is_a_502(
    provider: ModelScope, fake_ms: FakeModelScope
) -> None:
    fake_ms.submit_override = (200, {"request_id": "r-1"}, {})

    with pytest.raises(ProviderError) as caught:
        await provider.start(job())

    assert caught.value.status == 502
    assert "task id" in caught.value.message


def test_chat_families_named_stable_are_chat_and_majicflus_has_flux_sizes() -> None:
    from imagegw.providers.base import ModelKind, classify
    from imagegw.providers.modelscope import size_range

    assert classify("stabilityai/stablelm-2-zephyr-1_6b", ()) is ModelKind.CHAT
    assert classify("stabilityai/stable-code-3b", ()) is ModelKind.CHAT
    assert classify("stabilityai/stable-diffusion-3.5-large", ()) is ModelKind.GENERATE
    assert size_range("MAILAND/majicflus_v1") == (64, 1024)


def test_range_errors_name_the_alias_the_client_sent() -> None:
    from imagegw.errors import InvalidRequestError
    from imagegw.infra.config import Settings
    from imagegw.providers.base import ModelKind
    from imagegw.providers.modelscope import ModelScope

    provider = ModelScope(Settings(), None)  # type: ignore[arg-type]
    for field, value in (("image_size", "4096x4096"), ("num_inference_steps", 0), ("cfg", 99)):
        with pytest.raises(InvalidRequestError) as caught:
            provider.prepare("Qwen/Qwen-Image", ModelKind.GENERATE, {field: value}, 0)
        assert caught.value.param == field
