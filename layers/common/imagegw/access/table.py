"""The access table (DynamoDB, `ACCESS_TABLE`; on-demand, point-in-time recovery, TTL on
`expires_at`). One partition key `pk`, three kinds of item:

- `key#<hash>`: a gateway key's record, under the keyed hash of the key (never the key): its
  name, allowed providers and models, daily image quota and expiry (TTL deletes it a day after);
- `usage#<hash>#d#<YYYY-MM-DD>` and `usage#<hash>#m#<YYYY-MM>`: images counted by day and month
  (UTC), in all (`images`) and by model (`model:<id>`). The day's count is the quota's: images
  are reserved there by one conditional update before the provider is called, so concurrent
  requests cannot overshoot it, and given back when nothing was made; the month counts the
  images made, once the generation is over. Chat requests passed through to a provider's chat
  model with the stack's tokens are counted there too (`chats`, `chat:<id>`), outside the
  image quota;
- `aside#<provider>`: tokens set aside, as `t:<token id>` (or `t:<token id>@<model>` for one
  model) -> Unix time they come back, shared by every instance; each write also removes names
  already back (a bounded number), so the record does not grow with every model ever refused;
- `settled#<job id>`: a durable job's quota settled (TTL'd): written in the same transaction as
  the settlement itself, on the condition that it is new, so a job step run twice (Step
  Functions runs a task at least once) settles once.
- `estimate#<provider>#<model>#<bucket>`: a model's learned run time (`seconds`, `spread`,
  `samples`; the provider's queue time under the model `(queue)`), for predictive polling
  (`imagegw.access.shared_estimates`). Each write moves its TTL to 90 days on, so the estimates of
  models no longer used vanish; a write is one update conditional on the sample count it read.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from imagegw.core import lifecycle
from imagegw.core.schedule import Estimate

#: TTL attribute (DynamoDB deletes the item some time after this Unix time)
TTL: Final = "expires_at"
DAY_TTL: Final = 40 * 86400
MONTH_TTL: Final = 400 * 86400
#: an estimate's item lives this long after its last write
ESTIMATE_TTL: Final = 90 * 86400
#: how often a usage write is tried that DynamoDB refused because a transaction was writing the
#: same item at that moment (`conflicted`), and the first wait between tries (doubling, with
#: full jitter, at most a second): concurrent settlements of one key's jobs, and a request's
#: count made while a job settles, write the same usage items
CONFLICT_TRIES: Final = 8
CONFLICT_WAIT: Final = 0.02

#: the most expired names one set-aside write removes from its record (the rest go with the
#: next writes): a refused model adds a `t:<token id>@<model>` name, which nothing else removes
PRUNE_AT_MOST: Final = 40


@dataclass(frozen=True)
class KeyRecord:
    """A gateway key as stored (no key in it)."""

    hash: str
    name: str
    created: int
    quota: int | None = None
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    expires: int | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "pk": {"S": f"key#{self.hash}"},
            "kind": {"S": "key"},
            "name": {"S": self.name},
            "created": {"N": str(self.created)},
        }
        if self.quota is not None:
            item["quota"] = {"N": str(self.quota)}
        if self.models:
            item["models"] = {"L": [{"S": m} for m in self.models]}
        if self.providers:
            item["providers"] = {"L": [{"S": p} for p in self.providers]}
        if self.expires is not None:
            item["expires"] = {"N": str(self.expires)}
            item[TTL] = {"N": str(self.expires + 86400)}
        return item

    @classmethod
    def of(cls, item: dict[str, Any]) -> KeyRecord:
        def number(name: str) -> int | None:
            return int(item[name]["N"]) if name in item else None

        def strings(name: str) -> tuple[str, ...]:
            return tuple(v["S"] for v in item.get(name, {}).get("L", []))

        return cls(
            hash=item["pk"]["S"].removeprefix("key#"),
            name=item["name"]["S"],
            created=number("created") or 0,
            quota=number("quota"),
            models=strings("models"),
            providers=strings("providers"),
            expires=number("expires"),
        )


def day_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def month_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def next_midnight(now: float) -> int:
    """The next 00:00 UTC (when daily quotas reset)."""
    return (int(now) // 86400 + 1) * 86400


class QuotaFull(Exception):
    """The day's count cannot take the images asked for."""


@dataclass(frozen=True)
class Usage:
    images: int
    by_model: dict[str, int]
    #: chat requests passed through with the stack's tokens, in all and by model
    chats: int = 0
    chats_by_model: dict[str, int] | None = None


