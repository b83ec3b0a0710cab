"""The batch state machine's own steps (`imagegw.frontends.batch_steps`) against moto's S3 on
loopback: what an item does once its batch is cancelled or past its window, and what the
batch's end writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from fakes.modelscope import FakeModelScope
from imagegw.frontends import batch_steps
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.config import Settings
from imagegw.infra.sealer import KeySealer
from imagegw.runners.gateway import Gateway
from imagegw.runners.stepfunctions.service import owner_of

OWNER = owner_of(f"ms-{time.time_ns()}")


class NoKms:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"KMS {name} called")


def item(index: int) -> dict[str, Any]:
    job = {
        "provider": "modelscope",
        "model": "Qwen/Qwen-Image",
        "kind": "image",
        "prompt": f"take {index}",
        "options": {},
        "n": 1,
    }
    return {"index": index, "custom_id": f"req-{index}", "job": job}


def event(batch_id: str, index: int, *, expires_at: float) -> dict[str, Any]:
    batch = {"id": batch_id, "owner": OWNER, "expires_at": expires_at, "total": 4}
    return {
        "step": "prepare",
        "item": item(index),
        "batch": {**batch, "base_url": "https://gw"},
        "key": "sealed",
        "wait_seconds": 0,
        "max_polls": 10,
    }


def run(step: Any, payload: dict[str, Any], kit: Gateway) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        answer: dict[str, Any] = await step(payload, kit)
        return answer

    return anyio.run(main)


@pytest.fixture
def kit(make_settings: Callable[..., Settings]) -> Gateway:
    return Gateway(make_settings(job_key_id="k"), sealer=KeySealer("k", "r", NoKms()))


def test_items_of_a_batch_past_its_window_are_skipped_and_the_batch_expires(
    kit: Gateway, fake_ms: FakeModelScope
) -> None:
    batch_id = "batch_" + "a1" * 12
    store = BatchStore(kit.store)
    # Given two items that ran before the window ended (one made its image, one failed)
    ok = {"id": "batch_req_1", "custom_id": "req-0", "response": {"status_code": 200}}
    failed = {"id": "batch_req_2", "custom_id": "req-1", "response": {"status_code": 502}}
    for name, line in (("results/000000.ok.json", ok), ("results/000001.failed.json", failed)):
        anyio.run(store.put_json, store.run_key(OWNER, batch_id, name), line)
    # When the rest start after it ended
    for index in (2, 3):
        answer = run(batch_steps.prepare, event(batch_id, index, expires_at=time.time() - 1), kit)
        assert answer["skip"] == "expired" and "job" not in answer
        run(batch_steps.record, {"state": answer}, kit)
    # Then nothing reached the provider (no key was even opened: NoKms)
    assert fake_ms.submissions == []
    # And the batch ends expired, with what was made and an error line per other item
    batch = {"id": batch_id, "owner": OWNER, "total": 4}
    ended = run(batch_steps.finalize, {"batch": batch}, kit)
    assert ended == {"status": "expired", "event": "batch.expired"}  # its webhook's event
    final = anyio.run(store.get_json, store.run_key(OWNER, batch_id, "final.json"))
    assert final["request_counts"] == {"total": 4, "completed": 1, "failed": 1}
    assert final["expired_at"] >= final["finalizing_at"]
    output = anyio.run(store.file_content, OWNER, final["output_file_id"])
    errors = anyio.run(store.file_content, OWNER, final["error_file_id"])
    assert [json.loads(x)["custom_id"] for x in output.splitlines()] == ["req-0"]
    lines = [json.loads(x) for x in errors.splitlines()]
    assert [x["custom_id"] for x in lines] == ["req-1", "req-2", "req-3"]
    assert [x["error"]["code"] for x in lines[1:]] == ["batch_expired", "batch_expired"]


def test_items_of_a_cancelled_batch_are_not_submitted(
    kit: Gateway, fake_ms: FakeModelScope
) -> None:
    batch_id = "batch_" + "b2" * 12
    store = BatchStore(kit.store)
    anyio.run(store.put_json, store.run_key(OWNER, batch_id, "cancel.json"), {"cancelling_at": 1})
    answer = run(batch_steps.prepare, event(batch_id, 0, expires_at=time.time() + 60), kit)
    assert answer["skip"] == "cancelled"
    assert fake_ms.submissions == []


@pytest.mark.parametrize(
    ("kind", "status"),
    [("invalid_request_error", 400), ("rate_limit_error", 429), ("server_error", 500)],
)
def test_an_items_error_keeps_the_status_a_single_request_would_have(
    kind: str, status: int
) -> None:
    assert batch_steps.status_of({"error": {"type": kind}}) == status
