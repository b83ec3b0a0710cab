"""The work of the state machine's task functions (`functions/job_submit|job_poll|job_store`).

Each step takes the state the ASL file hands it and returns JSON for the state. The provider is
driven through the same two calls as the interactive loop (`Provider.split`, `start`, `check`):

- `submit` opens the sealed key and starts one provider call per part of the job; a synchronous
  provider finishes here (its images go straight to Store);
- `poll` asks about the tasks still running;
- `store` copies the result images into the bucket under images/ and outputs their names.

Images a provider answers inline (data URIs) are copied into the bucket at once: no image ever
travels in the state. Failures a later attempt may not have (the provider unreachable or 5xx
while polling, a rate-limited submission that started nothing, the bucket failing) raise
`TransientJobError`, which the state machine retries with backoff; a provider's refusal or a
failed task ends the job with the provider's reason. Nothing here logs or returns the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from imagegw.config import Settings
from imagegw.errors import (
    ConfigurationError,
    GatewayError,
    ProviderError,
    StorageError,
    TransientJobError,
    TransientProviderError,
)
from imagegw.fetcher import Fetcher
from imagegw.images import decode_data_uri, is_data_uri
from imagegw.jobs.keys import KeySealer
from imagegw.jobs.schema import (
    ErrorInfo,
    ImageRef,
    JobOutput,
    JobSpec,
    PollEvent,
    Progress,
    StoreEvent,
    SubmitEvent,
    TaskProgress,
)
from imagegw.links import fetch_image
from imagegw.log import logger
from imagegw.providers import PROVIDERS, Provider
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    InputImage,
    Running,
    Started,
    TaskStatus,
)
from imagegw.redaction import protect
from imagegw.storage import ImageStore

Step = Callable[[Mapping[str, Any], "Tools"], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Tools:
    """What a step works with; made fresh for each invocation."""

    settings: Settings
    #: the providers' APIs (the owner's base URLs)
    client: httpx.AsyncClient
    store: ImageStore
    sealer: KeySealer
    #: URLs the client sent (input images), through the SSRF guard
    fetcher: Fetcher
    #: result images the provider links to, through the guard (the providers' hosts trusted)
    result_fetcher: Fetcher


@asynccontextmanager
async def tools(settings: Settings) -> AsyncIterator[Tools]:
    fetcher, result_fetcher = Fetcher(settings), Fetcher.for_results(settings)
    try:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(settings.provider_timeout, connect=10.0),
            follow_redirects=False,
        ) as client:
            yield Tools(
                settings=settings,
                client=client,
                store=ImageStore(settings),
                sealer=KeySealer(settings.job_key_id, settings.aws_region),
                fetcher=fetcher,
                result_fetcher=result_fetcher,
            )
    finally:
        await fetcher.aclose()
        await result_fetcher.aclose()


def run(step: Step, event: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Run one step to completion (the task functions' synchronous entry)."""

    async def main() -> dict[str, Any]:
        async with tools(settings or Settings.from_env()) as kit:
            return await step(event, kit)

    return asyncio.run(main())


def _provider(spec: JobSpec, kit: Tools) -> Provider:
    cls = PROVIDERS.get(spec.provider)
    if cls is None:
        raise ConfigurationError(
            f"The job names an unknown provider '{spec.provider}'.", code="unknown_provider"
        )
    return cls(kit.settings, kit.client, kit.fetcher)


def _request(
    spec: JobSpec, key: SecretStr, images: tuple[InputImage, ...] = ()
) -> GenerationRequest:
    return GenerationRequest(
        provider=spec.provider,
        model=spec.model,
        kind=spec.kind,
        prompt=spec.prompt,
        api_key=key,
        options=spec.options,
        images=images,
        n=spec.n,
    )


@contextmanager
def _bucket_failures_retried() -> Iterator[None]:
    """The bucket failing is passing trouble: raised as TransientJobError (retried)."""
    try:
        yield
    except StorageError as exc:
        raise TransientJobError(exc.message) from None


def _failed(exc: GatewayError, state: str = "FAILED") -> TaskProgress:
    return TaskProgress(state=state, error=ErrorInfo.of(exc))


async def _keep(images: Sequence[str], kit: Tools) -> tuple[ImageRef, ...]:
    """Result images as refs: provider URLs as they are; data URIs copied into the bucket now."""

    async def one(ref: str) -> ImageRef:
        if not is_data_uri(ref):
            return ImageRef(url=ref)
        image = decode_data_uri(
            ref, max_bytes=kit.settings.max_result_bytes, what="generated image"
        )
        with _bucket_failures_retried():
            return ImageRef(name=await kit.store.save_result(image))

    return tuple(await asyncio.gather(*(one(ref) for ref in images)))


