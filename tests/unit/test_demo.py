"""The demo provider: real pictures made offline, with ModelScope-like progress, seeds, `n`,
sizes and edits; and who may use it (no token where it is on, never where it is off)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat
from pydantic import SecretStr

from fakes.png import make_png
from imagegw.errors import InvalidRequestError
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings
from imagegw.infra.media import check_image, decode_data_uri
from imagegw.providers.base import (
    Finished,
    GenerationRequest,
    InputImage,
    ModelKind,
    Running,
    Started,
)
from imagegw.providers.demo import Demo

pytestmark = pytest.mark.anyio
LAYER = Path(__file__).resolve().parents[2] / "layers" / "common"


class SteppedClock:
    """Seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def demo(client: httpx.AsyncClient, clock: SteppedClock) -> Demo:
    provider = Demo(Settings(demo_provider="enabled"), client)
    provider.clock = clock
    return provider


def ask(
    model: str = "demo/shapes",
    *,
    prompt: str = "a lighthouse at dusk",
    options: dict[str, Any] | None = None,
    images: tuple[InputImage, ...] = (),
    n: int = 1,
) -> GenerationRequest:
    return GenerationRequest(
        provider="demo",
        model=model,
        kind=ModelKind.EDIT if model.endswith("edit") else ModelKind.GENERATE,
        prompt=prompt,
        api_key=SecretStr("demo"),
        options=options or {},
        images=images,
        n=n,
    )


def picture(finished: object) -> Image.Image:
    assert isinstance(finished, Finished)
    (uri,) = finished.images
    image = decode_data_uri(uri, max_bytes=10_000_000)
    assert image.mime == "image/jpeg"
    return Image.open(io.BytesIO(image.data)).convert("RGB")


async def made(demo: Demo, clock: SteppedClock, request: GenerationRequest) -> Image.Image:
    """Run one call of `request` to its end (the clock moved past its run time)."""
    started = await demo.start(request)
    assert isinstance(started, Started)
    clock.now += 10
    return picture(await demo.check(request, started.task_id))


def differ(a: Image.Image, b: Image.Image) -> float:
    """The mean difference of two pictures' pixels (0: the same)."""
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


async def test_a_task_is_queued_then_running_then_a_picture_of_the_size_asked(
    demo: Demo, clock: SteppedClock
) -> None:
    request = ask(options=demo.prepare("demo/shapes", ModelKind.GENERATE, {"size": "320x200"}, 0))
    started = await demo.start(request)
    assert isinstance(started, Started)
    assert await demo.check(request, started.task_id) == Running("PENDING")
    clock.now += 1.5
    assert await demo.check(request, started.task_id) == Running("RUNNING")
    clock.now += 3
    image = picture(await demo.check(request, started.task_id))
    assert image.size == (320, 200)
    assert ImageStat.Stat(image).stddev[0] > 10  # a picture, not a blank


async def test_the_same_seed_gives_the_same_picture_and_each_of_n_differs(
    demo: Demo, clock: SteppedClock
) -> None:
    request = ask(options={"seed": 42, "size": "128x128"}, n=3)
    parts = demo.split(request)
    assert [part.options["seed"] for part in parts] == [42, 43, 44]
    first = [await made(demo, clock, part) for part in parts]
    again = [await made(demo, clock, part) for part in demo.split(request)]
    assert [differ(a, b) for a, b in zip(first, again, strict=True)] == [0.0, 0.0, 0.0]
    assert differ(first[0], first[1]) > 5
    assert differ(first[1], first[2]) > 5


async def test_without_a_seed_each_image_differs(demo: Demo, clock: SteppedClock) -> None:
    parts = demo.split(ask(options={"size": "128x128"}, n=2))
    one, two = [await made(demo, clock, part) for part in parts]
    assert differ(one, two) > 5


async def test_models_draw_differently_and_the_prompt_changes_the_picture(
    demo: Demo, clock: SteppedClock
) -> None:
    options = {"seed": 7, "size": "128x128"}
    shapes = await made(demo, clock, ask("demo/shapes", options=options))
    waves = await made(demo, clock, ask("demo/waves", options=options))
    other = await made(demo, clock, ask("demo/shapes", prompt="a red fox", options=options))
    assert differ(shapes, waves) > 5
    assert differ(shapes, other) > 5


def _red_left_blue_right() -> bytes:
    image = Image.new("RGB", (200, 100), (220, 30, 30))
    image.paste((30, 30, 220), (100, 0, 200, 100))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def test_an_edit_visibly_transforms_its_input(demo: Demo, clock: SteppedClock) -> None:
    source = _red_left_blue_right()
    given = InputImage("https://example.invalid/in.png", check_image(source, max_bytes=10**6))
    request = ask("demo/edit", options={"seed": 1, "size": "200x100"}, images=(given,))
    edited = await made(demo, clock, request)
    assert edited.size == (200, 100)
    original = Image.open(io.BytesIO(source)).convert("RGB")
    assert differ(edited, original) > 30  # recoloured and mirrored, not the input again
    # mirrored: the left half now has the blue half's colour
    left = ImageStat.Stat(edited.crop((20, 20, 80, 60))).mean
    assert left[2] > left[0]


async def test_an_edits_task_id_is_short_and_its_input_is_the_requests(
    demo: Demo, clock: SteppedClock
) -> None:
    """The task id carries the start, the seed and the size, not the input: a durable job's
    Poll step gives the demo the job's input (`checks_with_inputs`)."""
    given = InputImage(
        "https://example.invalid/in.png", check_image(_red_left_blue_right(), max_bytes=10**6)
    )
    request = ask("demo/edit", options={"seed": 1, "size": "200x100"}, images=(given,))
    started = await demo.start(request)
    assert isinstance(started, Started)
    assert len(started.task_id) < 48 and Demo.checks_with_inputs
    clock.now += 10
    edited = picture(await demo.check(request, started.task_id))
    assert edited.size == (200, 100)
    left = ImageStat.Stat(edited.crop((20, 20, 80, 60))).mean
    assert left[2] > left[0]


