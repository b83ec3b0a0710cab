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
from imagegw.core.lifecycle import settlement
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
#: a plain rate limit without Retry-After sets the token aside this long (a short back-off)
RATE_PAUSE: Final = 20
#: the longest back-off a plain rate limit's Retry-After sets
RATE_PAUSE_MAX: Final = 300
#: an exhausted pool whose first token is back within this is worth a client's retry
RETRY_WAIT: Final = 60
#: how long this instance trusts its copy of the table's set-aside records
ASIDE_CACHE: Final = 5.0
#: words of a 429 that mean the day's quota is spent, not a passing rate limit
_QUOTA_WORDS: Final = re.compile(r"quota|daily|per day|today|exhausted|insufficient|额度|余额")
#: words of a refusal that make it about the model asked for, not the token
_MODEL_WORDS: Final = re.compile(r"\bmodels?\b|模型")
#: ModelScope's per-model and per-user quota headers (provider-wire.md)
_MODEL_LEFT: Final = "modelscope-ratelimit-model-requests-remaining"
_USER_LEFT: Final = "modelscope-ratelimit-requests-remaining"
#: the longest model id kept in a set-aside record
_MAX_MODEL: Final = 200
_MAX_CACHED: Final = 4096


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def provider_reset(provider: str, now: float) -> float:
    """The next daily reset of `provider`'s quotas after `now`."""
    known = PROVIDERS.get(provider)
    hour = known.daily_reset_utc_hour if known is not None else 0
    day = int(now) // 86400 * 86400 + hour * 3600
    return day if day > now else day + 86400


@dataclass(frozen=True)
class Aside:
    """What a refusal sets aside: until when, why, and for which model only (None: the whole
    token, for every model)."""

    until: float
    why: str
    model: str | None = None


def about_model(error: GatewayError, model: str | None) -> bool:
    """Whether a 403 or 429 is about the model asked for rather than the token: ModelScope's
    per-model quota header at 0 (its per-user one not), or a message naming the model or
    speaking of models."""
    if not model:
        return False
    left = {name.lower(): value.strip() for name, value in error.headers.items()}
    if left.get(_USER_LEFT) == "0":
        return False
    if left.get(_MODEL_LEFT) == "0":
        return True
    text = error.message.lower()
    return model.lower() in text or _MODEL_WORDS.search(text) is not None


def aside_until(provider: str, error: BaseException, now: float, model: str | None = None) -> Aside:
    """What a refusal of a call for `model` sets aside, scoped to what it is about:

    - a 401 (the token refused): the whole token, until the owner changes it;
    - a 403: the token for `model` until the provider's daily reset when it is about the
      model (`about_model`), else the whole token until the owner changes it;
    - a 429 naming a quota: the token for `model` (a per-model quota) or the whole token (the
      token's own), until the provider's daily reset;
    - any other 429 (a passing rate limit): a short back-off (its Retry-After, at most
      RATE_PAUSE_MAX; RATE_PAUSE without one), for `model` when it is about the model.
    """
    if isinstance(error, AuthenticationError):
        return Aside(now + FOREVER, "refused")
    assert isinstance(error, PermissionDeniedError | RateLimitError)
    scope = model[:_MAX_MODEL] if model and about_model(error, model) else None
    if isinstance(error, PermissionDeniedError):
        if scope is not None:
            return Aside(provider_reset(provider, now), "model refused", scope)
        return Aside(now + FOREVER, "refused")
    headers = {name.lower(): value for name, value in error.headers.items()}
    spent = headers.get(_MODEL_LEFT, "").strip() == "0" or headers.get(_USER_LEFT, "") == "0"
    if spent or _QUOTA_WORDS.search(error.message.lower()):
        return Aside(provider_reset(provider, now), "quota", scope)
    retry = headers.get("retry-after", "")
    seconds = float(retry) if retry.strip().replace(".", "", 1).isdigit() else RATE_PAUSE
    return Aside(now + max(1.0, min(seconds, RATE_PAUSE_MAX)), "rate", scope)


