"""The Batch API's batches (`/v1/batches`) with the official SDK over HTTP: the batch object
(`validating` when created), its lines checked before anything is paid, cancel, listing,
ownership and provider prefixes. The batch state machine is a recorder here (`MemoryRunner`):
`Served.validate` runs its first step (`batch_steps.validate`, what the run does first) on the
same bucket; what a whole run does is tested against the real state machine in
tests/e2e/test_batch_runs.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import openai
import pytest

from fakes.jobs import MemoryRunner
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from fakes.siliconflow import FakeSiliconFlow
from imagegw.frontends import batch_steps
from imagegw.frontends.app import create_app
from imagegw.frontends.batches import Batches
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.config import Settings
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.runners.gateway import Gateway

TOKEN = "ms-test-token"
OTHER = "ms-someone-else"
GENERATIONS = "/v1/images/generations"


class SealingKms:
    """A KMS that seals by keeping the key and answering a random blob."""

    def __init__(self) -> None:
        self.sealed: dict[bytes, tuple[bytes, dict[str, str]]] = {}

    def encrypt(self, KeyId: str, Plaintext: bytes, EncryptionContext: dict[str, str]) -> Any:
        blob = f"blob-{len(self.sealed)}".encode()
        self.sealed[blob] = (Plaintext, EncryptionContext)
        return {"CiphertextBlob": blob}


class Served:
    def __init__(
        self, url: str, runner: MemoryRunner, kms: SealingKms, store: BatchStore, kit: Gateway
    ):
        self.url, self.runner, self.kms, self.store, self.kit = url, runner, kms, store, kit

    def sdk(self, token: str = TOKEN, prefix: str = "") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}{prefix}/v1", api_key=token, max_retries=0)

    def payload(self, batch_id: str) -> dict[str, Any]:
        execution = self.runner.executions[batch_id]
        payload: dict[str, Any] = json.loads(execution.input or "{}")
        return payload

    def validate(self, batch_id: str) -> dict[str, Any]:
        """The run's first state (Validate) on the batch the runner was asked to start."""

        async def step() -> dict[str, Any]:
            return await batch_steps.validate(self.payload(batch_id), self.kit)

        return anyio.run(step)

    def items(self, batch_id: str) -> list[dict[str, Any]]:
        """The items Validate wrote for the map, as its ItemReader reads them."""
        where = self.payload(batch_id)["items"]
        body = self.store.store.s3.get_object(Bucket=where["Bucket"], Key=where["Key"])["Body"]
        items: list[dict[str, Any]] = json.loads(body.read())
        return items


@pytest.fixture
def served(
    _gateway_server: tuple[ServerThread, SwappableApp], make_settings: Callable[..., Settings]
) -> Served:
    server, swappable = _gateway_server
    settings = make_settings(
        job_key_id="alias/test",
        webhook_secret="arn:aws:secretsmanager:us-east-1:1:secret:w",  # (never read here)
        allow_private_urls=False,
    )
    app = create_app(settings)
    runner, kms = MemoryRunner(), SealingKms()
    store = BatchStore(ImageStore(settings))
    app.state.batches = Batches(
        settings, store, runner=runner, sealer=KeySealer("alias/test", "us-east-1", kms)
    )
    swappable.app = app
    return Served(server.url, runner, kms, store, Gateway(settings))


def line(custom_id: str, body: dict[str, Any], url: str = GENERATIONS, **extra: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra})


def upload(client: openai.OpenAI, lines: list[str]) -> str:
    content = ("\n".join(lines) + "\n").encode()
    return client.files.create(file=("in.jsonl", content), purpose="batch").id


def prompts(count: int, model: str = "Qwen/Qwen-Image") -> list[str]:
    return [
        line(f"req-{i}", {"model": model, "prompt": f"a lighthouse, take {i}"})
        for i in range(count)
    ]


def test_a_good_file_starts_one_run_with_every_line_planned(
    served: Served, fake_ms: FakeModelScope
) -> None:
    client = served.sdk()
    file_id = upload(client, prompts(3))
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint=GENERATIONS,
        completion_window="24h",
        metadata={"campaign": "spring"},
    )
    assert batch.id.startswith("batch_") and batch.object == "batch"
    # created validating, as OpenAI's are: the run checks the lines
    assert (batch.status, batch.endpoint, batch.input_file_id) == (
        "validating",
        GENERATIONS,
        file_id,
    )
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (0, 0)
    assert batch.expires_at == batch.created_at + 86400
    assert batch.metadata == {"campaign": "spring"}
    assert batch.in_progress_at is None and batch.output_file_id is None
    # one run started; nothing at the provider yet (the run submits)
    assert served.runner.started == [batch.id]
    assert fake_ms.submissions == []
    payload = served.payload(batch.id)
    assert payload["concurrency"] == 8
    assert client.batches.retrieve(batch.id).status == "validating"
    # When the run's Validate has checked the lines
    assert served.validate(batch.id) == {"status": "in_progress", "total": 3}
    # Then every line is an item, planned, and the batch is in progress
    items = served.items(batch.id)
    assert [item["custom_id"] for item in items] == ["req-0", "req-1", "req-2"]
    assert items[1]["job"]["provider"] == "modelscope"
    assert items[1]["job"]["prompt"] == "a lighthouse, take 1"
    # the provider key travels sealed for the batch, never in the clear
    assert TOKEN not in json.dumps(payload)
    ((plain, context),) = served.kms.sealed.values()
    assert plain == TOKEN.encode() and batch.id in context.values()
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.in_progress_at is not None
    assert running.request_counts is not None and running.request_counts.total == 3
    assert running.model_dump(exclude={"status", "in_progress_at", "request_counts"}) == (
        batch.model_dump(exclude={"status", "in_progress_at", "request_counts"})
    )
    assert fake_ms.submissions == []