async def submit(event: Mapping[str, Any], kit: Tools) -> dict[str, Any]:
    """Start the job's provider calls; a `Progress` (polls 0)."""
    payload = SubmitEvent.model_validate(event)
    spec = payload.job
    try:
        provider = _provider(spec, kit)
        key = kit.sealer.open(payload.key, spec.id)
        protect(key.get_secret_value())
        images = await _inputs(spec, kit)
    except GatewayError as exc:
        return Progress.of([_failed(exc)]).model_dump(mode="json")
    parts = provider.split(_request(spec, key, images))
    outcomes = await asyncio.gather(*(provider.start(p) for p in parts), return_exceptions=True)
    refusals = [outcome for outcome in outcomes if isinstance(outcome, GatewayError)]
    if len(refusals) == len(parts) and all(exc.retryable is True for exc in refusals):
        # nothing started and the provider said "later" (a rate limit): safe to submit again
        raise TransientJobError(refusals[0].message)
    # (a synchronous provider's images are stored here: the bucket failing then retries the
    # submission, which is paid again; the state cannot hold the images meanwhile)
    tasks = [await _task(provider, TaskProgress(), outcome, kit) for outcome in outcomes]
    logger.info(
        "job submitted",
        extra={
            "job_id": spec.id,
            "provider": spec.provider,
            "task_ids": [t.task_id for t in tasks if t.task_id],
            "refused": len(refusals),
        },
    )
    return Progress.of(tasks).model_dump(mode="json")


async def _inputs(spec: JobSpec, kit: Tools) -> tuple[InputImage, ...]:
    """The job's input images as the provider needs them: objects in the bucket presigned (and
    their bytes), URLs passed through."""

    async def one(key: str | None, url: str | None) -> InputImage:
        if key is None:
            assert url is not None
            return InputImage(url=url)
        with _bucket_failures_retried():
            return await kit.store.load(key)

    return tuple(await asyncio.gather(*(one(ref.key, ref.url) for ref in spec.images)))


async def poll(event: Mapping[str, Any], kit: Tools) -> dict[str, Any]:
    """Ask about the tasks still running; the next `Progress` (polls + 1)."""
    payload = PollEvent.model_validate(event)
    spec, progress = payload.job, payload.progress
    try:
        provider = _provider(spec, kit)
        key = kit.sealer.open(payload.key, spec.id)
        protect(key.get_secret_value())
    except GatewayError as exc:
        return Progress.of([_failed(exc)], progress.polls + 1).model_dump(mode="json")
    parts = provider.split(_request(spec, key))
    tasks = list(progress.tasks)
    pending = [i for i, task in enumerate(tasks) if task.task_id and not task.ended]
    answers = await asyncio.gather(
        *(provider.check(parts[i], str(tasks[i].task_id)) for i in pending),
        return_exceptions=True,
    )
    passing = [a for a in answers if isinstance(a, TransientProviderError)]
    if passing:
        raise TransientJobError(passing[0].message)
    for index, answer in zip(pending, answers, strict=True):
        tasks[index] = await _task(provider, tasks[index], answer, kit)
    return Progress.of(tasks, progress.polls + 1).model_dump(mode="json")


async def _task(
    provider: Provider,
    task: TaskProgress,
    answer: Started | TaskStatus | BaseException,
    kit: Tools,
) -> TaskProgress:
    """A task after the provider's answer to a `start` or `check`."""
    if isinstance(answer, Started):
        return task.model_copy(update={"task_id": answer.task_id})
    if isinstance(answer, Running):
        return task.model_copy(update={"state": answer.state})
    if isinstance(answer, Finished):
        try:
            if not answer.images:
                raise ProviderError(
                    f"{provider.title} finished without an image.", code="provider_error"
                )
            images = await _keep(answer.images, kit)
        except GatewayError as exc:  # an image that is no image, or too large
            return task.model_copy(update={"state": "FAILED", "error": _failed(exc).error})
        return task.model_copy(update={"state": answer.state, "images": images})
    if isinstance(answer, Failed):
        failure = ProviderError(
            f"{provider.title} task {task.task_id} failed: {answer.reason}",
            code="generation_failed",
        )
        return task.model_copy(update={"state": answer.state, "error": _failed(failure).error})
    if isinstance(answer, GatewayError):
        return task.model_copy(update={"state": "FAILED", "error": _failed(answer).error})
    raise answer


async def store(event: Mapping[str, Any], kit: Tools) -> dict[str, Any]:
    """Copy the result images into the bucket; the job's output (`JobOutput`)."""
    payload = StoreEvent.model_validate(event)
    spec, progress = payload.job, payload.progress
    refs = [ref for task in progress.tasks for ref in task.images][: spec.n]
    kept = await asyncio.gather(*(_copy(ref, kit) for ref in refs))
    output = JobOutput(
        images=tuple(kept),
        failures=tuple(task.error.message for task in progress.tasks if task.error),
        task_ids=tuple(task.task_id for task in progress.tasks if task.task_id),
    )
    logger.info(
        "job stored",
        extra={
            "job_id": spec.id,
            "stored": sum(ref.name is not None for ref in kept),
            "linked": sum(ref.url is not None for ref in kept),
            "failures": len(output.failures),
        },
    )
    return output.model_dump(mode="json")


async def _copy(ref: ImageRef, kit: Tools) -> ImageRef:
    """One result image copied into the bucket. When the provider's image cannot be fetched,
    its own URL is kept (it still works for a while; as the interactive path does)."""
    if ref.url is None:
        return ref
    try:
        image = await fetch_image(kit.result_fetcher, ref.url, kit.settings)
    except GatewayError as exc:
        logger.warning(
            "result not copied; keeping the provider's link", extra={"error": exc.message}
        )
        return ref
    with _bucket_failures_retried():
        return ImageRef(name=await kit.store.save_result(image))
