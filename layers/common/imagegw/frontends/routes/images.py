"""POST /v1/images/generations (JSON) and POST /v1/images/edits (multipart): the OpenAI
Images API, answered when the images are done (see `imagegw.frontends.images_api`), or as
OpenAI's image event stream with `stream: true` (`imagegw.frontends.image_stream`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from imagegw.access.gate import Caller
from imagegw.core.deliver import check_bucket
from imagegw.core.plan import IGNORED_HEADER, ignored_notice
from imagegw.errors import GatewayError
from imagegw.frontends import images_api
from imagegw.frontends.common import gateway_of
from imagegw.frontends.disconnect import WatchedStream, unless_disconnected
from imagegw.frontends.image_stream import images_stream, relayed_stream
from imagegw.frontends.images_api import ImagesCall
from imagegw.frontends.replays import Paid, replays_of
from imagegw.frontends.routes.jobs import accept_async, wants_job
from imagegw.frontends.routes.webhooks import not_a_job
from imagegw.frontends.spans import PiecesResponse
from imagegw.frontends.waits import refuse_short_wait
from imagegw.frontends.web import authorize, client_budget, public_base_url, read_form, read_json
from imagegw.infra.config import Settings
from imagegw.providers.base import Provider
from imagegw.providers.catalogue import TREATMENT_HEADER, treatment
from imagegw.runners import pipeline
from imagegw.runners.quota import metered, settle

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

Reader = Callable[[Request, Settings], Awaitable[ImagesCall]]


async def _generation(request: Request, settings: Settings) -> ImagesCall:
    return images_api.generation_call(await read_json(request, settings.max_body_bytes))


async def _edit(request: Request, settings: Settings) -> ImagesCall:
    items = await read_form(request, settings.max_body_bytes)
    return images_api.edit_call(items, max_image_bytes=settings.max_image_bytes)


def _endpoint(read: Reader) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        gateway = gateway_of(request)
        provider = gateway.provider(request.path_params.get("provider"))
        caller, key = await authorize(request, provider.name)  # before the body is read
        refuse_short_wait(request, as_job=wants_job(request))
        call = await read(request, gateway.settings)
        # no BUCKET: refused before anything starts (a stream's images come as their bytes)
        mode = "data" if call.stream else images_api.link_mode(call, gateway.settings.image_links)
        check_bucket(gateway.settings, mode, call.images)
        accepted = await accept_async(request, provider, call, auth=(caller, key))
        ignored = ignored_notice(images_api.ignored(provider, call))
        headers = {IGNORED_HEADER: ignored} if ignored else {}
        if accepted is not None:
            accepted.headers.update(headers)
            return accepted  # `Prefer: respond-async`: a durable job (routes/jobs.py)
        not_a_job(call.webhook_url)  # (a job took it above)
        if call.stream:
            return await _streamed(request, provider, call, caller, key, headers)
        base_url = public_base_url(request, gateway.settings)
        planned = images_api.build_job(provider, call, key)
        caller.check_model(planned.model)
        asked = Paid(provider.name, planned.model, planned.n, call.response_format)
        # the same request just failed after paid work: answered from its tasks (replays.py)
        async with replays_of(request).attempt(request, asked, gateway.access, key) as attempt:
            reservation = await gateway.access.reserve(caller, planned.model, planned.n)
            try:
                answer = await unless_disconnected(
                    request,
                    images_api.answer(
                        gateway,
                        provider,
                        call,
                        attempt.api_key,
                        base_url,
                        budget=attempt.budget(client_budget(request)),
                        resume=attempt.resume,
                        tap=attempt.watch,
                    ),
                )
            except GatewayError:
                await settle(reservation, 0)  # nothing made: the quota given back
                raise
            await settle(reservation, len(answer.images))
        headers.update(attempt.headers)
        treated = treatment(provider.catalog, planned.model, planned.kind)
        if treated:
            headers[TREATMENT_HEADER] = treated
        return PiecesResponse(answer.pieces(), headers=headers)

    return endpoint


async def _streamed(
    request: Request,
    provider: Provider,
    call: ImagesCall,
    caller: Caller,
    key: SecretStr,
    headers: dict[str, str],
) -> Response:
    """`stream: true`: OpenAI's image events as the images come; the bytes in each event."""
    gateway = gateway_of(request)
    settings = gateway.settings
    base_url = public_base_url(request, settings)  # a bad Host refused before the reservation
    planned = images_api.build_job(provider, call, key)
    caller.check_model(planned.model)
    reservation = await gateway.access.reserve(caller, planned.model, planned.n)
    try:
        job = await images_api.prepare(gateway, provider, call, key)  # the mask staged
    except GatewayError:
        await settle(reservation, 0)
        raise
    if images_api.relays_previews(provider, call):  # an upstream's previews passed through
        return WatchedStream(
            relayed_stream(gateway, provider, job, call, reservation, settings.keepalive_interval),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )
    # no budget: the stream stays alive with keep-alives, however long the provider takes
    events = metered(
        pipeline.events(gateway, provider, job, call.images, base_url, "data"), reservation
    )
    body = images_stream(
        events,
        edit=call.edit,
        n=job.n,
        fields=call.fields,
        keepalive_interval=settings.keepalive_interval,
    )
    return WatchedStream(body, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})


generations = _endpoint(_generation)
edits = _endpoint(_edit)
