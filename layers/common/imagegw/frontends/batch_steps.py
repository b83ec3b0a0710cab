"""The batch state machine's own steps (statemachine/image_batch.asl.json, function
functions/batch_step): each item of a batch is one durable job of the image-job lifecycle,
run by the job's own steps (`imagegw.runners.stepfunctions.steps`), wrapped where an item
starts and ends so that it takes no more state transitions than the job alone:

- `validate` (the batch's first state, before anything is paid): the input file read and every
  line checked as the single request would be (`batch_lines.check_file`, a gateway key's
  allowed models included); the items written as a JSON array for the map, or the batch
  `failed` with `errors.data[]` (line numbers). It writes `validated.json`: until then the
  batch shows `validating`. A batch cancelled by then answers `cancelled`: the machine goes
  straight to Finalize, which writes its items skipped, and runs no item.
- `submit` (the item's Submit): the item (a line planned when the batch was created,
  `batch_lines.Item`) as a job's input (the job's id derived from the batch's and the item's,
  input images placed as a durable job's are, the provider key sealed for that job, a gateway
  key's quota reserved), then submitted by the job's Submit. A cancelled batch, or one past
  its completion window, skips the item: nothing is submitted.
- `store` (the item's Store): the job's Store, then the item's line in the bucket
  (`results/`): the body a single request answers (lasting links, or a chat completion).
- `record`: an item that ended without images: the OpenAI-shaped error with its status, or
  why it was skipped.
- `finalize`: the output file (one line per succeeded item) and the error file (one line per
  failed or skipped item; every item of a batch cancelled while validated), as files of the
  batch's owner, and the batch's end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, Final

import anyio.to_thread
from pydantic import SecretStr

from imagegw.access.gate import Reservation
from imagegw.errors import AuthenticationError, GatewayError, StorageError
from imagegw.frontends import job_answers
from imagegw.frontends.batch_lines import Item, check_file
from imagegw.frontends.batches import FAILED, OK, SKIPPED, SUBMITTING, result_name
from imagegw.frontends.routes.files import file_object, new_file_id
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.log import logger
from imagegw.runners.gateway import Gateway
from imagegw.runners.quota import settle
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.schema import (
    InputRef,
    JobInput,
    JobOutput,
    JobQuota,
    JobSpec,
    error_body,
)
from imagegw.runners.stepfunctions.service import Jobs, JobView
from imagegw.runners.stepfunctions.steps import POOL_REF, retry_later

_JOB_DOMAIN: Final = "imagegw-batch-item\0"
#: item results Finalize reads at once (each a GET in a worker thread)
READ_AT_ONCE: Final = 32


def item_job_id(batch_id: str, index: int) -> str:
    digest = hashlib.sha256(f"{_JOB_DOMAIN}{batch_id}\0{index}".encode()).hexdigest()
    return f"job-{digest[:32]}"


def status_of(body: Mapping[str, Any]) -> int:
    """The HTTP status a single request would have answered with this error body."""
    kind = body.get("error", {}).get("type")
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop(0)
        if cls.error_type == kind:
            return cls.status
        pending += cls.__subclasses__()
    return 500


def _store(kit: Gateway) -> BatchStore:
    return BatchStore(kit.store)


def _batch_error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """An error of the whole batch in `errors.data[]` (no line)."""
    return {"code": code, "message": message, "param": param, "line": None}


async def validate(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """The batch's input file checked (nothing is paid before): `{"status": "in_progress",
    "total"}` with the items written for the map, or `{"status": "failed", "total": 0}` with
    every bad line in `validated.json`'s `errors.data[]`."""
    batch = event["batch"]
    batch_id, owner = batch["id"], batch["owner"]
    store = _store(kit)
    record = await store.get_json(store.run_key(owner, batch_id, "batch.json"))
    if isinstance(record, dict):
        errors, items = await _check(record, batch.get("quota_key"), kit)
    else:  # `POST /v1/batches` writes it before the run starts: an event made by hand
        message = f"No batch record for {batch_id} in the bucket: create the batch first."
        errors, items = [_batch_error("batch_not_found", message)], ()
    now = int(time.time())
    if errors:
        state: dict[str, Any] = {
            "status": "failed",
            "failed_at": now,
            "total": 0,
            "errors": {"object": "list", "data": errors},
        }
    else:
        body = json.dumps([item.model_dump(mode="json") for item in items]).encode()
        await store.put(store.run_key(owner, batch_id, "items.json"), body)
        state = {"status": "in_progress", "in_progress_at": now, "total": len(items)}
    await store.put_json(store.run_key(owner, batch_id, "validated.json"), state)
    # cancelled while its lines were checked: its items are not run one by one to be skipped
    # (each a map run and its Lambda calls): Finalize writes them skipped (`finalize`)
    ran = state["status"]
    if ran == "in_progress" and await _cancelled(store, batch):
        ran = "cancelled"
    logger.info("batch validated", extra={"batch_id": batch_id, "status": ran, "items": len(items)})
    return {"status": ran, "total": state["total"]}


async def _check(
    record: Mapping[str, Any], key_hash: str | None, kit: Gateway
) -> tuple[list[dict[str, Any]], tuple[Item, ...]]:
    """The errors of the batch's input file (each bad line's), and its items when none."""
    store = _store(kit)
    content = await store.file_content(record["owner"], record["input_file_id"])
    if content is None:
        message = "The input file was deleted before the batch was validated."
        return [_batch_error("file_not_found", message, "input_file_id")], ()
    caller = None
    try:
        if key_hash:  # a gateway key's batch: its allowed models as they stand now
            caller = await kit.access.keyed_caller(key_hash)
            if caller is None:
                message = "The gateway key that made this batch is revoked or expired."
                return [_batch_error("invalid_api_key", message)], ()
        provider = kit.provider(record["provider"])
    except GatewayError as exc:
        return [_batch_error(exc.code or "invalid_request", exc.message, exc.param)], ()
    # 50,000 lines planned: in a worker thread, the event loop stays free
    checked = await anyio.to_thread.run_sync(
        partial(
            check_file,
            content,
            endpoint=record["endpoint"],
            provider=provider,
            max_items=kit.settings.batch_max_items,
            caller=caller,
        )
    )
    return [error.body() for error in checked.errors], checked.items


def _failure(exc: GatewayError) -> dict[str, str]:
    return {"Error": type(exc).__name__, "Cause": json.dumps(exc.body())}


async def _cancelled(store: BatchStore, batch: Mapping[str, Any]) -> bool:
    """Whether the batch's owner cancelled it (its `cancel.json`); the bucket failing is
    passing trouble before anything is paid: the step is run again (`TransientJobError`)."""
    try:
        mark = await store.get(store.run_key(batch["owner"], batch["id"], "cancel.json"))
    except StorageError as exc:
        raise retry_later(exc) from None
    return mark is not None


async def submit(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """An item's Submit: the item as a durable job (`_prepare`), submitted by the job's own
    step (`steps.submit`), in one step. Its state: the job's input and progress beside the
    item's place (`item`, `batch`); or no progress, with `skip` (cancelled, past the window:
    nothing submitted) or `failure` (the gateway refused it: its key revoked, its quota
    spent), which Record writes.

    Cancel stops submissions at once: the cancel mark is read again right before the
    provider is called, under a marker (`submitting/{index}`) that the cancel waits on
    (`Batches.cancel`), so no item that read no mark submits after the cancel's answer."""
    item = Item.model_validate(event["item"])
    batch = dict(event["batch"])
    here = {"item": {"index": item.index, "custom_id": item.custom_id}, "batch": batch}
    store = _store(kit)
    if time.time() >= float(batch["expires_at"]):
        return {**here, "skip": "expired"}
    if await _cancelled(store, batch):  # before any work: a cancelled batch's items are cheap
        return {**here, "skip": "cancelled"}
    try:
        payload, opened, reserved = await _prepare(event, item, batch, kit)
    except GatewayError as exc:
        if exc.retryable is True:  # the bucket, KMS or the key table failing for a moment
            raise retry_later(exc) from None
        return {**here, "failure": _failure(exc)}
    marker = store.run_key(batch["owner"], batch["id"], f"{SUBMITTING}{item.index:06d}")
    try:
        try:
            await store.put(marker, b"{}")
        except StorageError as exc:
            raise retry_later(exc) from None
        try:
            if await _cancelled(store, batch):
                await settle(reserved, 0)
                return {**here, "skip": "cancelled"}
            submitted = {name: payload[name] for name in ("job", "key", "wait_seconds")}
            progress = await steps.submit(submitted, kit, opened)
        finally:
            await _unmark(store, marker)
    except BaseException:
        # nothing recorded for this attempt: its reservation given back (a retried Submit
        # reserves anew; an item that fails is recorded without images)
        await settle(reserved, 0)
        raise
    return {**payload, **here, "progress": progress}


async def _unmark(store: BatchStore, marker: str) -> None:
    """The submission is made (or not): the cancel need not wait on it. Never raises: the
    item's outcome must not be lost to the bucket (a marker left makes a cancel wait its
    bound, `CANCEL_FENCE`)."""
    try:
        await store.delete(marker)
    except StorageError as exc:
        logger.warning("batch item marker not removed", extra={"error": exc.message})


async def _prepare(
    event: Mapping[str, Any], item: Item, batch: dict[str, Any], kit: Gateway
) -> tuple[dict[str, Any], SecretStr | None, Reservation | None]:
    """The item as a job's input (`JobInput`): the job's id derived from the batch's and the
    item's, the provider key sealed for that job (for its Polls), a gateway key's quota
    reserved, input images placed; with the client's key open (None: a pool reference, which
    the job's Submit leases) and the reservation (given back if the item submits nothing)."""
    batch_id, owner = batch["id"], batch["owner"]
    job_id = item_job_id(batch_id, item.index)
    sealed = str(event["key"])
    opened: SecretStr | None = None
    if not sealed.startswith(POOL_REF):
        opened = kit.sealer.open(sealed, batch_id)
        sealed = kit.sealer.seal(opened, job_id)
    job = item.job
    reserved = await _reserve(batch.get("quota_key"), job.model, job.n, kit)
    try:
        placed = await kit.store.place_all(job.images)
    except BaseException:
        await settle(reserved, 0)
        raise
    spec = JobSpec(
        id=job_id,
        owner=owner,
        fingerprint=hashlib.sha256(job.model_dump_json().encode()).hexdigest(),
        created=int(time.time()),
        provider=job.provider,
        model=job.model,
        kind=job.kind,
        prompt=job.prompt,
        options=job.options,
        n=job.n,
        images=tuple(InputRef(key=p.key, url=p.url) for p in placed),
        response_format=job.response_format,
        api=job.api,
        quota=None if reserved is None else JobQuota(key=reserved.record.hash, at=reserved.at),
    )
    payload = JobInput(
        job=spec,
        key=sealed,
        wait_seconds=int(event["wait_seconds"]),
        max_polls=int(event["max_polls"]),
    ).model_dump(mode="json")
    return payload, opened, reserved


async def _reserve(key_hash: str | None, model: str, n: int, kit: Gateway) -> Reservation | None:
    """A gateway key's batch item counts on the key's quota as a durable job does (its job
    settles it when it ends); the key's 401 once revoked, its 429 once the day's quota is spent
    (the item fails with it; the batch goes on)."""
    if not key_hash:
        return None
    caller = await kit.access.keyed_caller(key_hash)
    if caller is None:
        raise AuthenticationError(
            "The gateway key that made this batch is revoked or expired.", code="invalid_api_key"
        )
    return await kit.access.reserve(caller, model, n)


async def store(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """An item's Store: the job's (`steps.store`: the images copied into the bucket, the
    quota settled), then the item's line written (`record`): the step that ends the item."""
    job = {"job": event["job"], "progress": event["progress"]}
    output = await steps.store(job, kit)
    return await record({"state": {**event, "output": output}}, kit)


async def record(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """Write an item's outcome to the bucket (`results/`): the body a single request answers
    (an item's Store), or its error: skipped, refused, failed at the provider (`progress`) or
    a step failed beyond its retries (`failure`)."""
    state = event["state"]
    item, batch = state["item"], state["batch"]
    index, custom_id = int(item["index"]), str(item["custom_id"])
    batch_id, owner = batch["id"], batch["owner"]
    line = _line(batch_id, index, custom_id)
    request_id = item_job_id(batch_id, index)
    ok = False
    name: str
    if "skip" in state:
        line.update(_skipped(state["skip"]))
        name = f"results/{index:06d}{SKIPPED}"
    elif "failure" in state or "output" not in state:
        progress = state.get("progress") or {}
        failure = state.get("failure") or {
            "Error": progress.get("error"),
            "Cause": progress.get("cause"),
        }
        body = error_body(failure.get("Error"), failure.get("Cause"))
        response = {"status_code": status_of(body), "request_id": request_id, "body": body}
        line.update(response=response, error=None)
        name = result_name(index, ok=False)
    else:
        spec = JobSpec.model_validate(state["job"])
        output = JobOutput.model_validate(state["output"])
        view = JobView(
            id=spec.id,
            status="succeeded",
            created=spec.created,
            model=spec.model,
            response_format=spec.response_format,
            n=spec.n,
            output=output,
            api=spec.api,
        )
        jobs = Jobs(kit.settings, kit.store, sealer=kit.sealer)
        rendered = await job_answers.render(
            jobs, view, base_url=str(batch["base_url"]), fetcher=kit.result_fetcher
        )
        if spec.api == "images":
            body = {"created": spec.created, "data": rendered["data"]}
        else:
            body = {key: value for key, value in rendered.items() if key != "status"}
        line.update(
            response={"status_code": 200, "request_id": request_id, "body": body}, error=None
        )
        name = result_name(index, ok=True)
        ok = True
    await _store(kit).put_json(_store(kit).run_key(owner, batch_id, name), line)
    return {"index": index, "ok": ok}


def _line(batch_id: str, index: int, custom_id: str) -> dict[str, Any]:
    """The start of an item's line in the output or error file: its id and the caller's."""
    return {"id": f"batch_req_{item_job_id(batch_id, index)[4:28]}", "custom_id": custom_id}


def _skipped(why: str) -> dict[str, Any]:
    """An item's line where it was not submitted: `why` is `cancelled` or `expired`."""
    message = (
        "The batch was cancelled before this request was submitted."
        if why == "cancelled"
        else "The batch's completion window ended before this request was submitted."
    )
    return {"response": None, "error": {"code": f"batch_{why}", "message": message}}


def _skipped_lines(batch_id: str, items: Any) -> list[bytes]:
    """The lines of a batch's items, none submitted: cancelled before its items ran."""
    lines = []
    for item in items if isinstance(items, list) else ():
        line = _line(batch_id, int(item["index"]), str(item["custom_id"]))
        line.update(_skipped("cancelled"))  # as `record` writes it (`BatchStore.put_json`)
        lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    return lines


async def finalize(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
    """The output and error files and the batch's end (`final.json`): `{"status", "event"}`,
    the event its webhook_url gets (`batch.completed`, `batch.cancelled`, `batch.expired`)."""
    batch = event["batch"]
    batch_id, owner = batch["id"], batch["owner"]
    store = _store(kit)
    now = int(time.time())
    await store.put_json(store.run_key(owner, batch_id, "finalizing.json"), {"finalizing_at": now})
    prefix = store.run_key(owner, batch_id, "results/")
    names = sorted(await store.keys(prefix))
    done: list[bytes] = []
    failed: list[bytes] = []
    expired = False
    read: list[bytes | None] = []
    for at in range(0, len(names), READ_AT_ONCE):  # 50,000 results: read side by side
        read += await asyncio.gather(*(store.get(key) for key in names[at : at + READ_AT_ONCE]))
    for key, data in zip(names, read, strict=True):
        if data is None:
            continue
        text = data.strip() + b"\n"
        if key.endswith(OK):
            done.append(text)
        else:
            failed.append(text)
            expired = expired or b'"batch_expired"' in data
    cancelled = await store.get(store.run_key(owner, batch_id, "cancel.json")) is not None
    if event.get("validated") == "cancelled":  # cancelled while validating: no item ran
        cancelled = True
        failed += _skipped_lines(
            batch_id, await store.get_json(store.run_key(owner, batch_id, "items.json"))
        )
    output_id = await _save(store, owner, f"{batch_id}_output.jsonl", done)
    error_id = await _save(store, owner, f"{batch_id}_error.jsonl", failed)
    status = "cancelled" if cancelled else "expired" if expired else "completed"
    # the error file holds the failed items and those not submitted (cancelled or expired),
    # which `request_counts` counts as neither completed nor failed
    failures = sum(1 for key in names if key.endswith(FAILED))
    end = {
        "status": status,
        "finalizing_at": now,
        f"{status}_at": int(time.time()),
        "output_file_id": output_id,
        "error_file_id": error_id,
        "request_counts": {
            "total": int(event.get("total", batch.get("total", 0))),
            "completed": len(done),
            "failed": failures,
        },
    }
    await store.put_json(store.run_key(owner, batch_id, "final.json"), end)
    logger.info(
        "batch ended",
        extra={
            "batch_id": batch_id,
            "status": status,
            "completed": len(done),
            "failed": failures,
            "not_submitted": len(failed) - failures,
        },
    )
    return {"status": status, "event": f"batch.{status}"}


async def _save(store: BatchStore, owner: str, filename: str, lines: list[bytes]) -> str | None:
    if not lines:
        return None
    content = b"".join(lines)
    meta = file_object(new_file_id(), size=len(content), filename=filename, purpose="batch_output")
    await store.save_file(owner, meta, content)
    return str(meta["id"])


STEPS: Final = {
    "validate": validate,
    "submit": submit,
    "store": store,
    "record": record,
    "finalize": finalize,
}