def _counts(item: dict[str, Any], prefix: str) -> dict[str, int]:
    return {
        name.removeprefix(prefix): int(value["N"])
        for name, value in item.items()
        if name.startswith(prefix) and int(value["N"]) > 0
    }


def _usage(item: dict[str, Any] | None) -> Usage:
    if not item:
        return Usage(0, {}, 0, {})
    return Usage(
        int(item.get("images", {"N": "0"})["N"]),
        _counts(item, "model:"),
        int(item.get("chats", {"N": "0"})["N"]),
        _counts(item, "chat:"),
    )


_T = TypeVar("_T")


def error_code(exc: BaseException) -> str | None:
    """The DynamoDB error code of a botocore `ClientError` (None for anything else). Matched by
    code, not by `client.exceptions.<Name>`: botocore makes a client's exception classes on first
    use, and threads using a new client at once can each make their own, so a class caught
    by one thread may not be the class another thread's call raised."""
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None


def conflicted(exc: BaseException) -> bool:
    """Whether DynamoDB refused a write only because a transaction was writing one of its items
    at that moment (nothing of it was applied, so trying again is safe): an UpdateItem's
    `TransactionConflictException`, or a transaction cancelled for `TransactionConflict` with
    no condition failed. botocore does not retry either."""
    code = error_code(exc)
    if code == "TransactionConflictException":
        return True
    if code != "TransactionCanceledException":
        return False
    response = getattr(exc, "response", None) or {}
    reasons = [reason.get("Code") for reason in response.get("CancellationReasons") or []]
    return "TransactionConflict" in reasons and "ConditionalCheckFailed" not in reasons


def through_conflicts(write: Callable[[], _T]) -> _T:
    """`write()`, tried again (CONFLICT_TRIES in all) while DynamoDB refuses it for a
    concurrent transaction on the same item: without this, one of two jobs of a key settling
    at once lost its count (the failure is logged, never raised, so the job's outcome stands)."""
    for attempt in range(CONFLICT_TRIES):
        try:
            return write()
        except Exception as exc:
            if attempt == CONFLICT_TRIES - 1 or not conflicted(exc):
                raise
            time.sleep(random.uniform(0, min(1.0, CONFLICT_WAIT * 2**attempt)))
    raise AssertionError("unreachable")


