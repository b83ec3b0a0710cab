"""The server-held token a request generates with, and failing over to the next one.

A request that carries a gateway key gets a `Lease` on its provider's pool (`gate.Access`);
`use(lease)` makes it the current one for everything the request runs (a context variable, as
`redaction.protect`), and the runners (`imagegw.core.advance.start_leased`) ask it, when every
call of a submission was refused, whether to try again with the next token (`fail_over`). Only
refusals where nothing started call for it: 401/403, a quota error, a rate limit; each sets
aside what it is about (`gate.aside_until`): the token for one model, or the whole token.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Protocol

from pydantic import SecretStr

from imagegw.errors import AuthenticationError, PermissionDeniedError, RateLimitError


class Lease(Protocol):
    """A token of one provider's pool, and the pool behind it."""

    provider: str

    @property
    def token(self) -> SecretStr: ...

    @property
    def ref(self) -> str:
        """The token's reference (`pool:<provider>:<token id>`), for durable jobs."""
        ...

    async def prefer(self, model: str) -> SecretStr | None:
        """Before the first call for `model`: another token when the current one is set aside
        for that model only (a per-model quota); None to keep it."""
        ...

    async def fail_over(
        self, answers: Sequence[object], model: str | None = None
    ) -> SecretStr | None:
        """The next token to send the same calls (for `model`) with, when `answers` (one per
        call, a refusal as its exception) set the current one aside, for `model` only or for
        every model as the refusal is about; None when they do not. Raises a 429 naming the
        earliest return when every token is set aside."""
        ...


_current: ContextVar[Lease | None] = ContextVar("imagegw_lease", default=None)


def use(lease: Lease | None) -> None:
    """The lease of the current request (None: the client's own token)."""
    _current.set(lease)


def current() -> Lease | None:
    return _current.get()


def set_aside_worthy(answers: Sequence[object]) -> list[BaseException] | None:
    """The refusals when every call was refused in a way that sets the token aside (so nothing
    started); None otherwise."""
    if not answers or not all(
        isinstance(a, AuthenticationError | PermissionDeniedError | RateLimitError) for a in answers
    ):
        return None
    return [a for a in answers if isinstance(a, BaseException)]
