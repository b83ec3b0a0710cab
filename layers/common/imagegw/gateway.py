"""The gateway's shared state: settings, the HTTP client, the image store and providers.

Everything is created on first use, so building the app does no I/O, and tests inject fakes.
"""

from __future__ import annotations

import httpx

from imagegw.config import Settings
from imagegw.errors import NotFoundError
from imagegw.jobs.service import Jobs
from imagegw.providers import PROVIDERS, Provider
from imagegw.storage import ImageStore
from imagegw.transport import ProviderTransport

#: provider requests in flight at once (more wait for a connection). The pool's work per request
#: does not grow with it (`imagegw.transport`); one connection serves a request for
#: milliseconds, so a few dozen serve hundreds of streams.
MAX_PROVIDER_CONNECTIONS = 100


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        http_client: httpx.AsyncClient | None = None,
        store: ImageStore | None = None,
    ) -> None:
        self.settings = settings
        self._client = http_client
        self.store = store or ImageStore(settings)
        self._providers: dict[str, Provider] = {}
        #: durable jobs (README "Async jobs"); `jobs.enabled` is false without a state machine
        self.jobs = Jobs(settings, self.store)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.provider_timeout, connect=10.0),
                # connections that could not be made are tried once more: nothing was sent, so
                # a submit cannot start a task twice (imagegw.transport)
                transport=ProviderTransport(max_connections=MAX_PROVIDER_CONNECTIONS, retries=1),
                follow_redirects=False,
                event_hooks={"request": [self._first_provider_call]},
            )
        return self._client

    async def _first_provider_call(self, request: httpx.Request) -> None:
        # the S3 client is built in the background while the provider works (README "Cold
        # start"); after the first call this returns at once
        self.store.warm()

    def provider(self, name: str | None) -> Provider:
        """The provider a route names, or the default one."""
        key = (name or self.settings.default_provider).lower()
        if key not in self._providers:
            cls = PROVIDERS.get(key)
            if cls is None:
                known = ", ".join(sorted(PROVIDERS))
                raise NotFoundError(
                    f"Unknown provider '{key}'. Known providers: {known}.",
                    code="unknown_provider",
                )
            self._providers[key] = cls(self.settings, self.client)
        return self._providers[key]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._providers.clear()
