"""The AWS clients of the gateway's own code (the bucket, the access table, KMS, Step
Functions): botocore's low-level clients, all made from one botocore session per process.

boto3's `boto3.client(...)` is this and more: importing boto3 imports s3transfer (its managed
transfers, with multiprocessing) and boto3's resource layer, and an S3 client of boto3 gets
s3transfer's methods (`upload_file`, ...) injected when it is made; the gateway uses none of
them. On a cold instance that was about a tenth of the CPU its first stored generation spent on
the SDK (docs/benchmarks.md). A botocore client makes the same requests, the same presigned URLs
and the same POST policies (tests/unit/test_aws_clients.py checks the signed ones), but for the
SDK's name in the User-Agent header (botocore's, not boto3's).

One session, as boto3's default session is one: the clients share its loader's cache (the
endpoints, the partitions, the defaults every client reads) and its credentials (the
environment's on Lambda: botocore's default chain). A botocore session is not safe to make
clients from in several threads at once (the S3 client is made in a background thread while a
worker thread may make the table's), so clients are made one at a time (`client`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.config import Config
    from botocore.session import Session

_LOCK = threading.Lock()
_SESSION: list[Session] = []


def session() -> Session:
    """The process's botocore session (made at the first call)."""
    with _LOCK:
        return _session()


def _session() -> Session:
    if not _SESSION:
        import botocore.session

        _SESSION.append(botocore.session.get_session())
    return _SESSION[0]


def client(
    service: str,
    *,
    region_name: str | None = None,
    endpoint_url: str | None = None,
    config: Config | None = None,
) -> Any:
    """A low-level client of `service` from the process's session, made as `boto3.client`
    makes one (same arguments), one at a time."""
    with _LOCK:
        return _session().create_client(
            service, region_name=region_name, endpoint_url=endpoint_url, config=config
        )
