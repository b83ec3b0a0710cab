"""POST /v1/images/generations (JSON) and POST /v1/images/edits (multipart): the OpenAI
Images API, answered when the images are done (see `imagegw.frontends.images_api`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegw.errors import GatewayError
from imagegw.frontends import images_api
from imagegw.frontends.disconnect import unless_disconnected
from imagegw.frontends.images_api import ImagesCall
from imagegw.frontends.routes.jobs import accept_async
from imagegw.frontends.web import (
    authorize,
    client_budget,
    gateway_of,
    public_base_url,
    read_form,
    read_json,
)
from imagegw.infra.config import Settings
from imagegw.providers.catalogue import TREATMENT_HEADER, treatment
from imagegw.runners.quota import settle

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
        call = await read(request, gateway.settings)
        accepted = await accept_async(request, provider, call, auth=(caller, key))
        if accepted is not None:
            return accepted  # `Prefer: respond-async`: a durable job (routes/jobs.py)
        base_url = public_base_url(request, gateway.settings)
        planned = images_api.build_job(provider, call, key)
        caller.check_model(planned.model)
        reservation = await gateway.access.reserve(caller, planned.model, planned.n)
        try:
            answer = await unless_disconnected(
                request,
                images_api.run(
                    gateway, provider, call, key, base_url, budget=client_budget(request)
                ),
            )
        except GatewayError:
            await settle(reservation, 0)  # nothing made: the quota given back
            raise
        await settle(reservation, len(answer["data"]))
        treated = treatment(provider.catalog, planned.model, planned.kind)
        return JSONResponse(answer, headers={TREATMENT_HEADER: treated} if treated else None)

    return endpoint


generations = _endpoint(_generation)
edits = _endpoint(_edit)


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/v1/images/generations", generations, methods=["POST"]),
        Route(f"{prefix}/v1/images/edits", edits, methods=["POST"]),
    ]
