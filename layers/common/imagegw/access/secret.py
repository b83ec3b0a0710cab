"""The access secret (Secrets Manager, `ACCESS_SECRET`): the pepper of the key hashes and every
provider's token pool, as JSON `{"pepper": "...", "tokens": {"modelscope": ["ms-...", ...]}}`.

The functions read it through Powertools Parameters, cached for SECRET_CACHE_TTL seconds (at most
5 minutes: a changed or removed token takes effect within that). A pool found empty is read
again past the cache (`read(fresh=True)`, at most every REFRESH_GAP seconds per instance), so a
token the owner adds after a "no token" answer serves the requests from REFRESH_GAP seconds on.
They may only read it (IAM); the owner writes it (`python -m imagegw.frontends.admin`). Every
token read is registered with `redaction.protect` before use, so no log line or error can carry it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio.to_thread

from imagegw.access.gatekeys import token_id
from imagegw.errors import ServiceUnavailableError
from imagegw.infra.log import logger


@dataclass(frozen=True)
class Pools:
    """The secret's content."""

    pepper: str
    tokens: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> Pools:
        data = json.loads(value) if isinstance(value, str | bytes) else value
        if not isinstance(data, dict):
            raise ValueError("the access secret is not a JSON object")
        tokens = data.get("tokens") or {}
        pools = {
            str(name): tuple(str(t) for t in pool if str(t))
            for name, pool in tokens.items()
            if isinstance(pool, list)
        }
        return cls(pepper=str(data.get("pepper") or ""), tokens=pools)

    def dump(self) -> str:
        return json.dumps(
            {"pepper": self.pepper, "tokens": {k: list(v) for k, v in self.tokens.items()}}
        )

    def pool(self, provider: str) -> tuple[str, ...]:
        return self.tokens.get(provider, ())

    def by_id(self, provider: str, wanted: str) -> str | None:
        """The token of `provider`'s pool with the reference `wanted` (`token_id`)."""
        return next((t for t in self.pool(provider) if token_id(t) == wanted), None)


#: the shortest time between two reads past the cache (an empty pool asked for by every
#: request must not become one Secrets Manager call each)
REFRESH_GAP: Final = 2.0

_SHARED: dict[tuple[str, int, str], SecretSource] = {}


class SecretSource:
    """Reads the access secret through Powertools Parameters (its cache: `max_age`)."""

    def __init__(
        self,
        name: str,
        max_age: int,
        region: str,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.clock = clock
        self.max_age = max_age
        self.region = region
        self._client = client
        self._provider: Any = None
        self._fetched = -math.inf  # when `read(fresh=True)` last went past the cache

    @classmethod
    def shared(cls, name: str, max_age: int, region: str) -> SecretSource:
        """The process's source for this secret: one cache per Lambda instance, whichever
        request or job step asks."""
        key = (name, max_age, region)
        if key not in _SHARED:
            _SHARED[key] = cls(name, max_age, region)
        return _SHARED[key]

    def _get(self, fresh: bool) -> Any:
        from aws_lambda_powertools.utilities import parameters

        if self._provider is None:
            if self._client is None:
                import boto3

                self._client = boto3.client("secretsmanager", region_name=self.region)
            self._provider = parameters.SecretsProvider(boto3_client=self._client)
        return self._provider.get(self.name, max_age=self.max_age, force_fetch=fresh)

    def read(self, fresh: bool = False) -> Pools:
        """The secret (from the cache when younger than `max_age`; `fresh`: from Secrets
        Manager, unless this instance read it so within REFRESH_GAP seconds)."""
        now = self.clock()
        if fresh and now - self._fetched < REFRESH_GAP:
            fresh = False
        if fresh:
            self._fetched = now
        try:
            return Pools.parse(self._get(fresh))
        except Exception as exc:  # its message may quote the value: only the type is told
            logger.warning("access secret unreadable", extra={"error": type(exc).__name__})
            raise ServiceUnavailableError(
                "The gateway's access secret cannot be read right now; try again.",
                code="access_unavailable",
            ) from None

    async def aread(self, fresh: bool = False) -> Pools:
        return await anyio.to_thread.run_sync(self.read, fresh)
