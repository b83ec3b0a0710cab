"""Advance: one provider answer (to a `start` or a `check`) -> what it means for the task.

`start_all` starts a job's calls for every runner. The rest is pure: an answer becomes an
`Outcome` (started, still running, made images, or failed with a typed `GatewayError`), which
the runners apply to the job's task book (`imagegw.core.lifecycle.Book`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from pydantic import SecretStr

from imagegw.core.verdicts import failed_task
from imagegw.errors import GatewayError, ProviderError
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    Provider,
    Running,
    Started,
    TaskStatus,
)


class FailOver(Protocol):
    """What `start_leased` needs of a server-held token's lease (`imagegw.access.lease.Lease`
    is one): its provider, and the next token when a submission set the current one aside."""

    provider: str

    async def prefer(self, model: str) -> SecretStr | None:
        """Before the first call for `model`: another token when the current one is set aside
        for that model only (a per-model quota); None to keep it."""
        ...

    async def fail_over(
        self, answers: Sequence[object], model: str | None = None
    ) -> SecretStr | None: ...


@dataclass(frozen=True)
class Submitted:
    """The provider took the work: a task to poll."""

    task_id: str
    state: str = "SUBMITTED"


@dataclass(frozen=True)
class Working:
    """Still going; `state` is the provider's name for where it is (PENDING, RUNNING, ...)."""

    state: str
    #: the provider's own progress words ("position 3 in the queue"), or none
    detail: str = ""


#: how a result image is held: a provider URL or data URI, or a runner's own ref to it
Image = TypeVar("Image")


@dataclass(frozen=True)
class Made(Generic[Image]):
    """The task ended with images (provider URLs or data URIs, as `advance` gives them)."""

    images: tuple[Image, ...]
    state: str = "SUCCEED"


@dataclass(frozen=True)
class Broke:
    """The task ended without images, for `error`."""

    error: GatewayError
    state: str = "FAILED"


Outcome = Submitted | Working | Made[str] | Broke


async def start_all(
    provider: Provider, parts: Sequence[GenerationRequest]
) -> list[Started | Finished | BaseException]:
    """Start every part of a job at once (`Provider.split`); each call's answer or failure, in
    the order of the parts (for `advance`). A job of one call (most) awaits it here: no task
    of its own, as `asyncio.gather` would make it."""
    if len(parts) == 1:
        try:
            return [await provider.start(parts[0])]
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this start is cancelled: not an answer
                raise
            return [exc]  # the call's own cancellation, an answer as gather gives it
        except Exception as exc:
            return [exc]
    return await asyncio.gather(*(provider.start(part) for part in parts), return_exceptions=True)


async def start_leased(
    provider: Provider, parts: Sequence[GenerationRequest], leased: FailOver | None
) -> tuple[list[Started | Finished | BaseException], list[GenerationRequest]]:
    """`start_all`; with a server-held token (a lease on its provider's pool), a submission
    refused whole (401/403, a quota error, a rate limit: nothing started) is set aside and sent
    again with the pool's next token (`Lease.fail_over`), never when anything started. The
    answers, and the parts as last sent (with the token that was used). Raises the pool's 429
    when every token is set aside. Both drivers (the poll loop, the Submit step) start so."""
    sent = list(parts)
    model = parts[0].model if parts else None
    if leased is not None and leased.provider == provider.name and model:
        token = await leased.prefer(model)  # the current token set aside for this model
        if token is not None:
            sent = [replace(part, api_key=token) for part in sent]
    while True:
        outcomes = await start_all(provider, sent)
        if leased is None or leased.provider != provider.name:
            return outcomes, sent
        token = await leased.fail_over(outcomes, model)
        if token is None:
            return outcomes, sent
        sent = [replace(part, api_key=token) for part in sent]


def task_failed(title: str, task_id: str | None, reason: str) -> GatewayError:
    """The error of a task the provider reports failed (its reason, redacted when rendered):
    a refusal of the request's content or parameters a 400, else a 502 (`verdicts`)."""
    return failed_task(title, task_id, reason)


def advance(
    title: str, task_id: str | None, answer: Started | TaskStatus | BaseException
) -> Outcome:
    """The outcome of `answer` for the task `task_id` (None before it started). Re-raises an
    exception that is not the gateway's (a bug: never swallowed)."""
    if isinstance(answer, GatewayError):
        return Broke(answer)
    if isinstance(answer, BaseException):
        raise answer
    if isinstance(answer, Started):
        return Submitted(answer.task_id)
    if isinstance(answer, Running):
        return Working(answer.state, answer.detail)
    if isinstance(answer, Finished):
        if not answer.images:
            empty = ProviderError(f"{title} finished without an image.", code="provider_error")
            return Broke(empty)
        return Made(answer.images, answer.state)
    assert isinstance(answer, Failed)
    return Broke(task_failed(title, task_id, answer.reason), answer.state)
