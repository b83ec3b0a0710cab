"""One image job from checked inputs to events: stage input images, run the poll loop, and
turn the results into the links clients get (IMAGE_LINKS)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from imagegw import generation, links
from imagegw.gateway import Gateway
from imagegw.generation import Event, Progress, Result
from imagegw.images import ImageBytes
from imagegw.providers.base import GenerationRequest, Provider


async def events(
    gateway: Gateway,
    provider: Provider,
    request: GenerationRequest,
    inputs: Sequence[str | ImageBytes],
    base_url: str,
    link_mode: links.LinkMode | None = None,
    budget: float | None = None,
) -> AsyncIterator[Event]:
    """Upload input images (reported as UPLOADING), yield the generation's progress, then the
    result with its images delivered as links (`link_mode`, default IMAGE_LINKS).

    `budget` (seconds) shortens GENERATION_TIMEOUT for this request (see `web.client_budget`)."""
    began = time.monotonic()
    settings = gateway.settings
    if budget is not None and budget < settings.generation_timeout:
        settings = settings.model_copy(update={"generation_timeout": budget})
    staged = request
    if any(isinstance(item, ImageBytes) for item in inputs):
        yield Progress("UPLOADING", 0.0, 0, request.n)
    if inputs:
        staged = replace(request, images=await gateway.store.stage(inputs))
    async for event in generation.run(provider, staged, settings):
        if isinstance(event, Result):
            delivered = await links.deliver(
                event.images,
                settings=gateway.settings,
                store=gateway.store,
                fetcher=gateway.result_fetcher,
                base_url=base_url,
                mode=link_mode,
            )
            event = replace(event, images=delivered)
        else:  # elapsed counts from the request, uploads included
            event = replace(event, elapsed=time.monotonic() - began)
        yield event
