"""`/v1/batches`: the OpenAI Batch API for images (`imagegw.frontends.batches`).

`POST /v1/batches` `{input_file_id, endpoint, completion_window: "24h", metadata, webhook_url}`
starts the batch `validating` (its run checks every line of the input file before anything is
paid; `webhook_url`, checked here before anything starts, gets its signed `batch.*` event when
it ends); `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`, `GET /v1/batches?after=&limit=`. A batch belongs to the key that
made it (anyone else gets the 404 of an unknown id) and runs on the provider its path names
(`/siliconflow/v1/batches` on SiliconFlow).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagegw.access import lease
from imagegw.frontends.batches import Batches
from imagegw.frontends.common import gateway_of
from imagegw.frontends.routes.files import limit_of, owner
from imagegw.frontends.routes.webhooks import checked_webhook_url
from imagegw.frontends.web import authorize, owner_for, public_base_url, read_json
from imagegw.infra.batchstore import BatchStore

#: the most batches a listing answers at once
MAX_LIST = 100


def batches_of(request: Request) -> Batches:
    """The app's Batch API service, made at its first request (tests may set their own)."""
    state = request.app.state
    if getattr(state, "batches", None) is None:
        gateway = gateway_of(request)
        store = BatchStore(gateway.store)
        state.batches = Batches(gateway.settings, store, sealer=gateway.sealer)
    batches: Batches = state.batches
    return batches


async def create_batch(request: Request) -> Response:
    gateway = gateway_of(request)
    provider = gateway.provider(request.path_params.get("provider"))
    caller, key = await authorize(request, provider.name)  # before the body is read
    who = owner_for(caller)
    batches = batches_of(request)
    _ = batches.runner  # batches disabled: the 404 before the body is read
    base_url = public_base_url(request, gateway.settings)  # a bad Host: refused now
    body = await read_json(request, gateway.settings.max_body_bytes)
    webhook = await checked_webhook_url(gateway.settings, body.get("webhook_url"))
    leased = lease.current() if caller.keyed else None
    batch = await batches.create(
        body,
        owner=who,
        provider=provider,
        api_key=key,
        key_ref=leased.ref if leased is not None else None,
        base_url=base_url,
        caller=caller,
        webhook=webhook,
    )
    return JSONResponse(batch)


async def get_batch(request: Request) -> Response:
    who = await owner(request)
    return JSONResponse(await batches_of(request).get(who, request.path_params["batch_id"]))


async def cancel_batch(request: Request) -> Response:
    who = await owner(request)
    return JSONResponse(await batches_of(request).cancel(who, request.path_params["batch_id"]))


async def list_batches(request: Request) -> Response:
    who = await owner(request)
    limit = limit_of(request.query_params.get("limit"), default=20, most=MAX_LIST)
    after = request.query_params.get("after")
    return JSONResponse(await batches_of(request).list(who, after=after, limit=limit))
