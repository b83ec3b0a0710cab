"""POST /v1/chat/completions: chat messages -> image job -> markdown images (SSE or JSON).

A chat (non-image) model's request is passed through to the provider's own chat API instead.

With `Prefer: respond-async` (and durable jobs enabled) an image model's request runs as a
durable job instead (docs/jobs.md "Async jobs"): the same plan, the input images (a gateway link
from an earlier answer included) staged before the execution starts, a `202` at once, and
`GET /v1/jobs/{id}` answering the `chat.completion` once done. The job wins over `stream: true`.
A chat model is refused for async: its streamed answer is already the right tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagegw.access.gate import Caller
from imagegw.core.deliver import check_bucket
from imagegw.core.plan import IGNORED_HEADER, Ask, ignored_fields, ignored_notice, plan
from imagegw.errors import InvalidRequestError
from imagegw.frontends import passthrough, prompt_options
from imagegw.frontends.common import gateway_of
from imagegw.frontends.disconnect import WatchedStream, unless_disconnected
from imagegw.frontends.messages import parse_messages
from imagegw.frontends.replays import Paid, replays_of
from imagegw.frontends.routes.jobs import start_job, wants_job
from imagegw.frontends.routes.webhooks import not_a_job
from imagegw.frontends.schemas import ChatRequest, Completion, read
from imagegw.frontends.spans import PiecesResponse
from imagegw.frontends.streaming import chat_stream, collect, markdown
from imagegw.frontends.waits import refuse_short_wait
from imagegw.frontends.web import authorize, client_budget, header, public_base_url, read_json
from imagegw.infra.log import logger
from imagegw.infra.media import ImageBytes, decode_refs
from imagegw.infra.spans import Around
from imagegw.providers.base import GenerationRequest, ModelKind, Provider
from imagegw.providers.catalogue import TREATMENT_HEADER, treatment
from imagegw.runners import pipeline
from imagegw.runners.quota import metered
from imagegw.runners.stepfunctions.service import check_idempotency_key

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def chat_completions(request: Request) -> Response:
    gateway = gateway_of(request)
    settings = gateway.settings
    provider = gateway.provider(request.path_params.get("provider"))
    caller, key = await authorize(request, provider.name)  # before the body is read
    body = await read_json(request, settings.max_body_bytes)
    chat = read(ChatRequest, body)
    caller.check_model(chat.model)
    kind = provider.classify(chat.model)
    as_job = wants_job(request)
    if as_job and kind is ModelKind.CHAT:
        raise InvalidRequestError(
            f"'{chat.model}' is a chat model: async jobs make images. Send this request "
            "without 'Prefer: respond-async' (with 'stream': true to read the answer as it "
            "comes), or name an image model.",
            param="model",
            code="async_not_supported",
        )
    if kind is ModelKind.CHAT:
        # a client that leaves before the provider answers stops the wait (a stream, once
        # started, is watched by WatchedStream)
        relayed = passthrough.chat(gateway, provider, body, key, caller)
        return await unless_disconnected(request, relayed)
    refuse_short_wait(request, as_job=as_job)  # before anything is stored or started
    idempotency_key = check_idempotency_key(header(request, "Idempotency-Key")) if as_job else None
    webhook_url = chat.fields.get("webhook_url")  # a durable job's (routes/webhooks.py)
    if not as_job:
        not_a_job(webhook_url)
    parsed = parse_messages(chat.messages, edit=kind is ModelKind.EDIT)
    # `--ar 16:9 --seed 42` written in the message: out of the prompt, over the body's fields
    written = prompt_options.parse(parsed.prompt)
    body_fields = {name: value for name, value in chat.fields.items() if name != "webhook_url"}
    fields = prompt_options.merge(body_fields, written.fields)
    ask = Ask(chat.model, kind, written.prompt, fields, len(parsed.images))
    job = plan(provider, ask, key)
    ignored = ignored_notice(ignored_fields(provider, fields, chat.model, kind))
    treated = treatment(provider.catalog, chat.model, kind)  # an id outside the catalogue
    told = {TREATMENT_HEADER: treated} if treated else {}
    inputs = decode_refs(parsed.images, max_bytes=settings.max_image_bytes)
    n = job.n
    base_url = public_base_url(request, settings)  # a bad Host refused before the reservation
    check_bucket(settings, settings.image_links, inputs)  # no BUCKET: before anything starts
    logger.info(
        "chat generation",
        extra={
            "provider": provider.name,
            "model": chat.model,
            "kind": str(kind),
            "images": len(inputs),
            "from_history": parsed.from_history,
            "n": n,
            "stream": chat.stream,
            "job": as_job,
        },
    )
    if as_job:  # a durable job (routes/jobs.py, which reserves the quota); it wins over `stream`
        accepted = await start_job(
            request,
            job,
            caller=caller,
            inputs=inputs,
            api="chat",
            idempotency_key=idempotency_key,
            base_url=base_url,
            webhook_url=webhook_url,
        )
        if ignored:
            accepted.headers[IGNORED_HEADER] = ignored
        accepted.headers.update(told)
        return accepted
    if not chat.stream:
        headers = {IGNORED_HEADER: ignored, **told} if ignored else told
        return await _completion(request, caller, provider, job, inputs, base_url, headers)
    reservation = await gateway.access.reserve(caller, job.model, n)  # gateway keys' quota
    # a streamed answer stays alive with keep-alives: no budget
    events = metered(pipeline.events(gateway, provider, job, inputs, base_url), reservation)
    completion = Completion(chat.model)
    intro = f"{provider.title} · {chat.model} · {n} image{'s' if n > 1 else ''}"
    if parsed.from_history:
        intro += " · editing the previous image"
    if ignored:
        intro += f"\nignored: {ignored}"
    return WatchedStream(
        chat_stream(
            events,
            completion,
            include_usage=chat.include_usage,
            keepalive_interval=settings.keepalive_interval,
            intro=intro + "\n",
        ),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **told},
    )


async def _completion(
    request: Request,
    caller: Caller,
    provider: Provider,
    job: GenerationRequest,
    inputs: Sequence[str | ImageBytes],
    base_url: str,
    headers: dict[str, str],
) -> Response:
    """The non-streamed answer: one `chat.completion` once the images are made, before the
    client's timer runs out; a repeat of a request that just failed after paid work is
    answered from its tasks (`imagegw.frontends.replays`)."""
    gateway = gateway_of(request)
    asked = Paid(provider.name, job.model, job.n, "chat")
    async with replays_of(request).attempt(request, asked, gateway.access, job.api_key) as attempt:
        reservation = await gateway.access.reserve(caller, job.model, job.n)  # keys' quota
        events = pipeline.events(
            gateway,
            provider,
            replace(job, api_key=attempt.api_key),
            inputs,
            base_url,
            budget=attempt.budget(client_budget(request)),
            resume=attempt.resume,
        )
        # a stream stops by itself when the client leaves; this must be told
        metered_events = attempt.watch(metered(events, reservation))
        result = await unless_disconnected(request, collect(metered_events))
    completion = Completion(job.model)
    around = Around.of(result.images)  # data URIs (IMAGE_LINKS=inline): written around
    answer = completion.message(markdown(result, around))
    if around is not None:
        return PiecesResponse(around.pieces(answer), headers={**headers, **attempt.headers})
    return JSONResponse(answer, headers={**headers, **attempt.headers})
