"""Calls to a provider's HTTP API, how their answers are read, and their failures.

Every provider answer is read by `send` (or `read_answer` for an answer already open): no further
than a size limit while it streams in (`MAX_ANSWER_BYTES` for answers that carry task ids,
statuses, links and errors; MAX_RESULT_BYTES for those that may carry images inline), and the
whole call (connect, send, the whole body) within one deadline, so neither a huge answer nor one
trickled a byte at a time can hold memory or a request for longer than that (issue 24, class 2).
httpx's own timeouts still bound each phase (connect, each read) within it.

Calls that wait for the work itself (`work_timeout`, deadline GENERATION_TIMEOUT) serve the
providers that answer synchronously (SiliconFlow, OpenAI-compatible image servers) and chat
pass-through. Providers disagree on error bodies: a bare JSON string (`"Invalid token"`),
`{"code":..,"message":..,"data":..}`, OpenAI's `{"error":{"message":..}}`, ModelScope's
`{"errors":{"message":..}}`, FastAPI's `{"detail":..}`, or plain text. `error_for()` reads any
of them into the gateway's error for the status, with the provider's own message; the client's
key never appears in it.
"""

from __future__ import annotations

import asyncio
import copy
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
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
from imagegw.infra.lazy import httpx
from imagegw.providers.catalogue import says_no_such_model, with_suggestions

if TYPE_CHECKING:
    from imagegw.infra.clients import BareTemplate, JsonTemplate
    from imagegw.infra.http11 import KeptRequest
    from imagegw.infra.transport import PooledTransport, Whole

#: the longest provider message passed on
MAX_MESSAGE: Final = 500
MAX_SCAN: Final = redaction.MAX_SCAN
#: headers of a 429 worth passing on besides any `*ratelimit*` one
RETRY_HEADERS: Final = ("retry-after", "retry-after-ms")
#: the most the gateway reads of a provider answer that carries no image (a task id, a status,
#: links, an error): real ones are a few kilobytes
MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
#: headers of an answer that describe its encoded body, not the body the gateway read
_BODY_HEADERS: Final = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def image_answer_limit(settings: Settings) -> int:
    """The most the gateway reads of an answer that may hold images inline (base64)."""
    return max(MAX_ANSWER_BYTES, settings.max_result_bytes)


def _size(limit: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= size:
            return f"{limit / size:g} {unit}"
    return f"{limit} bytes"


def too_large(title: str, limit: int) -> ProviderError:
    return ProviderError(
        f"{title} answered more than {_size(limit)}, the most the gateway reads of an answer; "
        "the answer was abandoned.",
        code="provider_answer_too_large",
    )


async def read_answer(
    answer: httpx.Response,
    *,
    title: str,
    limit: int,
    into: Callable[[bytes], None] | None = None,
) -> httpx.Response:
    """`answer` (opened with `stream=True`) read whole, no further than `limit` bytes of its
    decoded body (`too_large` past it), as a closed response holding its body; with `into`, a
    200's body is given to it a chunk at a time as it is read, and not kept (the response's
    content is empty: `imagegw.infra.spans.Apart` reads it). The caller closes `answer`."""
    declared = answer.headers.get("content-length", "")
    encoded = answer.headers.get("content-encoding", "identity").strip().lower()
    if (
        declared.isascii()
        and declared.isdigit()
        and int(declared) > limit
        and encoded
        in (
            "",
            "identity",
        )
    ):
        raise too_large(title, limit)
    chunks: list[bytes] = []
    size = 0
    keep = chunks.append if into is None or answer.status_code != 200 else into
    parts = answer.aiter_bytes()
    try:
        async for chunk in parts:
            size += len(chunk)
            if size > limit:
                raise too_large(title, limit)
            keep(chunk)
    finally:  # closed here when the limit stops it, not left for the event loop to finalize
        close = getattr(parts, "aclose", None)
        if close is not None:
            await close()
    headers = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _BODY_HEADERS]
    extensions: Mapping[str, Any] = answer.extensions
    return httpx.Response(
        answer.status_code,
        headers=headers,
        content=b"".join(chunks),
        request=answer.request,
        extensions={k: v for k, v in extensions.items() if k in ("http_version", "reason_phrase")},
    )


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    title: str,
    deadline: float,
    limit: int = MAX_ANSWER_BYTES,
    into: Callable[[bytes], None] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """`client.request(method, url, **kwargs)`, its answer read whole by `read_answer`, all of
    it (its turn, connect, send, the whole body) within `deadline` seconds: past it,
    `AnswerTimeout`. httpx's errors are raised as they are, for the caller to word. The
    request is built once it has its turn (`imagegw.infra.clients.turn`): a burst queues
    before anything is built. `into`: a 200's body given to it a chunk at a time as it is
    read, not kept (`read_answer`)."""
    answer = await exchange(
        client, method, url, title=title, deadline=deadline, limit=limit, into=into, **kwargs
    )
    return as_response(answer)


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    title: str,
    deadline: float,
    limit: int = MAX_ANSWER_BYTES,
    into: Callable[[bytes], None] | None = None,
    **kwargs: Any,
) -> Whole | httpx.Response:
    """`send`, its answer given as it came when it was read whole straight from the pool
    (`Whole`: its status and body; `as_response` for the rest), else as httpx's response. A
    request of the provider client whose body is in memory (a JSON submission) goes straight
    to its pool (`PooledTransport.read`: it spends nothing on the client's layers), after the
    client's request hooks (which must not change it, as for a poll: it goes out with its
    template's head, `JsonTemplate.framed`); it is built from the client's template of such
    requests (`imagegw.infra.clients.build_request`)."""
    from imagegw.infra.clients import AnswerTimeout, json_request, turn  # loaded with the client

    try:
        async with turn(client, deadline) as waited:
            request, template = json_request(client, method, url, **kwargs)
            return await _exchange(
                client,
                request,
                None,
                title=title,
                deadline=deadline - waited,
                limit=limit,
                said=deadline,
                template=template,
                into=into,
            )
    except TimeoutError:  # no turn within the deadline: nothing was built nor sent
        request = client.build_request(method, url, **kwargs)
        raise AnswerTimeout(f"no whole answer within {deadline:g} s", request=request) from None