class AccessTable:
    """The table's operations (botocore's low-level client from the process's session,
    `imagegw.infra.aws`; blocking: callers use threads)."""

    def __init__(
        self, name: str, region: str, client: Any = None, *, timeout: float | None = None
    ) -> None:
        """`timeout`: seconds to connect and to read, with one retry only (for callers that
        would rather do without the table than wait for it); botocore's defaults otherwise."""
        self.name = name
        self.region = region
        self._client = client
        self.timeout = timeout

    @property
    def client(self) -> Any:
        if self._client is None:
            from botocore.config import Config

            from imagegw.infra import aws

            options: dict[str, Any] = {"retries": {"max_attempts": 3, "mode": "standard"}}
            if self.timeout is not None:
                options = {
                    "retries": {"max_attempts": 2, "mode": "standard"},
                    "connect_timeout": self.timeout,
                    "read_timeout": self.timeout,
                }
            self._client = aws.client("dynamodb", region_name=self.region, config=Config(**options))
        return self._client

    # ------------------------------------------------------------------ keys

    def get_key(self, hash_: str) -> KeyRecord | None:
        answer = self.client.get_item(
            TableName=self.name, Key={"pk": {"S": f"key#{hash_}"}}, ConsistentRead=True
        )
        item = answer.get("Item")
        return KeyRecord.of(item) if item else None

    def put_key(self, record: KeyRecord) -> None:
        self.client.put_item(
            TableName=self.name,
            Item=record.item(),
            ConditionExpression="attribute_not_exists(pk)",
        )

    def key_records(self) -> list[KeyRecord]:
        found: list[KeyRecord] = []
        for page in self.client.get_paginator("scan").paginate(
            TableName=self.name,
            FilterExpression="#k = :key",
            ExpressionAttributeNames={"#k": "kind"},
            ExpressionAttributeValues={":key": {"S": "key"}},
        ):
            found += [KeyRecord.of(item) for item in page.get("Items", [])]
        return sorted(found, key=lambda r: (r.name, r.created))

    def delete_key(self, hash_: str) -> None:
        self.client.delete_item(TableName=self.name, Key={"pk": {"S": f"key#{hash_}"}})

    # ------------------------------------------------------------------ usage

    def reserve(self, hash_: str, model: str, n: int, quota: int | None, now: float) -> None:
        """Count `n` images of `model` today: one conditional update, before the provider is
        called; QuotaFull when today's count would pass `quota` (nothing counted then)."""
        self._add(f"usage#{hash_}#d#{day_of(now)}", model, n, now + DAY_TTL, quota)

    def give_back(self, hash_: str, model: str, n: int, now: float) -> None:
        """Uncount `n` images reserved at `now` (nothing was made of them)."""
        if n > 0:
            self._add(f"usage#{hash_}#d#{day_of(now)}", model, -n, now + DAY_TTL, None)

    def count_month(self, hash_: str, model: str, made: int, now: float) -> None:
        """Count the images made in the month's usage (after the generation)."""
        if made > 0:
            self._add(f"usage#{hash_}#m#{month_of(now)}", model, made, now + MONTH_TTL, None)

    def count_chat(self, hash_: str, model: str, now: float) -> None:
        """Count one chat request passed through to `model`, today and in the month (not on
        the image quota)."""
        for pk, ttl in (
            (f"usage#{hash_}#d#{day_of(now)}", now + DAY_TTL),
            (f"usage#{hash_}#m#{month_of(now)}", now + MONTH_TTL),
        ):
            self._add(pk, model, 1, ttl, None, what="chat")

    def _add(
        self, pk: str, model: str, n: int, ttl: float, quota: int | None, what: str = "image"
    ) -> None:
        total, prefix = ("chats", "chat:") if what == "chat" else ("images", "model:")
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": {"pk": {"S": pk}},
            "UpdateExpression": f"ADD {total} :n, #m :n SET #ttl = if_not_exists(#ttl, :ttl)",
            "ExpressionAttributeNames": {"#m": f"{prefix}{model}", "#ttl": TTL},
            "ExpressionAttributeValues": {
                ":n": {"N": str(n)},
                ":ttl": {"N": str(int(ttl))},
            },
        }
        if quota is not None:
            kwargs["ConditionExpression"] = "attribute_not_exists(images) OR images <= :room"
            kwargs["ExpressionAttributeValues"][":room"] = {"N": str(quota - n)}
            if quota - n < 0:
                raise QuotaFull
        try:
            through_conflicts(lambda: self.client.update_item(**kwargs))
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise QuotaFull from None
            raise

    def usage(self, hash_: str, now: float) -> tuple[Usage, Usage]:
        """Images of today and of this month (UTC)."""
        day = self.client.get_item(
            TableName=self.name, Key={"pk": {"S": f"usage#{hash_}#d#{day_of(now)}"}}
        ).get("Item")
        month = self.client.get_item(
            TableName=self.name, Key={"pk": {"S": f"usage#{hash_}#m#{month_of(now)}"}}
        ).get("Item")
        return _usage(day), _usage(month)

    def settle_job(self, job_id: str, hash_: str, model: str, n: int, made: int, at: float) -> bool:
        """Settle a durable job's reservation of `n` images made at `at`, once: give back
        those not made, count those made in the month, and mark the job settled, in one
        transaction of conditional updates (tried again while cancelled for a concurrent one on
        the same items: `through_conflicts`). False when the job was settled already."""
        items = settlement(self.name, job_id, hash_, model, n, made, at)
        try:
            through_conflicts(lambda: self.client.transact_write_items(TransactItems=items))
        except Exception as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return False
            raise
        return True

    # ------------------------------------------------------------------ set-aside tokens

    def asides(self, provider: str) -> dict[str, float]:
        """Token id -> Unix time it comes back, for the tokens of `provider` set aside."""
        item = self.client.get_item(
            TableName=self.name, Key={"pk": {"S": f"aside#{provider}"}}, ConsistentRead=True
        ).get("Item")
        if not item:
            return {}
        return {
            name.removeprefix("t:"): float(value["N"])
            for name, value in item.items()
            if name.startswith("t:")
        }

    def set_aside(
        self, provider: str, token: str, until: float, now: float = 0, expired: Iterable[str] = ()
    ) -> None:
        """Set `token` (a token id, `@<model>` when only for that model) aside until `until`,
        and in the same update remove up to PRUNE_AT_MOST of the record's `expired` names
        (back by `now`), each only if it is still back by then: another instance may have set
        it aside again meanwhile, and then the write goes without pruning."""
        key = {"pk": {"S": f"aside#{provider}"}}
        names = {"#t": f"t:{token}"}
        values = {":until": {"N": str(int(until))}}
        gone = [name for name in dict.fromkeys(expired) if name != token][:PRUNE_AT_MOST]
        if gone:
            removed = {f"#e{i}": f"t:{name}" for i, name in enumerate(gone)}
            try:
                self.client.update_item(
                    TableName=self.name,
                    Key=key,
                    UpdateExpression=f"SET #t = :until REMOVE {', '.join(removed)}",
                    ConditionExpression=" AND ".join(
                        f"(attribute_not_exists({e}) OR {e} <= :now)" for e in removed
                    ),
                    ExpressionAttributeNames=names | removed,
                    ExpressionAttributeValues=values | {":now": {"N": str(int(now))}},
                )
                return
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
        self.client.update_item(
            TableName=self.name,
            Key=key,
            UpdateExpression="SET #t = :until",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    # ------------------------------------------------------------------ run-time estimates

    def estimate(self, pk: str, *, consistent: bool = False) -> Estimate | None:
        """The estimate under `pk` (`estimate#...`); None when there is none."""
        item = self.client.get_item(
            TableName=self.name, Key={"pk": {"S": pk}}, ConsistentRead=consistent
        ).get("Item")
        if not item:
            return None
        return Estimate(
            float(item["seconds"]["N"]), float(item["spread"]["N"]), int(item["samples"]["N"])
        )

    def write_estimate(self, pk: str, new: Estimate, read: int, now: float) -> bool:
        """Write `new` over the estimate `read` samples were read in (0: there was none), with
        one update conditional on that count; False when another instance wrote first."""
        values = {
            ":s": {"N": f"{new.seconds:.3f}"},
            ":d": {"N": f"{new.spread:.3f}"},
            ":n": {"N": str(new.samples)},
            ":kind": {"S": "estimate"},
            ":ttl": {"N": str(int(now + ESTIMATE_TTL))},
        }
        if read:
            values[":read"] = {"N": str(read)}
        try:
            self.client.update_item(
                TableName=self.name,
                Key={"pk": {"S": pk}},
                UpdateExpression="SET #s = :s, #d = :d, #n = :n, #k = :kind, #ttl = :ttl",
                ConditionExpression="#n = :read" if read else "attribute_not_exists(pk)",
                ExpressionAttributeNames={
                    "#s": "seconds",
                    "#d": "spread",
                    "#n": "samples",
                    "#k": "kind",
                    "#ttl": TTL,
                },
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == _CONDITION_FAILED:
                return False
            raise
        return True


_CONDITION_FAILED: Final = "ConditionalCheckFailedException"


def _count(table: str, pk: str, model: str, n: int, ttl: float) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": table,
            "Key": {"pk": {"S": pk}},
            "UpdateExpression": "ADD images :n, #m :n SET #ttl = if_not_exists(#ttl, :ttl)",
            "ExpressionAttributeNames": {"#m": f"model:{model}", "#ttl": TTL},
            "ExpressionAttributeValues": {":n": {"N": str(n)}, ":ttl": {"N": str(int(ttl))}},
        }
    }


