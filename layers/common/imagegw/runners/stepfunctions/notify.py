"""Step Functions task `Notify*` of the image-job state machine: POST a job's signed event to its
`webhook_url` (README "Webhooks"), once per attempt. The batch state machine's `Notify*` states
call it too, with `batch_id` in place of `job_id` and a `batch.*` event (docs/batches.md).

An attempt answered 2xx ends the delivery; any other answer, a timeout or no connection raises
`WebhookDeliveryError`, which the state machine retries (exponential backoff, the first retry
within 30 s, for more than 24 h), with the same `webhook-id` and a fresh timestamp and
signature. The attempt number is the state's `$$.State.RetryCount`. Each outcome's message is
JSON `{"attempts", "last_status_code"}`, read back by the status endpoint from the execution's
history. The POST goes through the guarded fetcher (public addresses only, no redirects
followed); the event carries the job id only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, cast

from imagegw.access.webhook_secret import WebhookSecret
from imagegw.core.webhooks import EventType, event_body, event_id, signed_headers
from imagegw.errors import GatewayError
from imagegw.infra.fetcher import Fetcher, FetchError, where
from imagegw.infra.log import logger
from imagegw.runners.gateway import Gateway

#: seconds one attempt waits for the receiver's answer
DELIVERY_TIMEOUT: Final = 10.0
JOB_EVENTS: Final = frozenset({"job.succeeded", "job.failed"})
BATCH_EVENTS: Final = frozenset(
    {"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"}
)
#: the clock of the signatures' timestamps; tests may set it
clock: Callable[[], float] = time.time


class WebhookDeliveryError(Exception):
    """An attempt not answered 2xx; its message is `{"attempts", "last_status_code"}`."""


def _created_at(entered: Any) -> int:
    """When the job ended (the notifying state was entered; the same at every attempt)."""
    if isinstance(entered, str):
        try:
            return int(datetime.fromisoformat(entered.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return int(clock())


async def notify(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """One delivery attempt of the event `event` describes."""
    name = "batch_id" if "batch_id" in event else "job_id"  # whose event: a batch's or a job's
    subject, url, kind = str(event[name]), str(event["webhook"]), str(event["type"])
    if kind not in (BATCH_EVENTS if name == "batch_id" else JOB_EVENTS):
        raise ValueError(f"unknown event type {kind!r}")
    attempt = int(event.get("attempt") or 0) + 1
    body = event_body(subject, cast("EventType", kind), _created_at(event.get("entered")))
    webhook_id = event_id(subject, cast("EventType", kind))
    code: int | None = None
    fetcher = Fetcher(kit.settings, timeout=DELIVERY_TIMEOUT)
    try:
        secret = await WebhookSecret(kit.settings).afor_caller(str(event["owner"]))
        await fetcher.check(url, https_only=True)
        code = await fetcher.post(url, body, signed_headers(secret, webhook_id, int(clock()), body))
    except (FetchError, GatewayError) as exc:
        logger.warning(
            "webhook not delivered",
            extra={"url": where(url), "attempt": attempt, "error": type(exc).__name__},
        )
    finally:
        await fetcher.aclose()
    outcome = {"attempts": attempt, "last_status_code": code}
    if code is not None and 200 <= code < 300:
        logger.info("webhook delivered", extra={name: subject, **outcome})
        return {"status": "delivered", **outcome}
    logger.info("webhook attempt failed", extra={name: subject, **outcome})
    raise WebhookDeliveryError(json.dumps(outcome))