class Repeated:
    """A request sent again and again (a task's poll), made once: httpx's `request`, and, when
    it goes straight to the client's pool (`imagegw.infra.clients.direct_transport`), the
    pool's own form of it, its head in bytes (`PooledTransport.keep`). Merging the client's
    URL, headers and cookies into a request, then making httpcore's request and its head of it,
    was most of a poll's own CPU. The client's request hooks still run at each send (they must
    not change the request: what is sent was made once)."""

    __slots__ = ("client", "direct", "kept", "request", "untimed")

    def __init__(
        self,
        client: httpx.AsyncClient,
        request: httpx.Request,
        template: BareTemplate | None = None,
    ) -> None:
        from imagegw.infra.clients import direct_transport  # loaded with the client

        self.client, self.request = client, request
        direct = direct_transport(client, request)
        self.direct: PooledTransport | None = direct
        self.kept: KeptRequest | None = None
        self.untimed: KeptRequest | None = None
        if direct is not None:
            self.kept = direct.keep(request) if template is None else template.keep(direct, request)

    def kept_within(self, deadline: float) -> KeptRequest | None:
        """`kept`, for a send whose whole answer is due within `deadline` seconds (`_exchange`
        sets that timer before anything is sent): without a timer of its own at each read when
        its read timeout is no shorter (the whole answer's, set before the first read, rings
        first: a poll's timeouts are both PROVIDER_TIMEOUT), made once."""
        kept = self.kept
        if kept is None:
            return None
        timeouts = kept.extensions.get("timeout", {})
        read = timeouts.get("read")
        if read is None or deadline > read:
            return kept
        if self.untimed is None:
            untimed = copy.copy(kept)
            untimed.extensions = {**kept.extensions, "timeout": {**timeouts, "read": None}}
            self.untimed = untimed
        return self.untimed


def repeated_get(
    client: httpx.AsyncClient, url: str, *, headers: Mapping[str, str], timeout: Any
) -> Repeated:
    """The `Repeated` GET of `url` (`client.build_request("GET", url, headers=headers,
    timeout=timeout)`), made from the client's template of such requests of its origin,
    headers and timeout (`imagegw.infra.clients.bare_request`): a task's status request is
    made at its first poll, and a burst of tasks makes each one from the same template."""
    from imagegw.infra.clients import bare_request  # loaded with the client

    request, template = bare_request(client, "GET", url, headers=headers, timeout=timeout)
    return Repeated(client, request, template)


#: tasks whose status request is kept for their next poll (`KeptPolls`)
POLLS_KEPT: Final = 4096


