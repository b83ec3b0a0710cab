"""Who a request is, by its bearer token and the access mode (ACCESS_MODE):

- `open`: every bearer is the client's own provider token, passed through;
- `mixed`: a gateway key (`gk-...`) generates with the server-held tokens, any other bearer is
  passed through;
- in every mode a bearer starting `gk-` that is not a whole gateway key (or any `gk-` bearer in
  `open` mode) is a 401 `invalid_api_key`: no provider token starts so, and it is never passed
  on;
- `keys`: only gateway keys; anything else is a 401 `invalid_api_key`. Routes ask before they
  read the body, so a refused request writes nothing, starts nothing and calls no provider.

A key's record is looked up by its keyed hash and cached for KEY_CACHE_TTL seconds (a revoked
key is refused within that); the secret is cached by Powertools Parameters (SECRET_CACHE_TTL).
Set-aside tokens are read from the table (cached a few seconds, this instance's own findings at
once) and written there, so one instance's discovery spares the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import anyio.to_thread
from pydantic import SecretStr

from imagegw.access.gatekeys import PREFIX, key_hash, looks_like_key, token_id
from imagegw.access.lease import set_aside_worthy
from imagegw.access.secret import Pools, SecretSource
from imagegw.access.table import AccessTable, KeyRecord, QuotaFull, next_midnight
from imagegw.errors import (
    AuthenticationError,
    ConfigurationError,
    GatewayError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.providers import PROVIDERS
from imagegw.redaction import protect

#: set aside "until the owner changes it" (a changed token has a new id): ten years
FOREVER: Final = 10 * 365 * 86400
#: a rate limit without Retry-After sets the token aside this long
RATE_PAUSE: Final = 60
#: how long this instance trusts its copy of the table's set-aside records
ASIDE_CACHE: Final = 5.0
#: words of a 429 that mean the day's quota is spent, not a passing rate limit
_QUOTA_WORDS: Final = re.compile(r"quota|daily|per day|today|exhausted|insufficient|额度|余额")
_MAX_CACHED: Final = 4096


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def provider_reset(provider: str, now: float) -> float:
    """The next daily reset of `provider`'s quotas after `now`."""
    known = PROVIDERS.get(provider)
    hour = known.daily_reset_utc_hour if known is not None else 0
    day = int(now) // 86400 * 86400 + hour * 3600
    return day if day > now else day + 86400


def aside_until(provider: str, error: BaseException, now: float) -> tuple[float, str]:
    """Until when a refusal sets its token aside, and why."""
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return now + FOREVER, "refused"
    assert isinstance(error, RateLimitError)
    if _QUOTA_WORDS.search(error.message.lower()):
        return provider_reset(provider, now), "quota"
    retry = error.headers.get("retry-after", "")
    seconds = float(retry) if retry.strip().replace(".", "", 1).isdigit() else RATE_PAUSE
    return now + max(1.0, min(seconds, 3600.0)), "rate"


@dataclass(frozen=True)
class Caller:
    """The request's caller: their bearer token and, for a gateway key, its record."""

    bearer: SecretStr
    record: KeyRecord | None = None

    @property
    def keyed(self) -> bool:
        return self.record is not None

    def check_model(self, model: str) -> None:
        """A 403 when the key may not use `model`."""
        if self.record is not None and self.record.models and model not in self.record.models:
            raise PermissionDeniedError(
                f"This gateway key may not use the model '{model[:100]}'.",
                param="model",
                code="model_not_allowed",
            )


class PoolLease:
    """A token of one provider's pool (`imagegw.access.lease.Lease`)."""

    def __init__(self, access: Access, provider: str, pool: Sequence[str], start: int) -> None:
        self.access = access
        self.provider = provider
        self.pool = list(pool)
        self.index = start
        self.tried: set[int] = set()

    @property
    def token(self) -> SecretStr:
        return SecretStr(self.pool[self.index])

    @property
    def ref(self) -> str:
        return f"pool:{self.provider}:{token_id(self.pool[self.index])}"

    async def fail_over(self, answers: Sequence[object]) -> SecretStr | None:
        refusals = set_aside_worthy(answers)
        if refusals is None:
            return None
        current = token_id(self.pool[self.index])
        until, why = aside_until(self.provider, refusals[0], self.access.clock())
        await self.access.set_aside(self.provider, current, until, why)
        self.tried.add(self.index)
        asides = await self.access.asides(self.provider)
        now = self.access.clock()
        for step in range(1, len(self.pool) + 1):
            index = (self.index + step) % len(self.pool)
            if index not in self.tried and asides.get(token_id(self.pool[index]), 0) <= now:
                self.index = index
                return self.token
        raise self.access.exhausted(self.provider, self.pool, asides)


