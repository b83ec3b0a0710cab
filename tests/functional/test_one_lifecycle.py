"""One lifecycle, two runners: the same scripted provider outcomes driven through the in-process
runner (`imagegw.runners.inprocess`, as a chat or Images API request runs) and through the Step
Functions steps (`imagegw.runners.stepfunctions.steps`: Submit, then Poll until the Check state
would stop, then Store), with the same final status, error (type, code, message),
`x-should-retry` and quota settlement.

The provider is scripted in memory (no HTTP: the outcomes are what matters); its images are data
URIs, so both runners keep them without fetching anything (the job's copies go to moto's S3).
The in-process runner runs on a fake clock: no real sleeps, a deadline reached in moments.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from fakes.aws import MockedAws
from fakes.png import make_png
from imagegw.core.lifecycle import Settlement, settlement
from imagegw.errors import GatewayError, ProviderError, RateLimitError, render
from imagegw.infra.config import Settings
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelKind,
    Provider,
    Running,
    Started,
    TaskStatus,
)
from imagegw.runners.gateway import Gateway
from imagegw.runners.inprocess import Result, generate
from imagegw.runners.quota import metered
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.schema import JobOutput, JobProgress, JobQuota, error_body

PNG = "data:image/png;base64," + base64.b64encode(make_png(8, 8)).decode()

Answer = TaskStatus | Exception


class Scripted(Provider):
    """Call i answers `starts[i]` (a task, or a refusal), then its polls answer `polls[i]` in
    turn, the last one for ever."""

    name = "scripted"
    title = "Scripted"
    catalog = ()

    def __init__(
        self,
        settings: Settings,
        starts: Sequence[Started | Exception],
        polls: Sequence[Sequence[Answer]],
    ) -> None:
        super().__init__(settings, None)  # type: ignore[arg-type]
        self.starts, self.polls = list(starts), [list(p) for p in polls]
        self.calls = 0

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        return {}

    async def start(self, request: GenerationRequest) -> Started:
        answer = self.starts[self.calls % len(self.starts)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        script = self.polls[int(task_id.removeprefix("t"))]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Batched(Scripted):
    """One call makes every image of the job (a batch field, as DashScope's `n`)."""

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        return [request]


@dataclass
class Case:
    starts: Sequence[Started | Exception]
    polls: Sequence[Sequence[Answer]]
    #: seconds the job may take (GENERATION_TIMEOUT; the job's polls at 1 s)
    limit: int = 60
    #: images asked for (default: one a call); a batched job makes them all in one call
    n: int | None = None
    batched: bool = False

    def provider(self, settings: Settings) -> Scripted:
        return (Batched if self.batched else Scripted)(settings, self.starts, self.polls)


def rate_limited() -> RateLimitError:
    return RateLimitError("Scripted: Rate limit exceeded", code="rate_limit_exceeded")


CASES = {
    # one call refused for rate (nothing started), the other started and failed: paid work
    # may have begun, so the job fails as the provider's error, never as a retryable 429
    "rate limited, provider error": Case(
        [rate_limited(), Started("t1")], [[], [Running("RUNNING"), Failed("bad prompt")]]
    ),
    "all succeed": Case(
        [Started("t0"), Started("t1")],
        [[Running("RUNNING"), Finished((PNG,))], [Running("PENDING"), Finished((PNG,))]],
    ),
    "partial success": Case(
        [Started("t0"), Started("t1"), Started("t2")],
        [[Finished((PNG,))], [Running("RUNNING"), Failed("nsfw")], [Finished((PNG,))]],
    ),
    "deadline": Case([Started("t0")], [[Running("RUNNING")]], limit=30),
    "deadline after a made image": Case(
        [Started("t0"), Started("t1")], [[Finished((PNG,))], [Running("RUNNING")]], limit=30
    ),
    # one batch call for two images that made one (the rest of its batch failed)
    "a batch short of images": Case(
        [Started("t0")], [[Running("RUNNING"), Finished((PNG,))]], n=2, batched=True
    ),
}


@dataclass(frozen=True)
class Ending:
    """What a client and the owner see of a job's end."""

    status: str
    images: int
    failures: tuple[str, ...] = ()
    error: dict[str, Any] | None = None
    should_retry: str | None = None
    settled: tuple[Settlement, ...] = ()


@dataclass
class Reserved:
    """A reservation of `n` images that records how it was settled."""

    n: int
    settled: list[Settlement] = field(default_factory=list)

    async def settle(self, made: int) -> None:
        self.settled.append(settlement(self.n, made))


class FakeClock:
    """Seconds that move only when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def ended_by(error: GatewayError) -> tuple[dict[str, Any], str]:
    _, body, headers = render(error)
    return body, headers["x-should-retry"]


async def in_process(case: Case, n: int) -> Ending:
    settings = Settings(generation_timeout=case.limit, poll_interval=1.0, poll_interval_max=3.0)
    provider = case.provider(settings)
    request = GenerationRequest("scripted", "m", ModelKind.GENERATE, "a cat", SecretStr("k"), n=n)
    reserved, clock = Reserved(n), FakeClock()
    events = generate(provider, request, settings, clock=clock, sleep=clock.sleep)
    try:
        *_, result = [event async for event in metered(events, reserved)]
    except GatewayError as exc:
        body, retry = ended_by(exc)
        return Ending("failed", 0, error=body, should_retry=retry, settled=tuple(reserved.settled))
    assert isinstance(result, Result)
    return Ending("succeeded", len(result.images), result.failures, settled=tuple(reserved.settled))


class Sealer:
    def open(self, sealed: str, job_id: str) -> SecretStr:
        return SecretStr("k")


class Access:
    """The access table's settlement of a job, recorded (`Access.settle_job`)."""

    def __init__(self) -> None:
        self.settled: list[Settlement] = []

    async def settle_job(
        self, job_id: str, key: str, model: str, n: int, made: int, at: float
    ) -> None:
        self.settled.append(settlement(n, made))


async def step_functions(case: Case, n: int, aws: MockedAws) -> Ending:
    # the task functions' settings, read from the environment the `aws` fixture gives them
    # (the bucket in the mocked account, its uploads to the session's moto server)
    settings = Settings.from_env()
    provider = case.provider(settings)
    access = Access()
    kit = Gateway(
        settings,
        sealer=Sealer(),  # type: ignore[arg-type]
        access=access,  # type: ignore[arg-type]
        providers={"scripted": provider},
    )
    job = {
        "id": "job-" + "0" * 32,
        "owner": "o",
        "fingerprint": "f",
        "created": 0,
        "provider": "scripted",
        "model": "m",
        "kind": "image",
        "prompt": "a cat",
        "n": n,
        "quota": JobQuota(key="a" * 64, at=0.0).model_dump(),
    }
    # the execution's input at 1-s polls for `limit` s (`JobInput`), as the ASL hands it on
    pace = {"key": "sealed", "wait_seconds": 1, "max_polls": case.limit}
    try:
        state = await steps.submit({"job": job, "key": "sealed", "wait_seconds": 1}, kit)
        while state["status"] == "running":  # the Check state
            state = await steps.poll({"job": job, **pace, "progress": state}, kit)
        progress = JobProgress.model_validate(state)
        if progress.status == "failed":
            body = error_body(progress.error, progress.cause)
            _, retry = ended_by(progress.book().final_error())
            return Ending("failed", 0, error=body, should_retry=retry, settled=(*access.settled,))
        output = JobOutput.model_validate(await steps.store({"job": job, "progress": state}, kit))
        # the job's copies went to the bucket (none fell back to the provider's link)
        assert all(image.name is not None for image in output.images), output.images
        return Ending(
            "succeeded", len(output.images), output.failures, settled=tuple(access.settled)
        )
    finally:
        await kit.aclose()


@pytest.mark.parametrize("name", CASES)
def test_both_runners_end_a_job_alike(name: str, aws: MockedAws) -> None:
    # Given scripted provider outcomes, one script per call of the job
    case = CASES[name]
    n = case.n or len(case.starts)

    # When the in-process runner and the Step Functions steps each run the job
    here = asyncio.run(in_process(case, n))
    durable = asyncio.run(step_functions(case, n, aws))

    # Then both end it alike: status, images, failures, error, retry advice and settlement
    assert here == durable
    assert len(here.settled) == 1  # settled once


def test_rate_limited_then_a_provider_error_is_the_providers_error_everywhere(
    aws: MockedAws,
) -> None:
    # Given a two-image job whose first call is refused for rate and whose second, started
    # (paid work may have begun), fails at the provider
    case = CASES["rate limited, provider error"]

    ending = asyncio.run(step_functions(case, 2, aws))

    # Then the durable job fails as the provider's error, not as a retryable rate limit
    assert ending.status == "failed" and ending.error is not None
    error = ProviderError("Scripted task t1 failed: bad prompt", code="generation_failed")
    assert ending.error == error.body()
    assert ending.should_retry == "false"
    assert ending.settled == (Settlement(2, 0),)  # all given back


def test_a_deadline_keeps_the_images_made_and_names_the_late_task(aws: MockedAws) -> None:
    # Given a job whose first image is made and whose second task never ends
    case = CASES["deadline after a made image"]

    here = asyncio.run(in_process(case, 2))

    # Then at the deadline the made image is delivered and counted, the late task named
    assert here.status == "succeeded" and here.images == 1
    assert here.failures == (
        "Scripted task t1 did not finish within 30 s; it may still finish at the provider.",
    )
    assert here.settled == (Settlement(2, 1),)


def test_a_batch_that_made_fewer_images_says_so(aws: MockedAws) -> None:
    # Given a two-image job made by one batch call that returns one image and no reason
    case = CASES["a batch short of images"]

    # When either runner runs it
    here = asyncio.run(in_process(case, 2))
    durable = asyncio.run(step_functions(case, 2, aws))

    # Then the image made is delivered with a note that one is missing (never silently fewer),
    # and the quota counts the one made
    for ending in (here, durable):
        assert ending.status == "succeeded" and ending.images == 1
        assert ending.failures == ("Scripted made 1 of the 2 images asked for; it gave no reason.",)
        assert ending.settled == (Settlement(2, 1),)