class KeptPolls:
    """A provider's status requests (`Repeated`), one per task it polls and key it polls
    with: made at the task's first poll, re-sent by every poll of it, dropped when the task
    ended (`drop`). The POLLS_KEPT most recently made are kept (a task whose end was never
    seen: the reader left), the oldest dropped."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[str, str], Repeated] = OrderedDict()

    def get(self, task_id: str, key: SecretStr) -> Repeated | None:
        return self._kept.get((task_id, key.get_secret_value()))

    def keep(self, task_id: str, key: SecretStr, repeated: Repeated) -> Repeated:
        kept = self._kept
        kept[(task_id, key.get_secret_value())] = repeated
        if len(kept) > POLLS_KEPT:
            kept.popitem(last=False)
        return repeated

    def drop(self, task_id: str, key: SecretStr) -> None:
        """The task ended: its status request is not sent again."""
        self._kept.pop((task_id, key.get_secret_value()), None)


async def resend(
    repeated: Repeated, *, title: str, deadline: float, limit: int = MAX_ANSWER_BYTES
) -> Whole | httpx.Response:
    """`exchange` of a `Repeated` request. It takes no turn (`imagegw.infra.clients.turn`):
    that queue is for bursts of submissions."""
    return await _exchange(
        repeated.client, repeated.request, repeated, title=title, deadline=deadline, limit=limit
    )


def as_response(answer: Whole | httpx.Response) -> httpx.Response:
    """An answer of `exchange` or `resend` as httpx's response (an error to read: `error_for`)."""
    return answer if isinstance(answer, httpx.Response) else answer.response()


async def _exchange(
    client: httpx.AsyncClient,
    request: httpx.Request,
    repeated: Repeated | None,
    *,
    title: str,
    deadline: float,
    limit: int,
    said: float | None = None,
    template: JsonTemplate | None = None,
    into: Callable[[bytes], None] | None = None,
) -> Whole | httpx.Response:
    """`request` sent through the client, or straight to its pool (as `repeated` says when
    given, else as `direct_transport` finds), and read whole (module docstring). `template`:
    the one `request` was made from, whose head it is sent with (`JsonTemplate.framed`).
    `into`: a 200's body given to it as it is read (`read_answer`)."""
    from imagegw.infra.clients import AnswerTimeout, direct_transport  # loaded with the client

    direct = direct_transport(client, request) if repeated is None else repeated.direct
    try:
        # asyncio's own timeout: anyio's cancel scope cost a tenth of a poll's CPU
        async with asyncio.timeout(deadline):
            if direct is not None:
                for hook in client.event_hooks["request"]:
                    await hook(request)
                if repeated is not None:
                    kept = repeated.kept_within(deadline)
                else:
                    kept = None if template is None else template.framed(direct, request)
                read = await direct.read(
                    request,
                    limit=limit,
                    too_large=lambda: too_large(title, limit),
                    kept=kept,
                    into=into,
                )
                if not isinstance(read, httpx.Response) or read.is_closed:
                    return read  # read whole
                answer = read  # encoded: read below, through httpx's decoders
            else:
                answer = await client.send(request, stream=True)
            try:
                return await read_answer(answer, title=title, limit=limit, into=into)
            finally:
                await answer.aclose()
    except TimeoutError:
        whole = deadline if said is None else said
        raise AnswerTimeout(f"no whole answer within {whole:g} s", request=request) from None


@asynccontextmanager
async def opened(
    client: httpx.AsyncClient, method: str, url: str, *, deadline: float, **kwargs: Any
) -> AsyncIterator[httpx.Response]:
    """A streamed call's answer, open with its body unread (read it with `read_answer`, or
    line by line with `lines`): its head within `deadline` seconds, else `AnswerTimeout`."""
    from imagegw.infra.clients import AnswerTimeout  # loaded with the client

    request = client.build_request(method, url, **kwargs)
    try:
        with anyio.fail_after(deadline):
            answer = await client.send(request, stream=True)
    except TimeoutError:
        raise AnswerTimeout(f"no answer within {deadline:g} s", request=request) from None
    try:
        yield answer
    finally:
        await answer.aclose()


async def lines(answer: httpx.Response, *, title: str, limit: int) -> AsyncIterator[str]:
    """The lines of an open answer (an event stream), no further than `limit` bytes in all
    (`too_large` past it)."""
    seen = 0
    async for line in answer.aiter_lines():
        seen += len(line) + 1
        if seen > limit:
            raise too_large(title, limit)
        yield line


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


def unreachable(
    title: str, exc: httpx.TransportError, settings: Settings, *, waited: float | None = None
) -> GatewayError:
    """The gateway's error for a call that got no answer.

    Only a failure before the request was sent is a retryable `ProviderUnreachableError`; once
    it was sent (a read timeout, a dropped connection) the provider may have started paid work,
    so the client is told not to retry. `waited`: the read timeout the call had (default
    GENERATION_TIMEOUT, as for calls that wait for the work itself)."""
    name = type(exc).__name__
    # failures before the request is on the wire (refused, DNS, connect timeout, no free
    # connection): the provider cannot have started anything
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
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
