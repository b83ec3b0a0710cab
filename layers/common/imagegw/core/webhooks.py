"""Signed webhooks of durable jobs (README "Webhooks"): pure rules, no I/O.

- Each caller's signing secret is derived from the deployment's webhook secret and the caller's
  identity (`owner`: a hash of its bearer token, as a job records it), so nothing new is
  stored, two callers never share one, and rotating the deployment secret changes them all.
  It is a Standard Webhooks secret: `whsec_` and the base64 of 32 bytes.
- An event is `{"id": "evt_…", "object": "event", "type": "job.succeeded" | "job.failed",
  "created_at": …, "data": {"id": "<job id>"}}`: the job id only (no key, no image); the
  receiver fetches the job with its own key. A batch's (docs/batches.md) is the same with
  `batch.completed` | `batch.failed` | `batch.expired` | `batch.cancelled` and the batch id, as
  OpenAI's batch events are. Its id is derived from the job's (or batch's) id and the type, so
  every attempt carries the same `webhook-id` (receivers drop duplicates by it).
- Signing is Standard Webhooks': `webhook-id`, `webhook-timestamp` (Unix seconds, fresh at each
  attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
  as the official SDKs' `webhooks.verify_signature` check it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Final, Literal

EventType = Literal[
    "job.succeeded",
    "job.failed",
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
]
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a prefix, not a secret)
_DOMAIN: Final = b"imagegw-webhook-secret\0"
_EVENT_DOMAIN: Final = "imagegw-webhook-event\0"


def caller_secret(deployment_secret: str, owner: str) -> str:
    """The signing secret of the caller `owner` (`service.owner_of` its bearer token)."""
    key = hmac.new(deployment_secret.encode(), _DOMAIN + owner.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def event_id(job_id: str, kind: EventType) -> str:
    """The event's id, the same at every attempt (the `webhook-id`); `job_id`: the job's or
    the batch's id."""
    digest = hashlib.sha256(f"{_EVENT_DOMAIN}{job_id}\0{kind}".encode()).hexdigest()
    return f"evt_{digest[:32]}"


def event_body(job_id: str, kind: EventType, created_at: int) -> bytes:
    """The JSON body of a job's (or a batch's) event."""
    event = {
        "id": event_id(job_id, kind),
        "object": "event",
        "type": kind,
        "created_at": created_at,
        "data": {"id": job_id},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}` with the secret's key."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, webhook_id, timestamp, body),
    }
