"""The batch state machine's own steps (`imagegw.frontends.batch_steps`) against moto's S3 on
loopback: what an item does once its batch is cancelled or past its window, how a cancel waits
for the items between their last look at the cancel mark and their submission, and what the
batch's end writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
from pydantic import SecretStr

from fakes.modelscope import FakeModelScope
from imagegw.errors import TransientJobError
from imagegw.frontends import batch_steps
from imagegw.frontends import batches as batches_module
from imagegw.frontends.batches import SUBMITTING, Batches
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.config import Settings
from imagegw.infra.executions import JobRunner
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


def event(batch_id: str, index: int, *, expires_at: float, key: str = "sealed") -> dict[str, Any]:
    batch = {"id": batch_id, "owner": OWNER, "expires_at": expires_at, "total": 4}
    return {
        "step": "submit",
        "item": item(index),
        "batch": {**batch, "base_url": "https://gw"},
        "key": key,
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
        answer = run(batch_steps.submit, event(batch_id, index, expires_at=time.time() - 1), kit)
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
    answer = run(batch_steps.submit, event(batch_id, 0, expires_at=time.time() + 60), kit)
    assert answer["skip"] == "cancelled" and "progress" not in answer
    assert fake_ms.submissions == []


def test_an_item_cancelled_while_it_is_prepared_is_not_submitted(
    kit: Gateway, fake_ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = "batch_" + "c3" * 12
    store = BatchStore(kit.store)
    cancel = store.run_key(OWNER, batch_id, "cancel.json")

    async def placed_as_the_cancel_comes(images: Any) -> list[Any]:
        await store.put_json(cancel, {"cancelling_at": 1})
        return []

    # Given an item that read no cancel mark when it started, and is cancelled while its
    # inputs are placed (a server-held token: nothing to open)
    monkeypatch.setattr(kit.store, "place_all", placed_as_the_cancel_comes)
    pooled = event(batch_id, 0, expires_at=time.time() + 60, key="pool:modelscope:t1")
    # When it comes to submit
    answer = run(batch_steps.submit, pooled, kit)
    # Then it looks again right before the provider would be called: nothing is submitted
    assert answer["skip"] == "cancelled" and "progress" not in answer
    assert fake_ms.submissions == []
    # and no marker is left for a cancel to wait on
    assert anyio.run(store.keys, store.run_key(OWNER, batch_id, SUBMITTING)) == []


def test_a_cancel_answers_once_no_item_is_between_its_look_and_its_submission(
    kit: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = "batch_" + "d4" * 12
    store = BatchStore(kit.store)
    record = {"id": batch_id, "status": "in_progress", "created_at": 1, "total": 2}
    anyio.run(store.put_json, store.run_key(OWNER, batch_id, "batch.json"), record)
    marker = store.run_key(OWNER, batch_id, f"{SUBMITTING}000001")
    batches = Batches(kit.settings, store, runner=cast("JobRunner", object()))
    order: list[str] = []

    async def main() -> None:
        # Given an item that read no cancel mark and is submitting (its marker)
        await store.put(marker, b"{}")

        async def submitted() -> None:
            await anyio.sleep(0.3)
            order.append("submitted")
            await store.delete(marker)

        async def cancel() -> None:
            view = await batches.cancel(OWNER, batch_id)
            order.append(view["status"])

        async with anyio.create_task_group() as group:
            group.start_soon(submitted)
            group.start_soon(cancel)

    # When the batch is cancelled meanwhile
    anyio.run(main)
    # Then the cancel answers only after that submission was made
    assert order == ["submitted", "cancelling"]
    # And a marker left behind (a crashed step) holds a cancel up no longer than its bound
    monkeypatch.setattr(batches_module, "CANCEL_FENCE", 0.2)
    anyio.run(store.put, marker, b"{}")
    assert anyio.run(batches.cancel, OWNER, batch_id)["status"] == "cancelling"


@pytest.mark.parametrize(
    ("kind", "status"),
    [("invalid_request_error", 400), ("rate_limit_error", 429), ("server_error", 500)],
)
def test_an_items_error_keeps_the_status_a_single_request_would_have(
    kind: str, status: int
) -> None:
    assert batch_steps.status_of({"error": {"type": kind}}) == status


def test_a_listing_that_races_a_delete_is_made_again(kit: Gateway) -> None:
    # Given a bucket whose first listing fails (moto's S3 fails one that races a DELETE, as
    # an item's marker is removed while a batch's status is read)
    store = BatchStore(kit.store)
    key = store.run_key(OWNER, "batch_" + "e5" * 12, "results/000000.ok.json")
    anyio.run(store.put_json, key, {})
    s3 = kit.store.s3
    listings: list[str] = []

    class RacingS3:
        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

        def get_paginator(self, name: str) -> Any:
            listings.append(name)
            if len(listings) == 1:
                raise KeyError("batches/runs/.../submitting/000003")
            return s3.get_paginator(name)

    kit.store._s3 = RacingS3()
    # When the results are listed
    found = anyio.run(store.keys, key.rsplit("/", 1)[0] + "/")
    # Then the listing is made again and finds them
    assert found == [key] and len(listings) == 2


class EchoKms:
    """KMS as far as the sealer uses it: a blob opens only with the context it was sealed for."""

    def encrypt(self, KeyId: str, Plaintext: bytes, EncryptionContext: Any) -> Any:
        return {"CiphertextBlob": json.dumps([EncryptionContext, Plaintext.decode()]).encode()}

    def decrypt(self, KeyId: str, CiphertextBlob: bytes, EncryptionContext: Any) -> Any:
        context, text = json.loads(CiphertextBlob)
        assert context == EncryptionContext
        return {"Plaintext": text.encode()}


@dataclass
class Held:
    """A gateway key's reservation of an item's image, and what it was settled with."""

    record: Any = field(default_factory=lambda: SimpleNamespace(hash="a" * 64))
    at: float = 1.0
    settled: list[int] = field(default_factory=list)

    async def settle(self, made: int) -> None:
        self.settled.append(made)


def test_a_retried_item_submit_gives_its_reservation_back_and_reserves_anew(
    make_settings: Callable[..., Settings],
    fake_ms: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kit = Gateway(make_settings(job_key_id="k"), sealer=KeySealer("k", "r", EchoKms()))
    batch_id = "batch_" + "f6" * 12
    sealed = kit.sealer.seal(SecretStr("ms-test-token"), batch_id)
    held: list[Held] = []

    async def reserve(key_hash: Any, model: str, n: int, kit: Gateway) -> Held:
        held.append(Held())
        return held[-1]

    monkeypatch.setattr(batch_steps, "_reserve", reserve)
    payload = event(batch_id, 0, expires_at=time.time() + 60, key=sealed)
    # Given an item of a gateway key's batch whose submission is rate-limited (nothing started)
    fake_ms.submit_override = (429, {"errors": {"message": "Rate limit exceeded"}}, {})

    async def twice() -> tuple[BaseException | None, dict[str, Any]]:
        try:  # the state machine's Retry: the same event again (one event loop: one client)
            await batch_steps.submit(payload, kit)
        except TransientJobError as exc:
            first: BaseException | None = exc
        else:
            first = None
        given_back = [h.settled for h in held]
        assert given_back == [[0]], given_back
        return first, await batch_steps.submit(payload, kit)

    # When its Submit runs, then runs again
    first, answer = anyio.run(twice)
    # Then the first attempt had the state machine run it again (TransientJobError) and gave
    # its reservation back whole; the retry reserved anew and submitted, its job holding that
    # reservation
    assert isinstance(first, TransientJobError)
    assert answer["progress"]["status"] == "running"
    assert [h.settled for h in held] == [[0], []]
    assert answer["job"]["quota"] == {"key": "a" * 64, "at": 1.0}
    # the item's job carries the key sealed for the job, never in the clear
    assert "ms-test-token" not in json.dumps(answer)
    assert kit.sealer.open(answer["key"], answer["job"]["id"]).get_secret_value() == "ms-test-token"
