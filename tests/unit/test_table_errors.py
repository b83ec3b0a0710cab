"""The access table tells DynamoDB's refusals apart by their error code, not by the class of a
client's `exceptions`: botocore makes those classes on a client's first use, and threads that
use a new client at once can each make their own, so a refusal raised in one thread was not the
class another caught. The quota race test met it on a loaded CI run: a full quota surfaced as a
raw ConditionalCheckFailedException (a 500) instead of QuotaFull (a 429)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from imagegw.access.table import AccessTable, QuotaFull

NOON = 1_764_504_000


def refusal(code: str, **extra: Any) -> ClientError:
    """A refusal as another copy of the client's exception classes would raise it: a
    ClientError with the code, not the class `client.exceptions` hands out now."""
    return ClientError({"Error": {"Code": code, "Message": "refused"}, **extra}, "Op")


def table_raising(monkeypatch: pytest.MonkeyPatch, name: str, error: Exception) -> AccessTable:
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )

    def refuse(**_kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(client, name, refuse)
    return AccessTable("t", "us-east-1", client=client)


def test_a_full_quota_is_quota_full_whatever_class_the_refusal_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = table_raising(monkeypatch, "update_item", refusal("ConditionalCheckFailedException"))
    with pytest.raises(QuotaFull):
        table.reserve("key", "m", 1, 5, NOON)


def test_a_job_settled_already_is_told_apart_whatever_class_the_refusal_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cancelled = refusal(
        "TransactionCanceledException",
        CancellationReasons=[{"Code": "ConditionalCheckFailed"}, {"Code": "None"}],
    )
    table = table_raising(monkeypatch, "transact_write_items", cancelled)
    assert table.settle_job("job-1", "key", "m", 2, 1, NOON) is False


def test_other_refusals_still_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    table = table_raising(monkeypatch, "update_item", refusal("AccessDeniedException"))
    with pytest.raises(ClientError):
        table.reserve("key", "m", 1, 5, NOON)
