"""Durable image jobs over HTTP (docs/jobs.md "Async jobs").

- `accept_async`: the branch of `POST /v1/images/generations` and `/v1/images/edits` taken when
  the client sends `Prefer: respond-async`: the job starts on Step Functions and the answer is a
  `202` at once, with `Location: .../v1/jobs/{id}`. Where this gateway runs no jobs the
  preference is ignored (RFC 7240 allows it) and the call is answered as usual.
- `start_job`: the 202 of any front end's planned job; `POST /v1/chat/completions` starts its
  jobs through it too (`routes/chat.py`), and their status answers a `chat.completion`.
- `GET /v1/jobs/{id}` (and `/{provider}/v1/jobs/{id}`): the job, with the same answer as the
  synchronous call once it succeeded (`data`, or a chat job's `chat.completion`), the
  provider's progress while it runs, or the provider's reason once it failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagegw.access import lease
from imagegw.access.gate import Caller
from imagegw.core.deliver import check_bucket
from imagegw.errors import InvalidRequestError
from imagegw.frontends import images_api, job_answers
from imagegw.frontends.common import gateway_of
from imagegw.frontends.images_api import ImagesCall
from imagegw.frontends.routes.webhooks import checked_webhook_url
from imagegw.frontends.spans import PiecesResponse
from imagegw.frontends.web import anonymous, api_key, authorize, bearer_for, header, public_base_url
from imagegw.infra.media import ImageBytes
from imagegw.infra.spans import Around
from imagegw.infra.urlcheck import check_inputs
from imagegw.providers.base import GenerationRequest, Provider
from imagegw.runners.quota import settle
from imagegw.runners.stepfunctions.schema import Front, JobQuota, ResponseFormat
from imagegw.runners.stepfunctions.service import Hold, check_idempotency_key, owner_of

PREFERENCE = "respond-async"


def prefers_async(prefer: str | None) -> bool:
    """Whether a `Prefer` header asks for `respond-async` (RFC 7240: comma-separated
    preferences, each with optional parameters; names are case-insensitive)."""
    if not prefer:
        return False
    return any(
        part.split(";")[0].split("=")[0].strip().lower() == PREFERENCE for part in prefer.split(",")
    )


def wants_job(request: Request) -> bool:
    """Whether this request is to run as a durable job: the client prefers `respond-async` and
    this gateway runs jobs."""
    return prefers_async(header(request, "Prefer")) and gateway_of(request).jobs.enabled


async def accept_async(
    request: Request,
    provider: Provider,
    call: ImagesCall,
    *,
    auth: tuple[Caller, SecretStr] | None = None,
) -> Response | None:
    """Start the Images API call `call` as a durable job when the client prefers
    `respond-async` and this gateway runs jobs: the `202` answer. None: answer as usual.
    `auth`: the route's `web.authorize` answer (asked here when not given)."""
    if not wants_job(request):
        return None
    caller, key = auth or await authorize(request, provider.name)
    idempotency_key = check_idempotency_key(header(request, "Idempotency-Key"))
    base_url = public_base_url(request, gateway_of(request).settings)  # a bad Host: refused now
    if call.mask is not None:
        raise InvalidRequestError(
            "Async jobs take no mask: send this edit without 'Prefer: respond-async'.",
            param="mask",
            code="mask_not_supported",
        )
    job = images_api.build_job(provider, call, key)
    return await start_job(
        request,
        job,
        caller=caller,
        inputs=call.images,
        response_format=call.response_format,
        api="images",
        idempotency_key=idempotency_key,
        base_url=base_url,
        webhook_url=call.webhook_url,
    )