def settlement(
    table: str, job_id: str, hash_: str, model: str, n: int, made: int, at: float
) -> list[dict[str, Any]]:
    """The transaction that settles a job's reservation (`AccessTable.settle_job`): first the
    marker `settled#<job id>` (only if new), then the day's give-back of the `n - made` images
    not made and the month's count of the `made` ones (each only when not zero), both dated by
    the reservation (`at`), as the interactive path settles. Only updates: UpdateItem rights."""
    settled = lifecycle.settlement(n, made)
    made = settled.made
    items: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": table,
                "Key": {"pk": {"S": f"settled#{job_id}"}},
                "UpdateExpression": "SET #ttl = :ttl, images = :made",
                "ConditionExpression": "attribute_not_exists(pk)",
                "ExpressionAttributeNames": {"#ttl": TTL},
                "ExpressionAttributeValues": {
                    ":ttl": {"N": str(int(at + DAY_TTL))},
                    ":made": {"N": str(made)},
                },
            }
        }
    ]
    if settled.give_back > 0:
        back = -settled.give_back
        items.append(_count(table, f"usage#{hash_}#d#{day_of(at)}", model, back, at + DAY_TTL))
    if made > 0:
        items.append(_count(table, f"usage#{hash_}#m#{month_of(at)}", model, made, at + MONTH_TTL))
    return items


def now() -> float:
    return time.time()
