"""The Batch API's batches: created `validating`, checked by their run's first state (nothing is
paid for a file with a bad line), run on the batch state machine
(statemachine/image_batch.asl.json), seen as OpenAI's batch object.

A batch's status is read from what its parties wrote once each (`imagegw.infra.batchstore`):

- `batch.json` (the API, at creation): `validating` (the input file's id, endpoint, provider);
- `validated.json` (the run's Validate step): `in_progress` with the items' count, or `failed`
  with `errors.data[]` listing each bad line;
- `cancel.json` (the API, on cancel): `cancelling` until the run has ended;
- `final.json` (the run's Finalize step): `completed`, `expired` or `cancelled`, with the
  output and error files;
- `results/`: one object per item that ended (`request_counts` while it runs).

A batch made with a `webhook_url` gets one signed `batch.*` event when it ends (its run's
Notify state); its object shows the delivery (`webhook: {status, attempts,
last_status_code}`), read from the run's history as a job's is
(`imagegw.runners.stepfunctions.delivery`).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Final

import anyio
import anyio.to_thread
from pydantic import SecretStr

from imagegw.access.gate import Caller
from imagegw.errors import GatewayError, InvalidRequestError, NotFoundError
from imagegw.frontends.batch_lines import ENDPOINTS, Endpoint
from imagegw.infra.batchstore import BATCH_ID, BatchStore
from imagegw.infra.config import Settings
from imagegw.infra.executions import JobRunner
from imagegw.infra.log import logger
from imagegw.infra.sealer import KeySealer
from imagegw.providers.base import Provider
from imagegw.runners.stepfunctions.delivery import read_delivery
from imagegw.runners.stepfunctions.machine import StateMachineService
from imagegw.runners.stepfunctions.service import max_polls

#: the completion windows a batch may ask for, in seconds
WINDOWS: Final = {"24h": 86400}
MAX_METADATA: Final = 16
#: a result's object name: `results/{index}.ok.json`, `.failed.json` (an item that failed) or
#: `.skipped.json` (not submitted: the batch was cancelled or expired)
OK: Final = ".ok.json"
FAILED: Final = ".failed.json"
SKIPPED: Final = ".skipped.json"
#: `submitting/{index}`: an item between its last look at the cancel mark and the provider's
#: answer to its submission; a cancel answers once none is left (at most `CANCEL_FENCE` s)
SUBMITTING: Final = "submitting/"
CANCEL_FENCE: Final = 5.0
FENCE_PAUSE: Final = 0.05


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def result_name(index: int, ok: bool) -> str:
    return f"results/{index:06d}{OK if ok else FAILED}"


def _timestamps() -> dict[str, Any]:
    names = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at")
    return {name: None for name in (*names, "cancelling_at", "cancelled_at")}


#: the record's own fields the batch object does not show
_PRIVATE: Final = ("owner", "provider", "total", "webhook")
#: the statuses a batch ends in
ENDED: Final = frozenset({"failed", "completed", "expired", "cancelled"})


class Batches(StateMachineService):
    """Create, read, cancel and list batches of one gateway."""

    ARN_SETTING = "batch_state_machine_arn"
    DISABLED = "Batches"
    DISABLED_CODE = "batches_disabled"

    def __init__(
        self,
        settings: Settings,
        store: BatchStore,
        *,
        runner: JobRunner | None = None,
        sealer: KeySealer | None = None,
    ) -> None:
        super().__init__(settings, runner=runner, sealer=sealer)
        self.store = store

    async def create(
        self,
        body: dict[str, Any],
        *,
        owner: str,
        provider: Provider,
        api_key: SecretStr,
        key_ref: str | None,
        base_url: str,
        caller: Caller | None = None,
        webhook: str | None = None,
    ) -> dict[str, Any]:
        """Start the batch: its batch object, `validating`. Its run checks every line of the
        input file first (`batch_steps.validate`: a file with a bad line is a `failed` batch
        listing every bad line, and nothing is submitted for it). `webhook`: the checked
        `webhook_url` its end is POSTed to."""
        _ = self.runner  # batches disabled: the 404 before anything is read or stored
        endpoint, file_id, window, metadata = _read_body(body)
        if await self.store.file(owner, file_id) is None:
            raise NotFoundError(
                f"No such File object: {file_id[:80]}", param="input_file_id", code="file_not_found"
            )
        now = int(time.time())
        batch_id = new_batch_id()
        record: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "expires_at": now + WINDOWS[window],
            **_timestamps(),
            "metadata": metadata,
            "owner": owner,
            "provider": provider.name,
            "total": 0,
            "webhook": webhook is not None,
        }
        # the items the run's Validate writes (the map's ItemReader reads them)
        items = self.store.run_key(owner, batch_id, "items.json")
        await self.store.put_json(self.store.run_key(owner, batch_id, "batch.json"), record)
        if key_ref is not None:
            sealed = key_ref
        else:
            sealed = await anyio.to_thread.run_sync(self.sealer.seal, api_key, batch_id)
        payload = {
            "batch": {
                "id": batch_id,
                "owner": owner,
                "expires_at": record["expires_at"],
                "base_url": base_url,
                # a gateway key's batch: each item reserves on the key's quota as it starts
                "quota_key": caller.record.hash if caller and caller.record else None,
                "webhook": webhook,
            },
            "key": sealed,
            "items": {"Bucket": self.store.store.bucket, "Key": items},
            "concurrency": self.settings.batch_concurrency,
            "wait_seconds": self.settings.job_poll_interval,
            "max_polls": max_polls(self.settings),
        }
        try:
            await anyio.to_thread.run_sync(self.runner.start, batch_id, json.dumps(payload))
        except Exception as exc:
            logger.warning("batch start failed", extra={"error": type(exc).__name__})
            # no batch left validating for ever: the caller tries again
            await self.store.delete(self.store.run_key(owner, batch_id, "batch.json"))
            raise GatewayError(
                f"The batch could not be started ({type(exc).__name__}); try again.",
                code="batches_unavailable",
                retryable=False,
            ) from None
        logger.info("batch started", extra={"batch_id": batch_id, "provider": provider.name})
        return await self._view(owner, record)

    async def _record(self, owner: str, batch_id: str) -> dict[str, Any]:
        record = None
        if BATCH_ID.match(batch_id):
            record = await self.store.get_json(self.store.run_key(owner, batch_id, "batch.json"))
        if not isinstance(record, dict):
            raise NotFoundError(
                f"No batch found with id '{batch_id[:80]}'.",
                param="batch_id",
                code="batch_not_found",
            )
        return record

    async def get(self, owner: str, batch_id: str) -> dict[str, Any]:
        """The caller's batch object; another caller's (or an unknown id) is a 404."""
        return await self._view(owner, await self._record(owner, batch_id))

    async def _view(
        self, owner: str, record: dict[str, Any], *, delivery: bool = True
    ) -> dict[str, Any]:
        """The batch object; with `delivery`, a batch with a webhook_url shows its delivery (two
        Step Functions reads once it has ended: not for every batch of a listing)."""
        batch = await self._status(owner, record)
        if delivery and record.get("webhook"):
            batch["webhook"] = await self._delivery(record["id"], batch["status"] in ENDED)
        return batch

    async def _status(self, owner: str, record: dict[str, Any]) -> dict[str, Any]:
        batch_id = record["id"]
        if record["status"] == "validating":
            key = self.store.run_key(owner, batch_id, "validated.json")
            record = {**record, **(await self.store.get_json(key) or {})}
        if record["status"] == "failed":
            return self._render(record, None, None, [])
        cancel = await self.store.get_json(self.store.run_key(owner, batch_id, "cancel.json"))
        if record["status"] == "validating":
            return self._render(record, None, cancel, [])
        final = await self.store.get_json(self.store.run_key(owner, batch_id, "final.json"))
        if final is not None:
            return self._render(record, final, None, [])
        ending = await self.store.get_json(self.store.run_key(owner, batch_id, "finalizing.json"))
        results = await self.results(owner, batch_id)
        batch = self._render(record, None, cancel, results)
        if ending is not None and cancel is None:
            batch.update(status="finalizing", finalizing_at=ending["finalizing_at"])
        return batch

    async def _delivery(self, batch_id: str, ended: bool) -> dict[str, Any]:
        """The batch's webhook delivery as its run's history tells it (`pending` until the
        batch has ended; as it was when the history cannot be read)."""
        pending = {"status": "pending", "attempts": 0, "last_status_code": None}
        read = getattr(self.runner, "history", None)
        if not ended or read is None:
            return pending
        try:
            execution = await anyio.to_thread.run_sync(self.runner.describe, batch_id)
            events = await anyio.to_thread.run_sync(read, batch_id)
        except Exception as exc:  # the batch's status stands without it
            logger.warning("batch history unread", extra={"error": type(exc).__name__})
            return pending
        running = execution is not None and execution.status == "RUNNING"
        webhook: dict[str, Any] = read_delivery(events, running)["webhook"]
        return webhook

    async def results(self, owner: str, batch_id: str) -> list[str]:
        """The names of the item results written so far."""
        prefix = self.store.run_key(owner, batch_id, "results/")
        return [key[len(prefix) - len("results/") :] for key in await self.store.keys(prefix)]

    def _render(
        self,
        record: dict[str, Any],
        final: dict[str, Any] | None,
        cancel: dict[str, Any] | None,
        results: list[str],
    ) -> dict[str, Any]:
        batch = {name: value for name, value in record.items() if name not in _PRIVATE}
        total = int(record.get("total", 0))
        if final is not None:
            batch.update(final)  # status, timestamps, files and request_counts
            return batch
        if cancel is not None:
            batch.update(status="cancelling", cancelling_at=cancel["cancelling_at"])
        failed = sum(1 for name in results if name.endswith(FAILED))
        done = sum(1 for name in results if name.endswith(OK))
        batch["request_counts"] = {"total": total, "completed": done, "failed": failed}
        return batch

    async def cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        """Stop new submissions of the batch's items (those at the provider finish and are
        kept): `cancelling` until its run has written what it has."""
        record = await self._record(owner, batch_id)
        view = await self._view(owner, record)
        if view["status"] in ENDED:
            raise InvalidRequestError(
                f"Cannot cancel a batch with status '{view['status']}'.",
                code="batch_not_cancellable",
            )
        if view["status"] != "cancelling":
            key = self.store.run_key(owner, batch_id, "cancel.json")
            await self.store.put_json(key, {"cancelling_at": int(time.time())})
            logger.info("batch cancelled", extra={"batch_id": batch_id})
        await self._fence(owner, batch_id)
        return await self._view(owner, record)

    async def _fence(self, owner: str, batch_id: str) -> None:
        """Wait until no item is between its last look at the cancel mark and its submission
        (its `SUBMITTING` marker, written before that look: one that read no mark is seen
        here), at most `CANCEL_FENCE` seconds: after the answer, nothing more is submitted."""
        prefix = self.store.run_key(owner, batch_id, SUBMITTING)
        with anyio.move_on_after(CANCEL_FENCE):
            for _ in range(int(CANCEL_FENCE / FENCE_PAUSE)):
                if not await self.store.keys(prefix):
                    return
                await anyio.sleep(FENCE_PAUSE)

    async def list(self, owner: str, *, after: str | None, limit: int) -> dict[str, Any]:
        """The caller's batches, newest first, `limit` after the one `after` names."""
        records = [
            await self._record(owner, batch_id) for batch_id in await self.store.batch_ids(owner)
        ]
        records.sort(key=lambda record: (-int(record["created_at"]), record["id"]))
        if after:
            ids = [record["id"] for record in records]
            records = records[ids.index(after) + 1 :] if after in ids else []
        page = [await self._view(owner, r, delivery=False) for r in records[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(records) > limit,
        }


def _read_body(body: dict[str, Any]) -> tuple[Endpoint, str, str, dict[str, str] | None]:
    """`POST /v1/batches`'s fields, checked."""
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise InvalidRequestError(
            "'input_file_id' is required: the id of a file uploaded with purpose 'batch'.",
            param="input_file_id",
            code="missing_required_parameter",
        )
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidRequestError(
            f"'endpoint' must be one of {', '.join(ENDPOINTS)}.",
            param="endpoint",
            code="invalid_endpoint",
        )
    window = body.get("completion_window", "24h")
    if window not in WINDOWS:
        raise InvalidRequestError(
            "'completion_window' must be '24h'.", param="completion_window", code="invalid_value"
        )
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= MAX_METADATA
        and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise InvalidRequestError(
            f"'metadata' must be an object of at most {MAX_METADATA} string pairs "
            "(keys up to 64 characters, values up to 512).",
            param="metadata",
            code="invalid_metadata",
        )
    return endpoint, file_id, window, metadata