def test_a_file_with_bad_lines_fails_listing_each_line_and_submits_nothing(
    served: Served, fake_ms: FakeModelScope
) -> None:
    client = served.sdk()
    good = prompts(1)[0]
    lines = [
        good,
        "{not json",
        line("req-0", {"model": "Qwen/Qwen-Image", "prompt": "same id again"}),
        line(
            "req-3", {"model": "Qwen/Qwen-Image", "prompt": "to chat"}, url="/v1/chat/completions"
        ),
        line("req-4", {"model": "Qwen/Qwen-Image"}),
        line("req-5", {"model": "Qwen/Qwen-Image", "prompt": "too many", "n": 99}),
        json.dumps({"custom_id": "req-6", "method": "GET", "url": GENERATIONS, "body": {}}),
        line("req-7", {"model": "Qwen/Qwen-Image", "prompt": "fine"}),
    ]
    created = served.sdk().batches.create(
        input_file_id=upload(client, lines), endpoint=GENERATIONS, completion_window="24h"
    )
    assert created.status == "validating"
    assert served.validate(created.id) == {"status": "failed", "total": 0}
    batch = client.batches.retrieve(created.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    by_line = {error.line: error for error in batch.errors.data}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert by_line[2].code == "invalid_json_line"
    assert by_line[3].code == "duplicate_custom_id" and by_line[3].param == "custom_id"
    assert by_line[4].code == "mismatched_url" and by_line[4].param == "url"
    assert by_line[5].param == "prompt"
    assert by_line[6].param == "n"
    assert by_line[7].code == "invalid_method"
    # no item written for the map, nothing submitted
    assert (
        served.store.store.s3.list_objects_v2(
            Bucket=served.payload(batch.id)["items"]["Bucket"],
            Prefix=served.payload(batch.id)["items"]["Key"],
        ).get("KeyCount", 0)
        == 0
    )
    assert fake_ms.submissions == []


def test_edit_and_chat_lines_are_checked_as_their_endpoints_are(served: Served) -> None:
    client = served.sdk()
    edits = [
        line(
            "edit-1",
            {
                "model": "Qwen/Qwen-Image-Edit",
                "prompt": "make it blue",
                "image": "https://example.com/a.png",
            },
            url="/v1/images/edits",
        ),
        line(
            "edit-2",
            {
                "model": "Qwen/Qwen-Image-Edit",
                "prompt": "inline",
                "image": "data:image/png;base64,AAAA",
            },
            url="/v1/images/edits",
        ),
    ]
    created = client.batches.create(
        input_file_id=upload(client, edits), endpoint="/v1/images/edits", completion_window="24h"
    )
    served.validate(created.id)
    failed = client.batches.retrieve(created.id)
    assert failed.status == "failed"
    assert [(e.line, e.param) for e in failed.errors.data or []] == [(2, "image")]  # type: ignore[union-attr]
    chats = [
        line(
            "chat-1",
            {
                "model": "Qwen/Qwen-Image",
                "messages": [{"role": "user", "content": "a cat --seed 7"}],
            },
            url="/v1/chat/completions",
        )
    ]
    started = client.batches.create(
        input_file_id=upload(client, chats),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert served.validate(started.id)["status"] == "in_progress"
    (item,) = served.items(started.id)
    assert item["job"]["api"] == "chat" and item["job"]["prompt"] == "a cat"


def test_a_batch_belongs_to_the_key_that_made_it(served: Served) -> None:
    mine = served.sdk(f"ms-{uuid.uuid4().hex}")
    batch = mine.batches.create(
        input_file_id=upload(mine, prompts(2)), endpoint=GENERATIONS, completion_window="24h"
    )
    other = served.sdk(OTHER)
    for look in (other.batches.retrieve, other.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            look(batch.id)
    assert batch.id not in [item.id for item in other.batches.list()]
    # nor can anyone start a batch from someone else's file
    with pytest.raises(openai.NotFoundError):
        other.batches.create(
            input_file_id=batch.input_file_id, endpoint=GENERATIONS, completion_window="24h"
        )
    assert served.runner.started == [batch.id]
    assert [item.id for item in mine.batches.list()] == [batch.id]


def test_cancel_marks_the_batch_cancelling_until_its_run_ends(served: Served) -> None:
    client = served.sdk()
    batch = client.batches.create(
        input_file_id=upload(client, prompts(2)), endpoint=GENERATIONS, completion_window="24h"
    )
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    assert client.batches.cancel(batch.id).cancelling_at == cancelled.cancelling_at
    assert client.batches.retrieve(batch.id).status == "cancelling"


def test_a_batch_cancelled_while_validating_stays_cancelling(served: Served) -> None:
    client = served.sdk(f"ms-{uuid.uuid4().hex}")
    batch = client.batches.create(
        input_file_id=upload(client, prompts(2)), endpoint=GENERATIONS, completion_window="24h"
    )
    assert client.batches.cancel(batch.id).status == "cancelling"
    # its run validates it as usual, and answers that no item is to run (the machine goes
    # straight to Finalize, which writes them skipped and ends it cancelled)
    assert served.validate(batch.id) == {"status": "cancelled", "total": 2}
    assert client.batches.retrieve(batch.id).status == "cancelling"


def test_a_batch_that_could_not_start_is_not_kept(served: Served) -> None:
    client = served.sdk(f"ms-{uuid.uuid4().hex}")
    file_id = upload(client, prompts(1))

    def refuse(name: str, payload: str) -> bool:
        raise ConnectionError("Step Functions unreachable")

    served.runner.start = refuse  # type: ignore[method-assign]
    with pytest.raises(openai.APIStatusError) as caught:
        client.batches.create(input_file_id=file_id, endpoint=GENERATIONS, completion_window="24h")
    assert caught.value.status_code >= 500
    assert client.batches.list().data == []


def test_a_failed_batch_cannot_be_cancelled(served: Served) -> None:
    client = served.sdk()
    failed = client.batches.create(
        input_file_id=upload(client, ["{"]), endpoint=GENERATIONS, completion_window="24h"
    )
    served.validate(failed.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.cancel(failed.id)
    assert caught.value.code == "batch_not_cancellable"


def test_batches_list_newest_first_in_pages(served: Served) -> None:
    client = served.sdk(f"ms-{uuid.uuid4().hex}")
    file_id = upload(client, prompts(1))
    made = [
        client.batches.create(
            input_file_id=file_id, endpoint=GENERATIONS, completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    listed = [item.id for item in client.batches.list(limit=2)]  # the SDK pages on its own
    assert sorted(listed) == sorted(made)


def test_a_providers_prefix_runs_the_batch_on_that_provider(
    served: Served, fake_sf: FakeSiliconFlow
) -> None:
    client = served.sdk("sk-sf-token", prefix="/siliconflow")
    lines = [
        line("k-1", {"model": "Kwai-Kolors/Kolors", "prompt": "a lantern", "size": "1024x1024"})
    ]
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint=GENERATIONS, completion_window="24h"
    )
    assert served.validate(batch.id)["status"] == "in_progress"
    item = served.items(batch.id)[0]
    assert item["job"]["provider"] == "siliconflow"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {"k": 1}}, "metadata"),
    ],
)
def test_a_bad_batch_request_is_a_400_and_starts_nothing(
    served: Served, fields: dict[str, Any], param: str
) -> None:
    client = served.sdk()
    body = {"endpoint": GENERATIONS, "completion_window": "24h", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post(
            "/batches",
            body={"input_file_id": upload(client, prompts(1)), **body},
            cast_to=object,
        )
    assert caught.value.param == param
    assert served.runner.started == []


def test_without_a_batch_state_machine_batches_are_a_404(gateway_url: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.batches.create(input_file_id="file-x", endpoint=GENERATIONS, completion_window="24h")
    assert caught.value.code == "batches_disabled"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # not https
        "https://127.0.0.1/hook",  # not a public address
        "https://user:pw@example.com/hook",  # credentials
        "not a url",
    ],
)
def test_a_bad_webhook_url_is_refused_before_the_batch_starts(served: Served, url: str) -> None:
    client = served.sdk()
    file_id = upload(client, prompts(1))
    runs = served.store.store.s3.list_objects_v2
    bucket = served.store.store.bucket

    def stored() -> int:
        return int(runs(Bucket=bucket, Prefix="batches/runs/").get("KeyCount", 0))

    before = stored()
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=file_id,
            endpoint=GENERATIONS,
            completion_window="24h",
            extra_body={"webhook_url": url},
        )
    assert caught.value.param == "webhook_url"
    # nothing started, no batch stored
    assert served.runner.started == []
    assert stored() == before