@dataclass
class Reservation:
    """Images reserved on a key's quota before the provider is called."""

    access: Access
    record: KeyRecord
    model: str
    n: int
    at: float
    settled: bool = False

    async def settle(self, made: int) -> None:
        """Give back what was reserved and not made (all of it when nothing was), and count
        what was made in the month (both at once)."""
        if self.settled:
            return
        self.settled = True
        made = max(0, min(made, self.n))
        table, hash_ = self.access.table, self.record.hash

        async def give_back() -> None:
            await anyio.to_thread.run_sync(
                table.give_back, hash_, self.model, self.n - made, self.at
            )

        async def count() -> None:
            await anyio.to_thread.run_sync(table.count_month, hash_, self.model, made, self.at)

        answers = await asyncio.gather(give_back(), count(), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, Exception):
                logger.warning("usage update failed", extra={"error": type(answer).__name__})


class Access:
    """The access mode and everything gateway keys need; one per gateway (per instance)."""

    def __init__(
        self,
        settings: Settings,
        *,
        table: AccessTable | None = None,
        secret: SecretSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.mode = settings.access_mode
        self._table = table
        self._secret = secret
        self.clock = clock
        self._keys: dict[str, tuple[KeyRecord, float]] = {}
        self._asides: dict[str, tuple[dict[str, float], float]] = {}
        self._turn: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        """Whether gateway keys can be used here (a table and a secret)."""
        return self._table is not None or bool(self.settings.access_table)

    @property
    def table(self) -> AccessTable:
        if self._table is None:
            if not self.settings.access_table:
                raise ConfigurationError(
                    "Gateway keys are not set up here (no ACCESS_TABLE).", code="no_access_table"
                )
            self._table = AccessTable(self.settings.access_table, self.settings.aws_region)
        return self._table

    @property
    def secret(self) -> SecretSource:
        if self._secret is None:
            if not self.settings.access_secret:
                raise ConfigurationError(
                    "Gateway keys are not set up here (no ACCESS_SECRET).", code="no_access_secret"
                )
            self._secret = SecretSource.shared(
                self.settings.access_secret,
                self.settings.secret_cache_ttl,
                self.settings.aws_region,
            )
        return self._secret

    async def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """A table call in a worker thread; its failure a 503 that names no secret."""
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except (GatewayError, QuotaFull):
            raise
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            logger.warning("access table call failed", extra={"call": what, "error": code})
            raise ServiceUnavailableError(
                f"The gateway's key table cannot be used right now ({what}); try again.",
                code="access_unavailable",
            ) from None

    # ------------------------------------------------------------------ who is calling

    async def caller(self, bearer: str, provider: str) -> Caller:
        """The caller of a request with the bearer token `bearer` (shape already checked) for
        `provider`. Raises 401 (unknown, expired or revoked key; in `keys` mode any other
        bearer) or 403 (a provider the key may not use)."""
        secret = SecretStr(bearer)
        if bearer.startswith(PREFIX) and (self.mode == "open" or not looks_like_key(bearer)):
            # no provider token starts so: a cut-off key (or any key where none are issued) is
            # refused here in every mode, never passed on to the provider
            raise AuthenticationError(
                "Invalid API key: this gateway issues no gateway keys (open access); send your "
                "own provider token."
                if self.mode == "open"
                else "Invalid API key: this gateway key is incomplete; give the whole key "
                "(gk- and 32 characters) as its owner issued it.",
                code="invalid_api_key",
            )
        if self.mode == "open" or (self.mode == "mixed" and not looks_like_key(bearer)):
            return Caller(secret)
        refused = AuthenticationError(
            "Invalid API key: this gateway takes only the gateway keys its owner issued."
            if self.mode == "keys"
            else "Invalid API key: this gateway key is unknown, expired or revoked.",
            code="invalid_api_key",
        )
        if not looks_like_key(bearer) or not self.enabled:
            raise refused
        record = await self._record(key_hash(bearer, (await self.pools()).pepper))
        if record is None or record.expired(self.clock()):
            raise refused
        if record.providers and provider not in record.providers:
            raise PermissionDeniedError(
                f"This gateway key may not use the provider '{provider}'.",
                code="provider_not_allowed",
            )
        return Caller(secret, record)

    async def _record(self, hash_: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._keys.get(hash_)
        if cached is not None and now - cached[1] < self.settings.key_cache_ttl:
            return cached[0]
        record: KeyRecord | None = await self._call("get key", self.table.get_key, hash_)
        if record is None:
            self._keys.pop(hash_, None)
            return None
        if len(self._keys) >= _MAX_CACHED:
            self._keys.clear()
        self._keys[hash_] = (record, now)
        return record

    async def pools(self) -> Pools:
        return await self.secret.aread()

    # ------------------------------------------------------------------ server-held tokens

    async def lease(self, provider: str) -> PoolLease:
        """A lease on the next token of `provider`'s pool (in turn) not set aside; a 503 when
        the pool is empty, a 429 when every token is set aside."""
        pool = (await self.pools()).pool(provider)
        if not pool:  # the owner may have added one since this instance read the secret
            pool = (await self.secret.aread(fresh=True)).pool(provider)
        if not pool:
            raise ServiceUnavailableError(
                f"This gateway holds no {provider} token: its owner adds them with "
                f"'make token PROVIDER={provider} TOKEN=...' (used from 2 s on).",
                code="no_provider_token",
                retryable=False,
            )
        for token in pool:
            protect(token)
        asides = await self.asides(provider)
        now = self.clock()
        turn = self._turn.get(provider, 0)
        self._turn[provider] = turn + 1
        for step in range(len(pool)):
            index = (turn + step) % len(pool)
            if asides.get(token_id(pool[index]), 0) <= now:
                return PoolLease(self, provider, pool, index)
        raise self.exhausted(provider, pool, asides)

    async def lease_at(self, ref: str) -> PoolLease | None:
        """A lease on the token a job's reference (`pool:<provider>:<id>`) names, with its pool
        behind it to fail over to; when that token is set aside meanwhile, on the next one that
        is not. None when the owner removed the token; a 429 when every token is set aside."""
        _, provider, wanted = ref.split(":", 2)
        pool = (await self.pools()).pool(provider)
        index = next((i for i, t in enumerate(pool) if token_id(t) == wanted), None)
        if index is None:
            return None
        for token in pool:
            protect(token)
        asides = await self.asides(provider)
        now = self.clock()
        for step in range(len(pool)):
            at = (index + step) % len(pool)
            if asides.get(token_id(pool[at]), 0) <= now:
                return PoolLease(self, provider, pool, at)
        raise self.exhausted(provider, pool, asides)

    async def settle_job(
        self, job_id: str, key: str, model: str, n: int, made: int, at: float
    ) -> None:
        """Settle a durable job's reservation once (`AccessTable.settle_job`): the images not
        made given back to the day of `at`, those made counted in its month. A failure is
        logged, never raised: the job's outcome stands without it."""
        try:
            done = await anyio.to_thread.run_sync(
                self.table.settle_job, job_id, key, model, n, made, at
            )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            logger.warning(
                "job quota not settled",
                extra={"job_id": job_id, "error": code or type(exc).__name__},
            )
            return
        logger.info(
            "job quota settled" if done else "job quota settled already",
            extra={"job_id": job_id, "reserved": n, "made": made},
        )

    async def token_by_ref(self, ref: str) -> SecretStr | None:
        """The token a job's reference (`pool:<provider>:<id>`) names; None when removed."""
        _, provider, wanted = ref.split(":", 2)
        token = (await self.pools()).by_id(provider, wanted)
        if token is None:
            return None
        protect(token)
        return SecretStr(token)

    async def asides(self, provider: str) -> dict[str, float]:
        now = time.monotonic()
        cached = self._asides.get(provider)
        if cached is not None and now - cached[1] < ASIDE_CACHE:
            return cached[0]
        found: dict[str, float] = await self._call("asides", self.table.asides, provider)
        mine = cached[0] if cached else {}
        merged = {**found, **{t: u for t, u in mine.items() if u > found.get(t, 0)}}
        self._asides[provider] = (merged, now)
        return merged

    async def set_aside(self, provider: str, token: str, until: float, why: str) -> None:
        current, at = self._asides.get(provider, ({}, time.monotonic()))
        self._asides[provider] = ({**current, token: until}, at)
        logger.warning(
            "provider token set aside",
            extra={"provider": provider, "token_id": token, "until": iso(until), "why": why},
        )
        with contextlib.suppress(GatewayError):  # this instance knows; others find out alone
            await self._call("set aside", self.table.set_aside, provider, token, until)

    def exhausted(
        self, provider: str, pool: Sequence[str], asides: dict[str, float]
    ) -> RateLimitError:
        back = min(asides.get(token_id(t), 0) for t in pool)
        wait = max(1, math.ceil(back - self.clock()))
        return RateLimitError(
            f"Every {provider} token of this gateway is set aside (refused, out of quota or "
            f"rate limited); the first comes back at {iso(back)}.",
            code="provider_tokens_exhausted",
            headers={"retry-after": str(wait)},
            retryable=wait <= RATE_PAUSE,
        )

    # ------------------------------------------------------------------ quotas and usage

    async def reserve(self, caller: Caller, model: str, n: int) -> Reservation | None:
        """Reserve `n` images of `model` on the caller's key (None: no gateway key). A 429
        `quota_exceeded` (not retryable) naming the reset when the day's quota is spent."""
        record = caller.record
        if record is None:
            return None
        now = self.clock()
        try:
            await self._call(
                "reserve", self.table.reserve, record.hash, model, n, record.quota, now
            )
        except QuotaFull:
            reset = next_midnight(now)
            raise RateLimitError(
                f"This gateway key's daily quota of {record.quota} images is used up "
                f"(asked for {n}); it resets at {iso(reset)}.",
                code="quota_exceeded",
                headers={"retry-after": str(max(1, math.ceil(reset - now)))},
                retryable=False,
            ) from None
        return Reservation(self, record, model, n, now)

    async def usage(self, caller: Caller) -> dict[str, Any]:
        """The caller's key's images today and this month, by model (`GET /v1/usage`)."""
        record = caller.record
        if record is None:
            raise PermissionDeniedError(
                "Usage is kept for gateway keys only: this request carries none.",
                code="gateway_key_required",
            )
        now = self.clock()
        day, month = await self._call("usage", self.table.usage, record.hash, now)
        return {
            "object": "usage",
            "key": record.name,
            "daily_quota": record.quota,
            "resets_at": iso(next_midnight(now)),
            "expires_at": iso(record.expires) if record.expires else None,
            "today": {
                "date": iso(now)[:10],
                "images": day.images,
                "by_model": day.by_model,
                "chats": day.chats,
                "chats_by_model": day.chats_by_model or {},
            },
            "month": {
                "month": iso(now)[:7],
                "images": month.images,
                "by_model": month.by_model,
                "chats": month.chats,
                "chats_by_model": month.chats_by_model or {},
            },
        }

    async def count_chat(self, caller: Caller, model: str) -> None:
        """Count a chat request passed through with the stack's token on the caller's key
        (usage only: chats are not on the image quota). A failure is logged, never raised:
        the answer is already the client's."""
        record = caller.record
        if record is None:
            return
        with contextlib.suppress(GatewayError):  # logged by _call
            await self._call("count chat", self.table.count_chat, record.hash, model, self.clock())


async def settle_all(reservation: Reservation | None, made: int) -> None:
    if reservation is not None:
        await asyncio.shield(reservation.settle(made))
