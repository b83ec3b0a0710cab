"""`make run`'s memory across restarts: stored images and finished jobs, in a local folder.

moto keeps its buckets and executions in memory, so without this a restart of `make run` breaks
every picture a local chat history links to. The stand-ins' process (`imagegw.frontends.local`)
keeps:

- `images/`: every object of the bucket under `images/` (the gateway's stored copies, the
  links it hands out), one file each, put back in the bucket at start;
- `jobs/`: every *ended* durable job (its execution's name, status, input, output, error and
  dates), one JSON file each, put back in moto's Step Functions at start, so
  `GET /v1/jobs/{id}` answers after a restart as before it (jobs still running when the
  process stopped are not kept: their provider task is lost with the process).

- `access/`: the gateway-key stand-ins (README "Sharing a deployment"): every item of the
  access table (key records under their hashes, usage, set-aside tokens, estimates) and the
  access secret (the hash pepper and the token pools), put back at start, so the keys issued
  and the tokens added with `make key` / `make token` keep working after a restart. The secret
  holds provider tokens: its file is readable by its owner only (0600).

Uploaded input images (`uploads/`) are not kept: they only live while a generation runs.
What is new is written every `interval` seconds and when the stand-ins stop, so even a killed
process loses at most a few seconds. The folder is `.local-state/` at the repository's root
(LOCAL_STATE_DIR to move it; ignored by git); `make reset` (or `make run RESET=1`) empties it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

RESULTS: Final = "images/"
#: seconds between two saves while the stand-ins run
INTERVAL: Final = 5.0
#: execution statuses that are over (`imagegw.infra.executions.ENDED`)
ENDED: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})
logger = logging.getLogger("imagegw.infra.localstate")


def default_dir(repo_root: Path) -> Path:
    return Path(os.environ.get("LOCAL_STATE_DIR") or repo_root / ".local-state")


def _safe(name: str) -> bool:
    """A key or execution name that maps to a file inside the folder (no `..`, no `/`)."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _without_key(text: Any) -> Any:
    """A job's execution input without its sealed provider key: an ended job needs none, and
    no key, even sealed, is written to the disk."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return None
    if isinstance(data, dict) and "key" in data:
        data["key"] = ""
    return json.dumps(data)


def _date(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _write_private(target: Path, text: str) -> None:
    """`text` in `target`, readable by its owner only, replaced whole (never half-written),
    untouched when it holds that already."""
    with contextlib.suppress(OSError):
        if target.read_text() == text:
            return
    partial = target.with_name(target.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    partial.replace(target)


def _parse_date(value: Any) -> datetime:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return datetime.now(UTC)


class LocalState:
    """The folder, the bucket (a boto3 S3 client) and, when jobs run, the state machine."""

    def __init__(self, folder: Path, s3: Any, bucket: str) -> None:
        self.folder = folder
        self.s3 = s3
        self.bucket = bucket
        self.images = folder / "images"
        self.jobs = folder / "jobs"
        self.machine: tuple[Any, str] | None = None  # (stepfunctions client, machine ARN)
        self.access_dir = folder / "access"
        #: (dynamodb client, table name, secretsmanager client, secret id) when keys run
        self.access: tuple[Any, str, Any, str] | None = None
        self.restored_keys = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------ restore

    def restore_images(self) -> int:
        """Put every kept image back in the bucket; how many."""
        count = 0
        if not self.images.is_dir():
            return 0
        for path in sorted(self.images.iterdir()):
            if not (path.is_file() and _safe(path.name)):
                continue
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self.s3.put_object(
                Bucket=self.bucket,
                Key=RESULTS + path.name,
                Body=path.read_bytes(),
                ContentType=mime,
            )
            count += 1
        return count

    def restore_jobs(self, sfn: Any, machine_arn: str, account: str, region: str) -> int:
        """Put every kept ended job back in moto's Step Functions as an ended execution of
        `machine_arn`; how many. Later saves cover the jobs of this run too."""
        from moto.stepfunctions.models import Execution
        from moto.stepfunctions.responses import get_backend

        self.machine = (sfn, machine_arn)
        if not self.jobs.is_dir():
            return 0
        machine = get_backend(account, region).describe_state_machine(machine_arn)
        count = 0
        for path in sorted(self.jobs.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                logger.warning("unreadable kept job %s: skipped", path.name)
                continue
            if record.get("status") not in ENDED or not _safe(str(record.get("name", ""))):
                continue
            execution = Execution(
                region_name=region,
                account_id=account,
                state_machine_name=machine.name,
                execution_name=record["name"],
                state_machine_arn=machine_arn,
                execution_input=record.get("input") or "{}",
            )
            execution.status = record["status"]
            execution.output = record.get("output")
            execution.error = record.get("error")
            execution.cause = record.get("cause")
            execution.start_date = _parse_date(record.get("started"))
            execution.stop_date = _parse_date(record.get("stopped"))
            machine.executions.append(execution)
            count += 1
        return count

    def kept_secret(self) -> str | None:
        """The access secret's value kept by an earlier run (its pepper and token pools), or
        None: the stand-in then makes a fresh one."""
        path = self.access_dir / "secret.json"
        try:
            value = path.read_text()
            json.loads(value)
        except (OSError, ValueError):
            return None
        return value

    def restore_access(self, dynamodb: Any, table: str, secrets: Any, secret_id: str) -> int:
        """Put the kept access table's items back in `table` (the secret was made from
        `kept_secret`); how many gateway keys. Later saves cover them."""
        self.access = (dynamodb, table, secrets, secret_id)
        try:
            items = json.loads((self.access_dir / "items.json").read_text())
        except (OSError, ValueError):
            return 0
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("pk"), dict):
                dynamodb.put_item(TableName=table, Item=item)
                self.restored_keys += str(item["pk"].get("S", "")).startswith("key#")
        return self.restored_keys

    # --------------------------------------------------------------------------- save

    def save(self) -> None:
        """Write what is new since the last save: images, ended jobs, the access state."""
        with self._lock:
            self._save_images()
            if self.machine is not None:
                self._save_jobs(*self.machine)
            if self.access is not None:
                self._save_access(*self.access)

    def _save_access(self, dynamodb: Any, table: str, secrets: Any, secret_id: str) -> None:
        items: list[dict[str, Any]] = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            items += page.get("Items", [])
        items.sort(key=lambda item: str(item.get("pk", {}).get("S", "")))
        secret = secrets.get_secret_value(SecretId=secret_id)["SecretString"]
        self.access_dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.access_dir / "items.json", json.dumps(items))
        _write_private(self.access_dir / "secret.json", secret)

    def _save_images(self) -> None:
        self.images.mkdir(parents=True, exist_ok=True)
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=RESULTS
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"][len(RESULTS) :]
                target = self.images / name
                if not _safe(name) or target.exists():
                    continue
                body = self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                partial = target.with_name(target.name + ".partial")
                partial.write_bytes(body)
                partial.replace(target)  # never a half-written image under its own name

    def _save_jobs(self, sfn: Any, machine_arn: str) -> None:
        self.jobs.mkdir(parents=True, exist_ok=True)
        pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=machine_arn)
        for page in pages:
            for item in page.get("executions", []):
                name = str(item["name"])
                target = self.jobs / f"{name}.json"
                if item["status"] not in ENDED or not _safe(name) or target.exists():
                    continue
                answer = sfn.describe_execution(executionArn=item["executionArn"])
                record = {
                    "name": name,
                    "status": answer["status"],
                    "input": _without_key(answer.get("input")),
                    "output": answer.get("output"),
                    "error": answer.get("error"),
                    "cause": answer.get("cause"),
                    "started": _date(answer.get("startDate")),
                    "stopped": _date(answer.get("stopDate")),
                }
                partial = target.with_name(target.name + ".partial")
                partial.write_text(json.dumps(record))
                partial.replace(target)

    # ------------------------------------------------------------------------ running

    def keep(self, interval: float = INTERVAL) -> None:
        """Save every `interval` seconds in a daemon thread, until `close`."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.save()
                except Exception:  # the stand-ins keep serving; the next round retries
                    logger.warning("saving the local state failed", exc_info=True)

        self._thread = threading.Thread(target=loop, name="local-state", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the saving thread and save once more."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.save()
