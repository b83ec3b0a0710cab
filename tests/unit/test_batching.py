"""`Provider.split` and the poll loop: one call per part, images in the order of the parts,
partial failures, and progress while a synchronous provider works inside `start`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from pydantic import SecretStr

from imagegw.errors import DeadlineExceededError, GatewayError, ProviderError
from imagegw.infra.config import Settings
from imagegw.providers.base import Finished, GenerationRequest, ModelKind, Provider
from imagegw.runners.inprocess import Progress, Result, generate

pytestmark = pytest.mark.anyio

FAST = Settings(
    poll_interval=0.01, poll_interval_max=0.05, progress_interval=0.05, generation_timeout=3.0
)


class Batching(Provider):
    """A synchronous provider making up to 3 images a call; call i answers after delays[i]."""

    name = "batching"
    title = "Batching"
    catalog = ()

    def __init__(
        self,
        delays: tuple[float, ...] = (),
        fail: int | None = None,
        settings: Settings = FAST,
    ) -> None:
        super().__init__(settings, None)  # type: ignore[arg-type]
        self.delays = delays
        self.fail = fail
        self.calls: list[int] = []

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        return {}

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        return [replace(request, n=min(3, request.n - i)) for i in range(0, request.n, 3)]

    async def start(self, request: GenerationRequest) -> Finished:
        call = len(self.calls)
        self.calls.append(request.n)
        await asyncio.sleep(self.delays[call] if call < len(self.delays) else 0.0)
        if call == self.fail:
            raise ProviderError(f"call {call} failed: overloaded")
        return Finished(tuple(f"img-{call}-{i}" for i in range(request.n)))


def job(n: int) -> GenerationRequest:
    return GenerationRequest(
        provider="batching",
        model="acme/Image",
        kind=ModelKind.GENERATE,
        prompt="a cat",
        api_key=SecretStr("secret"),
        n=n,
    )


async def events_of(provider: Provider, n: int) -> list[Progress | Result]:
    return [event async for event in generate(provider, job(n), provider.settings)]


async def test_one_call_per_part_and_images_in_the_order_of_the_parts() -> None:
    # Given 7 images in batches of 3, the first batch answering last
    provider = Batching(delays=(0.1, 0.0, 0.02))

    *_, result = await events_of(provider, 7)

    assert provider.calls == [3, 3, 1]
    assert isinstance(result, Result)
    assert result.images == (
        "img-0-0",
        "img-0-1",
        "img-0-2",
        "img-1-0",
        "img-1-1",
        "img-1-2",
        "img-2-0",
    )
    assert result.failures == ()


async def test_a_failed_part_leaves_the_others_images_and_its_reason() -> None:
    provider = Batching(fail=1)

    *_, result = await events_of(provider, 5)

    assert isinstance(result, Result)
    assert result.images == ("img-0-0", "img-0-1", "img-0-2")
    assert result.failures == ("call 1 failed: overloaded",)


async def test_every_part_failing_is_the_first_failure() -> None:
    provider = Batching(fail=0)

    with pytest.raises(ProviderError, match="call 0 failed"):
        await events_of(provider, 2)


async def test_default_split_is_one_image_a_call() -> None:
    class OneAtATime(Batching):
        def split(self, request: GenerationRequest) -> list[GenerationRequest]:
            return Provider.split(self, request)

    provider = OneAtATime()

    *_, result = await events_of(provider, 3)

    assert provider.calls == [1, 1, 1]
    assert isinstance(result, Result) and len(result.images) == 3


async def test_progress_goes_on_while_a_synchronous_provider_works() -> None:
    # Given a provider that answers once the client has heard three progress updates (every
    # 0.05 s): a runner that told nothing while it waited would never get the answer
    heard = asyncio.Event()

    class Held(Batching):
        async def start(self, request: GenerationRequest) -> Finished:
            await heard.wait()
            return await super().start(request)

    events: list[Progress | Result] = []
    async for event in generate(Held(), job(1), FAST):
        events.append(event)
        running = [p for p in events if isinstance(p, Progress) and p.state == "RUNNING"]
        if len(running) == 3:
            heard.set()

    # Then the client heard RUNNING with a growing elapsed time before the result
    result = events[-1]
    assert running[-1].elapsed > running[0].elapsed
    assert isinstance(result, Result) and result.images == ("img-0-0",)


async def test_a_synchronous_call_past_the_deadline_is_a_504() -> None:
    settings = FAST.model_copy(update={"generation_timeout": 0.2})
    provider = Batching(delays=(5.0,), settings=settings)

    with pytest.raises(DeadlineExceededError, match=r"did not answer within 0\.2 s") as caught:
        await events_of(provider, 1)

    assert caught.value.status == 504


async def test_closing_the_events_early_cancels_the_calls() -> None:
    cancelled = asyncio.Event()

    class Slow(Batching):
        async def start(self, request: GenerationRequest) -> Finished:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise GatewayError("unreachable")

    events = generate(Slow(), job(1), FAST)
    first = await anext(events)
    await events.aclose()

    assert isinstance(first, Progress) and first.state == "RUNNING"
    assert cancelled.is_set()
