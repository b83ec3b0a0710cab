"""The gateway's shared state: settings, the HTTP client, the image store and providers.

Everything is created on first use, so building the app does no I/O, and tests inject fakes.
Three HTTP clients, never mixed: `client` calls the providers' APIs (the owner's base URLs);
`fetcher` downloads URLs clients send and `result_fetcher` the result images providers link to,
both through the SSRF guard (`imagegw.infra.fetcher`), each with its own connection pool.
"""

from __future__ import annotations

import httpx

from imagegw.access.gate import Access
from imagegw.access.shared_estimates import estimates_for
from imagegw.core.estimates import Estimates
from imagegw.infra.clients import provider_client
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.storage import ImageStore
from imagegw.providers import Provider, lookup, priors
from imagegw.runners.stepfunctions.service import Jobs


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
        #: client-supplied URLs: never trusted
        self.fetcher = Fetcher(settings)
        #: result images: the configured providers' hosts are trusted, any other is checked
        self.result_fetcher = Fetcher.for_results(settings)
        #: learned run times for predictive polling: shared through the access table where
        #: there is one, per instance otherwise (`imagegw.access.shared_estimates`)
        self.estimates: Estimates = estimates_for(settings, priors())
        #: durable jobs (docs/jobs.md "Async jobs"); `jobs.enabled` is false without a state machine
        self.jobs = Jobs(settings, self.store)
        #: gateway keys, server-held tokens and quotas (README "Sharing a deployment")
        self.access = Access(settings)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = provider_client(
                self.settings, event_hooks={"request": [self._first_provider_call]}
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
            cls = lookup(key, self.settings)
            self._providers[key] = cls(self.settings, self.client, self.fetcher)
        return self._providers[key]

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        await self.result_fetcher.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._providers.clear()