async def start_job(
    request: Request,
    job: GenerationRequest,
    *,
    caller: Caller,
    inputs: Sequence[str | ImageBytes],
    api: Front,
    response_format: ResponseFormat = "url",
    idempotency_key: str | None = None,
    base_url: str | None = None,
    webhook_url: Any = None,
) -> Response:
    """Start the planned `job` (`imagegw.core.plan`) for front end `api`, or find the one a
    retried submission started: the `202` with the job object and its `Location`. The one
    way every front end starts a durable job.

    `caller`: the route's `web.authorize` answer (its lease is current). A job of a gateway
    key carries a reference to the server-held token, never the token, and counts on the
    key's quota from its submission (given back if it does not start; a replayed submission,
    same Idempotency-Key, counts nothing); the job settles it when it ends.

    `webhook_url`: where the job's end is POSTed, signed (`routes/webhooks.py`); checked here,
    before anything is reserved, stored or started."""
    gateway = gateway_of(request)
    if idempotency_key is not None and anonymous(caller):
        raise InvalidRequestError(
            "An Idempotency-Key is kept per token, and callers without one cannot be told "
            "apart: send one as 'Bearer <key>' (the demo takes any but 'demo'), or leave the "
            "key out.",
            param="Idempotency-Key",
            code="idempotency_key_needs_token",
        )
    if webhook_url not in (None, "") and anonymous(caller):
        raise InvalidRequestError(
            "A webhook is signed with its caller's own secret, and callers without a token "
            "cannot be told apart: send one as 'Bearer <key>' (the demo takes any but 'demo'), "
            "or leave 'webhook_url' out.",
            param="webhook_url",
            code="webhook_needs_token",
        )
    if base_url is None:
        base_url = public_base_url(request, gateway.settings)  # a bad Host: before the quota
    webhook = await checked_webhook_url(gateway.settings, webhook_url)
    caller.check_model(job.model)
    # a private or loopback image URL is refused now, as the synchronous path refuses it
    await check_inputs(inputs, gateway.settings, param="messages" if api == "chat" else "image")
    check_bucket(gateway.settings, "stored", inputs)  # a job's results are copied to the bucket
    leased = lease.current() if caller.keyed else None

    async def reserve() -> Hold | None:
        reservation = await gateway.access.reserve(caller, job.model, job.n)
        if reservation is None:
            return None
        quota = JobQuota(key=reservation.record.hash, at=reservation.at)
        return Hold(quota, lambda: settle(reservation, 0))

    view = await gateway.jobs.submit(
        job,
        inputs=inputs,
        response_format=response_format,
        idempotency_key=idempotency_key,
        api=api,
        owner=owner_of(caller.bearer.get_secret_value()),
        key_ref=leased.ref if leased is not None else None,
        reserve=reserve,
        webhook=webhook,
    )
    named = request.path_params.get("provider")
    prefix = f"/{named}" if named else ""
    location = f"{base_url}{prefix}/v1/jobs/{view.id}"
    return JSONResponse(
        view.summary(),
        status_code=202,
        headers={"location": location, "preference-applied": PREFERENCE},
    )


async def get_job(request: Request) -> Response:
    gateway = gateway_of(request)
    provider = gateway.provider(request.path_params.get("provider"))  # unknown: a 404
    key = bearer_for(request, provider.name)  # the demo's anonymous jobs: no header
    await gateway.access.caller(key.get_secret_value(), provider.name)  # ACCESS_MODE's 401
    view = await gateway.jobs.status(request.path_params["job_id"], key.get_secret_value())
    around = Around()  # a b64_json job's images: written around, not through the encoder
    body = await job_answers.render(
        gateway.jobs,
        view,
        base_url=public_base_url(request, gateway.settings),
        fetcher=gateway.result_fetcher,
        around=around,
    )
    return PiecesResponse(around.pieces(body))


async def get_usage(request: Request) -> Response:
    """`GET /v1/usage`: the caller's gateway key's images today and this month, by model."""
    gateway = gateway_of(request)
    provider = gateway.provider(request.path_params.get("provider"))
    key = api_key(request)
    caller = await gateway.access.caller(key.get_secret_value(), provider.name)
    return JSONResponse(await gateway.access.usage(caller))
