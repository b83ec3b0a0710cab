"""Chat pass-through: a chat model's request goes to the provider's own OpenAI-compatible
`/chat/completions`, and its answer comes back as it is.

The request body is sent as the client sent it (images in messages included). A streamed answer
is relayed chunk by chunk as it arrives (never buffered); a JSON answer is passed on. An error
before the answer starts becomes the gateway's error shape (`imagegw.providers.upstream`); a
stream that breaks later ends with `data: {"error": {...}}` and `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
import httpx
from pydantic import SecretStr
from starlette.background import BackgroundTask
from starlette.responses import Response

from imagegw.access import lease
from imagegw.access.gate import Caller
from imagegw.errors import GatewayError, ProviderError, render
from imagegw.frontends.disconnect import WatchedStream
from imagegw.frontends.streaming import DONE, sse
from imagegw.infra import apimetrics
from imagegw.infra.clients import AnswerTimeout
from imagegw.infra.log import logger
from imagegw.providers.base import Provider
from imagegw.providers.catalogue import (
    AS_CHAT,
    TREATMENT_HEADER,
    says_no_such_model,
    with_suggestions,
)
from imagegw.providers.upstream import (
    error_for,
    image_answer_limit,
    message_of,
    read_answer,
    unreachable,
    work_timeout,
)
from imagegw.runners.gateway import Gateway

EVENT_STREAM: Final = "text/event-stream"
SSE_HEADERS: Final = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def chat(
    gateway: Gateway,
    provider: Provider,
    body: dict[str, Any],
    key: SecretStr,
    caller: Caller | None = None,
) -> Response:
    """The provider's answer to a chat request for a chat (non-image) model.

    With a gateway key (`caller` keyed, its lease current: `web.authorize`), the stack's token
    is used: a request refused for the token (401/403, quota, rate limit: nothing was answered,
    so nothing was spent) goes again with the pool's next token, and an answered request is
    counted in the key's usage (`chats`; chats are not on the image quota)."""
    model = body.get("model")
    base = provider.chat_base_url
    if base is None:
        raise with_suggestions(
            f"'{str(model)[:100]}' is not an image model, and {provider.title} has no chat "
            "models here.",
            str(model),
            provider.known_ids,
        )
    logger.info(
        "chat pass-through",
        extra={"provider": provider.name, "model": model, "stream": body.get("stream") is True},
    )
    leased = lease.current() if caller is not None and caller.keyed else None
    while True:
        try:
            upstream = await _send(
                gateway, provider, f"{base.rstrip('/')}/chat/completions", body, key
            )
            break
        except GatewayError as refused:
            if leased is None or leased.provider != provider.name:
                raise
            token = await leased.fail_over([refused], str(model))
            if token is None:
                raise
            key = token
    if caller is not None:
        await gateway.access.count_chat(caller, str(model))
    media_type = upstream.headers.get("content-type", "application/json")
    told = {TREATMENT_HEADER: AS_CHAT}  # the id is no image model of the catalogue
    if not media_type.startswith(EVENT_STREAM):
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=media_type,
            headers=told,
        )
    return WatchedStream(
        _relay(upstream, provider.title),
        media_type=media_type,
        headers={**SSE_HEADERS, **told},
        background=BackgroundTask(upstream.aclose),
    )


async def _send(
    gateway: Gateway, provider: Provider, url: str, body: dict[str, Any], key: SecretStr
) -> httpx.Response:
    """The provider's answer: open, a stream to relay; or a JSON answer read whole (no further
    than MAX_RESULT_BYTES: `imagegw.providers.upstream`). An error answer (or none, or none
    whole within GENERATION_TIMEOUT) is raised as the gateway's error."""
    client = gateway.client
    request = client.build_request(
        "POST",
        url,
        json=body,
        # identity: a compressed stream could be held back by the decoder
        headers={
            "authorization": f"Bearer {key.get_secret_value()}",
            "accept-encoding": "identity",
        },
        timeout=work_timeout(gateway.settings),
    )
    deadline = gateway.settings.generation_timeout
    try:
        # the answer's start, and a JSON answer whole, within the deadline; a stream is relayed
        # as it comes (never held), bounded by httpx's read timeout between its chunks
        with anyio.fail_after(deadline):
            upstream = await client.send(request, stream=True)
            media_type = upstream.headers.get("content-type", "application/json")
            if upstream.status_code < 400 and media_type.startswith(EVENT_STREAM):
                return upstream
            try:
                answer = await read_answer(
                    upstream, title=provider.title, limit=image_answer_limit(gateway.settings)
                )
            finally:
                await upstream.aclose()
    except TimeoutError:
        waited = AnswerTimeout(f"no whole answer within {deadline:g} s", request=request)
        raise unreachable(provider.title, waited, gateway.settings) from None
    except httpx.TransportError as exc:
        raise unreachable(provider.title, exc, gateway.settings) from None
    if answer.status_code >= 400:
        model = str(body.get("model"))
        # "no such model": say how the id was treated, and which ids were likely meant
        said = says_no_such_model(answer.status_code, message_of(answer))
        raise error_for(
            provider.title,
            answer,
            key=key,
            note=f" ({AS_CHAT})" if said else "",
            model=model,
            known=provider.known_ids,
        )
    return answer


async def _relay(upstream: httpx.Response, title: str) -> AsyncIterator[bytes]:
    """The upstream stream's bytes as they arrive; an in-stream error if it breaks."""
    tail = b"\n\n"
    try:
        async for chunk in upstream.aiter_bytes():
            if chunk:
                tail = chunk[-2:]
                yield chunk
    except httpx.HTTPError as exc:
        logger.warning("chat stream broke", extra={"error": type(exc).__name__})
        error = ProviderError(
            f"{title}: the chat stream broke off ({type(exc).__name__}).", code="stream_broken"
        )
        if tail != b"\n\n":  # end a half-sent event first
            yield b"\n\n"
        apimetrics.failure(error)
        yield sse(render(error)[1]).encode()
        yield DONE.encode()
    finally:
        await upstream.aclose()