def aside_name(token: str, model: str | None) -> str:
    """A set-aside record's name: the token id, with `@<model>` when only for that model."""
    return token if model is None else f"{token}@{model}"


def back_at(asides: dict[str, float], token: str, model: str | None) -> float:
    """When `token` can be used again for `model` (for any model when None)."""
    whole = asides.get(token, 0.0)
    return whole if model is None else max(whole, asides.get(aside_name(token, model), 0.0))


def window(
    size: int, key: str | None, share: float, asides: dict[str, float], ids: list[str], now: float
) -> list[int]:
    """The positions of the pool a gateway key spends (its share), in the order it uses them:
    `share` of the pool's tokens (at least one), starting at a place given by the key's hash,
    leaving out tokens refused for good (those are the owner's to replace, not a share of
    anyone's). Without a key, or with a share of 1, the whole pool."""
    order = list(range(size))
    if key is None or share >= 1 or size < 2:
        return order
    start = int(key[:8], 16) % size if re.fullmatch(r"[0-9a-f]{8}.*", key) else 0
    order = order[start:] + order[:start]
    alive = [i for i in order if asides.get(ids[i], 0.0) - now < FOREVER / 2]
    if not alive:
        return order
    return alive[: max(1, math.ceil(len(alive) * share))]


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
    """A token of one provider's pool (`imagegw.access.lease.Lease`), within the share of the
    pool its gateway key spends (`window`: positions in the order to use them)."""

    def __init__(
        self,
        access: Access,
        provider: str,
        pool: Sequence[str],
        start: int,
        positions: Sequence[int] | None = None,
        key: str | None = None,
    ) -> None:
        self.access = access
        self.provider = provider
        self.pool = list(pool)
        self.index = start
        self.positions = list(positions) if positions is not None else list(range(len(pool)))
        #: the gateway key's hash whose share this is (None: the whole pool)
        self.key = key
        self.tried: set[int] = set()

    @property
    def token(self) -> SecretStr:
        return SecretStr(self.pool[self.index])

    @property
    def ref(self) -> str:
        return f"pool:{self.provider}:{token_id(self.pool[self.index])}"

    def _id(self, index: int) -> str:
        return token_id(self.pool[index])

    async def _next(self, model: str | None) -> SecretStr:
        """Move to the next token of the share not tried and usable for `model`; the pool's
        429 when there is none."""
        asides = await self.access.asides(self.provider)
        now = self.access.clock()
        if self.key is not None:  # a token refused for good since leaves the share: a new one
            ids = [self._id(i) for i in range(len(self.pool))]
            share = self.access.settings.key_pool_share
            self.positions = window(len(self.pool), self.key, share, asides, ids, now)
        at = self.positions.index(self.index) if self.index in self.positions else -1
        for step in range(1, len(self.positions) + 1):
            index = self.positions[(at + step) % len(self.positions)]
            if index not in self.tried and back_at(asides, self._id(index), model) <= now:
                self.index = index
                return self.token
        raise self.access.exhausted(
            self.provider, [self.pool[i] for i in self.positions], asides, model
        )

    async def prefer(self, model: str) -> SecretStr | None:
        """Before the first call for `model`: the next token of the share when the current one
        is set aside for that model (a per-model quota, a model it may not use); None to keep
        the current one."""
        asides = await self.access.asides(self.provider)
        if back_at(asides, self._id(self.index), model) <= self.access.clock():
            return None
        self.tried.add(self.index)
        return await self._next(model)

    async def fail_over(
        self, answers: Sequence[object], model: str | None = None
    ) -> SecretStr | None:
        refusals = set_aside_worthy(answers)
        if refusals is None:
            return None
        current = self._id(self.index)
        aside = aside_until(self.provider, refusals[0], self.access.clock(), model)
        await self.access.set_aside(
            self.provider, aside_name(current, aside.model), aside.until, aside.why
        )
        self.tried.add(self.index)
        return await self._next(model)


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
        settled = settlement(self.n, made)
        table, hash_ = self.access.table, self.record.hash

        async def give_back() -> None:
            await anyio.to_thread.run_sync(
                table.give_back, hash_, self.model, settled.give_back, self.at
            )

        async def count() -> None:
            await anyio.to_thread.run_sync(
                table.count_month, hash_, self.model, settled.made, self.at
            )

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

    async def keyed_caller(self, hash_: str) -> Caller | None:
        """The caller of the gateway key whose hash is `hash_` as it stands now (a batch's items
        reserve on it one by one); None once revoked, expired or unknown."""
        record = await self._record(hash_)
        if record is None or record.expired(time.time()):
            return None
        return Caller(SecretStr(""), record)

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

    async def lease(self, provider: str, key: str | None = None) -> PoolLease:
        """A lease on the next token (in turn) of `provider`'s pool not set aside as a whole,
        among the share of the pool the gateway key with the hash `key` spends (`window`); a
        503 when the pool is empty, a 429 when every token of the share is set aside."""
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
        ids = [token_id(t) for t in pool]
        share = window(len(pool), key, self.settings.key_pool_share, asides, ids, now)
        turn = self._turn.get(provider, 0)
        self._turn[provider] = turn + 1
        for step in range(len(share)):
            index = share[(turn + step) % len(share)]
            if asides.get(ids[index], 0) <= now:
                return PoolLease(self, provider, pool, index, share, key)
        raise self.exhausted(provider, [pool[i] for i in share], asides)

    async def lease_at(self, ref: str, key: str | None = None) -> PoolLease | None:
        """A lease on the token a job's reference (`pool:<provider>:<id>`) names, with the
        share of its pool that the gateway key with the hash `key` spends behind it to fail over
        to (`window`, as `lease`; None: the whole pool); when that token is set aside meanwhile,
        on the next one of the share that is not. None when the owner removed the token; a 429
        when every token of the share is set aside."""
        _, provider, wanted = ref.split(":", 2)
        pool = (await self.pools()).pool(provider)
        index = next((i for i, t in enumerate(pool) if token_id(t) == wanted), None)
        if index is None:
            return None
        for token in pool:
            protect(token)
        asides = await self.asides(provider)
        now = self.clock()
        ids = [token_id(t) for t in pool]
        share = window(len(pool), key, self.settings.key_pool_share, asides, ids, now)
        # from the named token on, in the share's order (the share may have moved since)
        first = share.index(index) if index in share else 0
        for step in range(len(share)):
            at = share[(first + step) % len(share)]
            if asides.get(ids[at], 0) <= now:
                return PoolLease(self, provider, pool, at, share, key)
        raise self.exhausted(provider, [pool[i] for i in share], asides)

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
        now = self.clock()
        expired = [name for name, back in current.items() if back <= now]
        kept = {name: back for name, back in current.items() if back > now}
        self._asides[provider] = ({**kept, token: until}, at)
        logger.warning(
            "provider token set aside",
            extra={"provider": provider, "token_id": token, "until": iso(until), "why": why},
        )
        with contextlib.suppress(GatewayError):  # this instance knows; others find out alone
            await self._call(
                "set aside", self.table.set_aside, provider, token, until, now, expired
            )

    def exhausted(
        self,
        provider: str,
        pool: Sequence[str],
        asides: dict[str, float],
        model: str | None = None,
    ) -> RateLimitError:
        back = min(back_at(asides, token_id(t), model) for t in pool)
        wait = max(1, math.ceil(back - self.clock()))
        which = f" for the model '{model[:100]}'" if model else ""
        return RateLimitError(
            f"Every {provider} token this gateway key may use{which} is set aside (refused, "
            f"out of quota or rate limited); the first comes back at {iso(back)}.",
            code="provider_tokens_exhausted",
            headers={"retry-after": str(wait)},
            retryable=wait <= RETRY_WAIT,
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
