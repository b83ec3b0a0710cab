"""One image job from checked inputs to events: stage input images, run the poll loop, and
turn the results into the links clients get (IMAGE_LINKS).

When its reader stops before the result (the client left: a stream's connection closed, or
`disconnect.unless_disconnected` cancelled a JSON answer), everything stops with it: the
uploads, the provider calls in flight, the pollers and the copy of the result; one log line
says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import replace

from imagegw.core.deliver import Delivered, LinkMode, deliver, saves
from imagegw.core.lifecycle import SUCCEEDED
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes
from imagegw.providers.base import GenerationRequest, Provider
from imagegw.runners.gateway import Gateway
from imagegw.runners.inprocess import Progress, Result, generate

#: what `events` yields: the progress, then the result with its images delivered
Event = Progress | Result[Delivered]


async def events(
    gateway: Gateway,
    provider: Provider,
    request: GenerationRequest,
    inputs: Sequence[str | ImageBytes],
    base_url: str,
    link_mode: LinkMode | None = None,
    budget: float | None = None,
    resume: Sequence[str] = (),
) -> AsyncGenerator[Event, None]:
    """Upload input images (reported as UPLOADING), yield the generation's progress, then the
    result with its images delivered as links (`link_mode`, default IMAGE_LINKS). The
    progress of the ended run ("saving the image") is told only when the delivery may store a
    copy (`imagegw.core.deliver.saves`): a link passed on as it is comes at once, in the
    result's own chunk.

    `budget` (seconds) shortens GENERATION_TIMEOUT for this request (see `web.client_budget`).
    `resume`: the tasks an earlier request started for this job, polled instead of starting
    new ones (`generate`); their inputs were sent then, so nothing is uploaded."""
    began = time.monotonic()
    settings = gateway.settings
    if budget is not None and budget < settings.generation_timeout:
        settings = settings.model_copy(update={"generation_timeout": budget})
    stage = "uploading"
    task_ids: tuple[str, ...] = ()
    try:
        staged = request
        uploads = () if resume else inputs
        if any(isinstance(item, ImageBytes) for item in uploads):
            yield Progress("UPLOADING", 0.0, 0, request.n, where=provider.title)
        if uploads:
            staged = replace(request, images=await gateway.store.stage(uploads))
        stage = "generating"
        how = link_mode or gateway.settings.image_links
        ended: Progress | None = None  # the last progress: every task ended, images made
        async with aclosing(
            generate(provider, staged, settings, estimates=gateway.estimates, resume=resume)
        ) as running:
            async for event in running:
                if isinstance(event, Progress):  # elapsed counts from the request, uploads too
                    task_ids = event.task_ids or task_ids
                    elapsed = time.monotonic() - began
                    shift = elapsed - event.elapsed
                    expected = None if event.expected is None else event.expected + shift
                    event = event.timed(elapsed, expected)
                    if event.state == SUCCEEDED and event.done == event.total:
                        # the result comes next: this is told only if its delivery saves
                        ended = event
                    else:
                        yield event
                    continue
                if ended is not None and saves(event.images, how):
                    yield ended  # what the reader waits for now: the copy
                stage, task_ids = "delivering", event.task_ids
                delivered = await deliver(
                    event.images,
                    settings=gateway.settings,
                    store=gateway.store,
                    fetcher=gateway.result_fetcher,
                    base_url=base_url,
                    mode=link_mode,
                )
                stage = "delivered"
                yield Result(delivered, event.failures, event.task_ids, event.elapsed)
    except (asyncio.CancelledError, GeneratorExit):
        if stage != "delivered":
            logger.info(
                "client left; generation stopped",
                extra={
                    "provider": provider.name,
                    "model": request.model,
                    "elapsed": round(time.monotonic() - began, 3),
                    "task_ids": list(task_ids),
                    "stage": stage,
                },
            )
        raise
