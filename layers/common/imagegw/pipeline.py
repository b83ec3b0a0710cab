"""One image job from checked inputs to events: stage input images, then run the poll loop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from imagegw import generation
from imagegw.config import Settings
from imagegw.generation import Event, Progress
from imagegw.images import ImageBytes
from imagegw.providers.base import GenerationRequest, Provider
from imagegw.storage import ImageStore


async def events(
    store: ImageStore,
    provider: Provider,
    request: GenerationRequest,
    inputs: Sequence[str | ImageBytes],
    settings: Settings,
) -> AsyncIterator[Event]:
    """Upload input images (reported as UPLOADING), then yield the generation's events."""
    began = time.monotonic()
    staged = request
    if any(isinstance(item, ImageBytes) for item in inputs):
        yield Progress("UPLOADING", 0.0, 0, request.n)
    if inputs:
        staged = replace(request, images=await store.stage(inputs))
    async for event in generation.run(provider, staged, settings):
        if isinstance(event, Progress):  # elapsed counts from the request, uploads included
            event = replace(event, elapsed=time.monotonic() - began)
        yield event
