"""The one place a runner's dependencies are built: settings, the HTTP clients, the image
store, the key sealer, gateway keys and quotas (`Access`), the learned run times, the providers,
and the time.

Every runner works with a `Gateway`: the API function's app makes one for its life (the
in-process runner), and the Step Functions task functions one per Lambda instance
(`imagegw.runners.stepfunctions.steps.run_step`). Everything is created on first use, its module
imported then too (the API function is ready before httpx or the access table's code is
loaded: docs/architecture.md "Cold start and memory"), so building it does no I/O, and tests
inject fakes.

Three HTTP clients, never mixed: `client` calls the providers' APIs (the owner's base URLs);
`fetcher` downloads URLs clients send and `result_fetcher` the result images providers link to,
both through the SSRF guard (`imagegw.infra.fetcher`), each with its own connection pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from imagegw.infra.config import STORING_LINKS, Settings
from imagegw.infra.sealer import KeySealer
from imagegw.providers import Provider, lookup, priors

if TYPE_CHECKING:
    import httpx

    from imagegw.access.gate import Access
    from imagegw.core.estimates import Estimates
    from imagegw.infra.fetcher import Fetcher
    from imagegw.infra.storage import ImageStore
    from imagegw.runners.stepfunctions.service import Jobs


@dataclass(frozen=True)
class Clock:
    """A runner's time: `now` (epoch seconds: a durable job's steps run on different
    instances) and `sleep`; tests pass a fake clock that moves when slept on."""

    now: Callable[[], float] = field(default=time.time)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)


def learned_times(settings: Settings) -> Estimates:
    """The run times learned for predictive polling: shared through the access table where
    there is one, per instance otherwise (`imagegw.access.shared_estimates`)."""
    from imagegw.access.shared_estimates import estimates_for

    return estimates_for(settings, priors())


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        http_client: httpx.AsyncClient | None = None,
        store: ImageStore | None = None,
        sealer: KeySealer | None = None,
        access: Access | None = None,
        providers: Mapping[str, Provider] | None = None,
        estimates: Estimates | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._client = http_client
        if store is not None:
            self.store = store
        #: providers by name, made on first use (`provider`); tests may give their own
        self._providers: dict[str, Provider] = dict(providers or {})
        if estimates is not None:
            self.estimates = estimates
        #: seals a client's provider key into a durable job's input, and opens it in its steps
        self.sealer = sealer or KeySealer(settings.job_key_id, settings.aws_region)
        if access is not None:
            self.access = access
        self.clock = clock or Clock()
        self._jobs: Jobs | None = None

    @property
    def jobs(self) -> Jobs:
        """Durable jobs, for the API (docs/jobs.md "Async jobs"); `jobs.enabled` is false
        without a state machine. Made on first use: the job steps never need it."""
        if self._jobs is None:
            from imagegw.runners.stepfunctions.service import Jobs

            self._jobs = Jobs(self.settings, self.store, sealer=self.sealer)
        return self._jobs

    @jobs.setter
    def jobs(self, jobs: Jobs) -> None:
        self._jobs = jobs

    @cached_property
    def store(self) -> ImageStore:
        """The bucket's images: inputs staged, results stored and linked. Made on first use
        (`GET /v1/models` has none)."""
        from imagegw.infra.storage import ImageStore

        return ImageStore(self.settings)

    @cached_property
    def fetcher(self) -> Fetcher:
        """Downloads client-supplied URLs: never trusted."""
        from imagegw.infra.fetcher import Fetcher

        return Fetcher(self.settings)

    @cached_property
    def result_fetcher(self) -> Fetcher:
        """Downloads result images: the configured providers' hosts are trusted, any other is
        checked."""
        from imagegw.infra.fetcher import Fetcher

        return Fetcher.for_results(self.settings)

    @cached_property
    def estimates(self) -> Estimates:
        """Learned run times for predictive polling: shared through the access table where
        there is one, per instance otherwise (`imagegw.access.shared_estimates`)."""
        return learned_times(self.settings)

    @cached_property
    def access(self) -> Access:
        """Gateway keys, server-held tokens and quotas (README "Sharing a deployment")."""
        from imagegw.access.gate import Access

        return Access(self.settings)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            from imagegw.infra.clients import provider_client

            self._client = provider_client(
                self.settings, event_hooks={"request": [self._first_provider_call]}
            )
        return self._client

    async def _first_provider_call(self, request: httpx.Request) -> None:
        # the S3 client is built in the background while the provider works, where results are
        # copied into the bucket (docs/architecture.md "Cold start and memory"); after the first
        # call this returns at once. With provider links a request seldom needs the bucket (an
        # input image, staged before any provider call; a result that came as data): its first
        # call builds the client then, and a chat of links passed on builds none.
        if self.settings.image_links in STORING_LINKS:
            self.store.warm()

    def provider(self, name: str | None) -> Provider:
        """The provider a route or a job names, or the default one."""
        key = (name or self.settings.default_provider).lower()
        if key not in self._providers:
            cls = lookup(key, self.settings)
            self._providers[key] = cls(self.settings, self.client, self.fetcher)
        return self._providers[key]

    def listing(self, name: str | None) -> Provider | type[Provider]:
        """What lists the models of the provider a route names (or the default one): its class
        when the catalogue is the class's, so `GET /v1/models` builds no HTTP client; the
        provider itself when already made, or when its catalogue comes from settings."""
        key = (name or self.settings.default_provider).lower()
        if key in self._providers:
            return self._providers[key]
        cls = lookup(key, self.settings)
        return cls if hasattr(cls, "catalog") else self.provider(key)

    async def aclose(self) -> None:
        learned: Estimates | None = self.__dict__.get("estimates")  # (`cached_property`)
        if learned is not None:  # samples waiting for the access table: written now, not lost
            await learned.flush()
        for made in ("fetcher", "result_fetcher", "store"):  # only those made (`cached_property`)
            done: Fetcher | ImageStore | None = self.__dict__.get(made)
            if done is not None:
                await done.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._providers.clear()
