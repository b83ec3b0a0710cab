"""The HTTP client for the providers' APIs, set up in one place for every driver.

The API function keeps one for its life (`Gateway.client`); the job task functions keep one per
Lambda instance (`imagegw.runners.stepfunctions.steps`), so a warm instance reuses its
connections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from imagegw.infra.config import Settings
from imagegw.infra.transport import ProviderTransport

#: provider requests in flight at once (more wait for a connection). The pool's work per request
#: does not grow with it (`imagegw.infra.transport`); one connection serves a request for
#: milliseconds, so a few dozen serve hundreds of streams.
MAX_PROVIDER_CONNECTIONS = 100

Hook = Callable[..., Awaitable[Any]]


def provider_client(
    settings: Settings, *, event_hooks: Mapping[str, Sequence[Hook]] | None = None
) -> httpx.AsyncClient:
    """A client for the owner's provider base URLs: explicit timeouts, a pool whose work does
    not grow with its size, no redirects (a provider that redirects is not followed anywhere).
    Connections that could not be made are tried once more: nothing was sent, so a submit
    cannot start a task twice (`imagegw.infra.transport`)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.provider_timeout, connect=10.0),
        transport=ProviderTransport(max_connections=MAX_PROVIDER_CONNECTIONS, retries=1),
        follow_redirects=False,
        event_hooks={name: list(hooks) for name, hooks in (event_hooks or {}).items()},
    )