async def test_options_are_checked_in_the_gateway_words(demo: Demo) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        demo.prepare("demo/shapes", ModelKind.GENERATE, {"size": "9000x10"}, 0)
    assert raised.value.param == "size"
    with pytest.raises(InvalidRequestError):
        demo.prepare("demo/edit", ModelKind.EDIT, {}, 0)  # an edit needs an image
    with pytest.raises(InvalidRequestError):
        demo.prepare("demo/shapes", ModelKind.GENERATE, {}, 1)  # generation takes none
    assert demo.prepare("demo/shapes", ModelKind.GENERATE, {"seed": "12"}, 0) == {"seed": 12}


# ----------------------------------------------------------------------------- who may use it


@pytest.fixture
async def app_with(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """Gateways built from `make_settings(**overrides)`, each through an in-process client."""
    opened: list[httpx.AsyncClient] = []

    def make(**overrides: Any) -> httpx.AsyncClient:
        app = create_app(make_settings(**overrides))
        demo = app.state.gateway.provider("demo") if overrides.get("demo_provider") else None
        if demo is not None:  # the demo's tasks end at their first check
            ticks = iter(range(0, 10**6, 10))
            demo.clock = lambda: 1_800_000_000.0 + next(ticks)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.aclose()


GENERATION = {
    "model": "demo/waves",
    "prompt": "<b>a fox</b>",
    "size": "64x64",
    "response_format": "b64_json",
}


def answered_picture(answer: httpx.Response) -> Image.Image:
    b64 = answer.json()["data"][0]["b64_json"]
    image = decode_data_uri(f"data:image/jpeg;base64,{b64}", max_bytes=10**6)
    return Image.open(io.BytesIO(image.data)).convert("RGB")


async def test_without_a_token_the_unprefixed_routes_are_the_demo_when_it_is_on(
    app_with: Callable[..., httpx.AsyncClient],
) -> None:
    gw = app_with(demo_provider="enabled")
    answer = await gw.post("/v1/images/generations", json=GENERATION)
    assert answer.status_code == 200, answer.text
    assert answered_picture(answer).size == (64, 64)
    listed = (await gw.get("/v1/models")).json()["data"]
    assert {m["id"] for m in listed} == {"demo/shapes", "demo/waves", "demo/edit"}
    # a request with a token goes to the default provider, as always
    with_token = (await gw.get("/v1/models", headers={"Authorization": "Bearer ms-x"})).json()
    assert "Qwen/Qwen-Image" in {m["id"] for m in with_token["data"]}


async def test_a_stack_without_the_demo_knows_no_demo_provider(
    app_with: Callable[..., httpx.AsyncClient],
) -> None:
    gw = app_with()
    answer = await gw.post("/demo/v1/images/generations", json=GENERATION)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_provider"
    known = answer.json()["error"]["message"].split("Known providers:")[1]
    assert "demo" not in known
    tokenless = await gw.post("/v1/images/generations", json=GENERATION)
    assert tokenless.status_code == 401
    assert tokenless.json()["error"]["code"] == "missing_api_key"


async def test_in_keys_mode_the_demo_still_takes_only_gateway_keys(
    app_with: Callable[..., httpx.AsyncClient],
) -> None:
    gw = app_with(demo_provider="enabled", access_mode="keys", access_table="t", access_secret="s")
    bare = await gw.post("/demo/v1/images/generations", json=GENERATION)
    assert bare.status_code == 401
    assert bare.json()["error"]["code"] == "missing_api_key"
    for bearer in ("ms-x", "demo"):  # not even the name of the anonymous caller
        token = await gw.post(
            "/demo/v1/images/generations",
            json=GENERATION,
            headers={"Authorization": f"Bearer {bearer}"},
        )
        assert token.status_code == 401
        assert token.json()["error"]["code"] == "invalid_api_key"


async def test_an_unknown_gateway_key_is_refused_by_the_demo_too(
    app_with: Callable[..., httpx.AsyncClient],
) -> None:
    gw = app_with(demo_provider="enabled")
    answer = await gw.post(
        "/demo/v1/images/generations",
        json=GENERATION,
        headers={"Authorization": "Bearer gk-" + "a" * 40},
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"


async def test_an_edit_through_the_images_api(app_with: Callable[..., httpx.AsyncClient]) -> None:
    gw = app_with(demo_provider="enabled")
    answer = await gw.post(
        "/demo/v1/images/edits",
        data={
            "model": "demo/edit",
            "prompt": "make it night",
            "size": "96x64",
            "response_format": "b64_json",
        },
        files={"image": ("in.png", make_png(40, 40, (250, 250, 0)), "image/png")},
    )
    assert answer.status_code == 200, answer.text
    edited = answered_picture(answer)
    assert edited.size == (96, 64)
    assert differ(edited, Image.new("RGB", (96, 64), (250, 250, 0))) > 30


def test_a_gateway_that_draws_no_demo_picture_never_imports_pillow() -> None:
    """Pillow is imported on the demo's first picture, not at start-up (docs/architecture.md
    "Cold start and memory")."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from imagegw.frontends.app import create_app\n"
        "create_app().state.gateway.provider('demo')\n"
        "print(sorted(m for m in sys.modules if m == 'PIL' or m.startswith('PIL.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PYTHONPATH": str(LAYER), "DEMO_PROVIDER": "enabled", "PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.strip() == "[]"
