"""Calls to a provider's HTTP API that wait for the work itself, and their failures.

For providers that answer synchronously (SiliconFlow, OpenAI-compatible image servers) and for
chat pass-through. Providers disagree on error bodies: a bare JSON string (`"Invalid token"`),
`{"code":..,"message":..,"data":..}`, OpenAI's `{"error":{"message":..}}`, ModelScope's
`{"errors":{"message":..}}`, FastAPI's `{"detail":..}`, or plain text. `error_for()` reads any
of them into the gateway's error for the status, with the provider's own message; the client's
key never appears in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import httpx
from pydantic import SecretStr

from imagegw import redaction
from imagegw.errors import (
    DeadlineExceededError,
    GatewayError,
    NotFoundError,
    ProviderError,
    ProviderUnreachableError,
    RateLimitError,
    for_status,
)
from imagegw.infra.config import Settings
from imagegw.providers.catalogue import says_no_such_model, with_suggestions

#: the longest provider message passed on
MAX_MESSAGE: Final = 500
MAX_SCAN: Final = redaction.MAX_SCAN
#: headers of a 429 worth passing on besides any `*ratelimit*` one
RETRY_HEADERS: Final = ("retry-after", "retry-after-ms")


def work_timeout(settings: Settings) -> httpx.Timeout:
    """The timeout of a call whose answer comes when the work is done: connecting and sending
    as any provider call, waiting for the answer up to the whole generation's deadline."""
    return httpx.Timeout(
        connect=10.0,
        read=settings.generation_timeout,
        write=settings.provider_timeout,
        pool=settings.provider_timeout,
    )


def _text(value: Any) -> str | None:
    """The message in one part of an error body, if it has one."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        for key in ("message", "msg", "detail", "error"):
            found = _text(value.get(key))
            if found:
                return found
    if isinstance(value, list) and value:  # FastAPI's 422: [{"loc": [...], "msg": ...}, ...]
        first = value[0]
        found = _text(first)
        if found and isinstance(first, dict) and isinstance(first.get("loc"), list):
            return f"{found} ({'.'.join(str(p) for p in first['loc'])})"
        return found
    return None


def message_of(response: httpx.Response) -> str:
    """The provider's own message from any of its error bodies, uncut (up to MAX_SCAN): it is
    redacted before it is cut to MAX_MESSAGE (`error_for`), so a key cannot straddle the cut."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:MAX_SCAN] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "errors", "message", "detail"):
            found = _text(body.get(key))
            if found:
                return found[:MAX_SCAN]
    return (_text(body) or str(body))[:MAX_SCAN]


def redact(text: str, key: SecretStr | None) -> str:
    """`text` without the client's key, nor any run of 8 or more of its characters, in it
    (some providers echo what they were sent)."""
    return redaction.redact(text, key.get_secret_value() if key is not None else "")


def error_for(
    title: str,
    response: httpx.Response,
    *,
    key: SecretStr | None = None,
    note: str = "",
    model: str | None = None,
    known: Sequence[str] = (),
) -> GatewayError:
    """The gateway's error for a provider's error answer: the provider's message (and `note`,
    e.g. a trace id), the status that fits, and a 429's retry headers. With the `model` asked
    for, an answer saying it does not exist is a 404 `model_not_found` naming the closest of
    the `known` ids (`imagegw.providers.catalogue`)."""
    secret = key.get_secret_value() if key is not None else ""
    message = redaction.cut(f"{title}: {message_of(response)}{note}", MAX_MESSAGE, secret)
    status = response.status_code
    if model is not None and says_no_such_model(status, message):
        return with_suggestions(message, model, known)
    if status == 429:
        kept = {
            name: value
            for name, value in response.headers.items()
            if name in RETRY_HEADERS or "ratelimit" in name
        }
        return RateLimitError(message, code="rate_limit_exceeded", headers=kept)
    if status == 404:
        return NotFoundError(message, param="model", code="model_not_found")
    if status >= 500:
        return ProviderError(message, code="provider_unavailable")
    return for_status(status)(message, code="provider_error")


#: transport failures that happen before a request is on the wire (refused, DNS, connect
#: timeout, no free connection): the provider cannot have started anything
NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def unreachable(
    title: str, exc: httpx.TransportError, settings: Settings, *, waited: float | None = None
) -> GatewayError:
    """The gateway's error for a call that got no answer.

    Only a failure before the request was sent is a retryable `ProviderUnreachableError`; once
    it was sent (a read timeout, a dropped connection) the provider may have started paid work,
    so the client is told not to retry. `waited`: the read timeout the call had (default
    GENERATION_TIMEOUT, as for calls that wait for the work itself)."""
    name = type(exc).__name__
    if isinstance(exc, NOT_SENT):
        return ProviderUnreachableError(
            f"{title} could not be reached ({name}); nothing was sent, so trying again is safe.",
            code="provider_unreachable",
        )
    if isinstance(exc, httpx.ReadTimeout):
        seconds = settings.generation_timeout if waited is None else waited
        return DeadlineExceededError(
            f"{title} did not answer within {seconds:g} s; the request may have started.",
            code="deadline_exceeded",
        )
    return ProviderError(
        f"{title} dropped the connection before answering ({name}); the request may have started.",
        code="provider_disconnected",
    )
