"""Every file in events/, as it is, invoked with its function of the `sam build` output through
`make invoke`'s code path (`lambdahost.invoke.invoke`, which the Makefile's target calls).

Each function runs as `make invoke` runs it: a clean Python 3.13, the built layer on the path
where Lambda mounts it, the handler and environment from the built template, against `make
run`'s stand-ins (started once for the session), with an env-vars file in SAM's format pointing
the providers' settings (PROVIDER_SETTINGS, declared in the template's Globals) at the fake
ModelScope on loopback. ALLOW_PRIVATE_URLS is not set (the
template does not declare it, so an env-vars file could not set it either): the fake's result
links are on the configured provider's own host, which the result fetcher trusts, and the
gateway downloads nothing else here. A job event advances its job; an API event answers with
the status and body a client would get, streamed as the app writes it.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from e2e.test_deployed_build import LAYER, _build_dir, _check_architecture
from fakes.modelscope import FakeModelScope
from fakes.png import png_size
from imagegw.frontends.batch_steps import item_job_id
from imagegw.frontends.batches import result_name
from imagegw.infra.batchstore import BatchStore
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import RESULTS
from imagegw.runners.stepfunctions.schema import JobInput
from lambdahost.build import Template
from lambdahost.invoke import Request, invoke, stand_in_target
from lambdahost.samples import seal
from lambdahost.standins import SAMPLE_TOKEN, StandIns, stand_ins

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = REPO_ROOT / "events"
#: each sample event's function (docs/development.md "Invoke a function locally")
FUNCTIONS = {
    "function-url-models.json": "ApiFunction",
    "function-url-chat.json": "ApiFunction",
    "function-url-chat-stream.json": "ApiFunction",
    "function-url-edit.json": "ApiFunction",
    "function-url-images-generations.json": "ApiFunction",
    "apigw-rest-models.json": "ApiFunction",
    "apigw-rest-page.json": "ApiFunction",
    "apigw-rest-chat.json": "ApiFunction",
    "apigw-rest-images-async.json": "ApiFunction",
    "job-submit.json": "JobSubmitFunction",
    "job-poll.json": "JobPollFunction",
    "job-store.json": "JobStoreFunction",
    "batch-validate.json": "BatchStepFunction",
    "batch-submit.json": "BatchStepFunction",
    "batch-store.json": "BatchStepFunction",
    "batch-record.json": "BatchStepFunction",
    "batch-finalize.json": "BatchStepFunction",
    "job-notify.json": "JobNotifyFunction",
}
FUNCTION_URL = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws"
REST_API = "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/Prod"


@dataclass
class Outcome:
    """What one `make invoke` printed: the answer (each write as it came), its notes, the
    function's log, and the exit status."""

    status: int
    writes: list[bytes]
    notes: list[str]
    log: str

    @property
    def output(self) -> bytes:
        return b"".join(self.writes)

    def result(self) -> Any:
        """A job function's answer (its result or Lambda's error payload)."""
        return json.loads(self.output)

    def head(self) -> dict[str, Any]:
        """A streamed answer's head (its first line)."""
        line, _, _ = self.output.partition(b"\n")
        head: dict[str, Any] = json.loads(line)
        return head

    def body(self) -> bytes:
        return self.output.partition(b"\n")[2]


@dataclass
class Invoker:
    build: Path
    running: StandIns
    folder: Path
    provider: FakeModelScope | None = None
    runs: list[Outcome] = field(default_factory=list)

    def __call__(self, name: str) -> Outcome:
        """`make invoke FUNCTION=<the event's> EVENT=events/<name> ENV_VARS=<the fake's>`."""
        env_vars = None
        if self.provider is not None:
            env_vars = self.folder / "env.json"
            base = self.provider.base_url  # type: ignore[attr-defined]
            env_vars.write_text(
                json.dumps({"Parameters": {"PROVIDER_SETTINGS": f"MODELSCOPE_BASE_URL={base}"}})
            )
        spec = Request(
            function=FUNCTIONS[name],
            event=EVENTS / name,
            build=self.build,
            env_vars=env_vars,
            runtime_cache=self.folder / "lambda-python",
        )
        writes: list[bytes] = []
        notes: list[str] = []
        log = self.folder / f"{name}.log"
        target = stand_in_target(Template(self.build), self.running)
        with log.open("wb") as output:
            status = invoke(spec, target, writes.append, notes.append, output)
        outcome = Outcome(status, writes, notes, log.read_text(errors="replace"))
        self.runs.append(outcome)
        return outcome


@pytest.fixture(scope="session")
def _invoker(tmp_path_factory: pytest.TempPathFactory) -> Invoker:
    build = _build_dir()
    _check_architecture(build / LAYER / "python")
    return Invoker(build, stand_ins(), tmp_path_factory.mktemp("invoke"))


@pytest.fixture
def run(_invoker: Invoker, fake_ms: FakeModelScope) -> Invoker:
    """Invoke a sample event against the stand-ins and this test's fake ModelScope."""
    _invoker.provider = fake_ms
    return _invoker


def _stored(running: StandIns, link: str) -> bytes:
    """The bytes in the stand-in bucket behind a lasting /v1/files link."""
    name = link.rsplit("/v1/files/", 1)[1]
    answer = running.client("s3").get_object(Bucket=running.bucket, Key=RESULTS + name)
    data: bytes = answer["Body"].read()
    return data


def _event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def _request_body(name: str) -> dict[str, Any]:
    event = _event(name)
    body = event["body"]
    data: dict[str, Any] = json.loads(base64.b64decode(body) if event["isBase64Encoded"] else body)
    return data


def test_every_sample_event_has_its_function() -> None:
    # Given the events/ folder / Then each file is invoked here with its function
    assert sorted(p.name for p in EVENTS.glob("*.json")) == sorted(FUNCTIONS)
    assert set(FUNCTIONS.values()) == set(Template(REPO_ROOT).function_ids())


# ------------------------------------------------------------------------------ API function


@pytest.mark.parametrize("name", ["function-url-models.json", "apigw-rest-models.json"])
def test_models_events(run: Invoker, name: str) -> None:
    # Given a models event / When it is invoked
    outcome = run(name)

    # Then the answer is streamed (head first, in the event's payload format), 200 with the list
    assert outcome.status == 0
    head = outcome.head()
    assert head["statusCode"] == 200
    if name.startswith("apigw"):  # REST: payload format 1.0
        assert head["multiValueHeaders"]["content-type"] == ["application/json"]
    else:  # Function URL: payload format 2.0
        assert head["headers"]["content-type"] == "application/json"
        assert head["cookies"] == []
    models = json.loads(outcome.body())
    assert "Qwen/Qwen-Image" in [m["id"] for m in models["data"]]
    # and the notes say where it ran and that the Web Adapter's part was done here
    assert "stand-ins" in outcome.notes[0]
    assert any("Web Adapter" in note for note in outcome.notes)


def test_the_page_event_serves_the_page_from_the_built_layer(run: Invoker) -> None:
    # Given a browser opening the REST API's stage URL / When it is invoked
    outcome = run("apigw-rest-page.json")

    # Then the built function answers the page, its assets linked under the stage, its policy
    # allowing nothing inline
    head = outcome.head()
    assert head["statusCode"] == 200, outcome.output[-2000:]
    assert head["multiValueHeaders"]["content-type"] == ["text/html; charset=utf-8"]
    policy = head["multiValueHeaders"]["content-security-policy"][0]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    page = outcome.body().decode()
    assert f'<base href="{REST_API}/">' in page
    assert '<script src="page/app.js" defer></script>' in page


@pytest.mark.parametrize(
    ("name", "base"), [("function-url-chat.json", FUNCTION_URL), ("apigw-rest-chat.json", REST_API)]
)
def test_chat_events(run: Invoker, fake_ms: FakeModelScope, name: str, base: str) -> None:
    # Given a non-streamed chat event / When it is invoked
    outcome = run(name)

    # Then ModelScope got the prompt, and the answer is 200 with one lasting link to the image,
    # on the gateway's public URL (the REST stage included), stored in the stand-in bucket
    assert outcome.head()["statusCode"] == 200, outcome.output[-2000:]
    completion = json.loads(outcome.body())
    content = completion["choices"][0]["message"]["content"]
    (link,) = re.findall(r"!\[[^\]]*\]\((\S+)\)", content)
    assert link.startswith(f"{base}/v1/files/") or link.startswith(f"{base}/modelscope/v1/files/")
    assert _stored(run.running, link).startswith(b"\x89PNG")
    (submission,) = fake_ms.submissions
    assert submission["body"]["prompt"] == _request_body(name)["messages"][-1]["content"]


def test_streamed_chat_event_is_printed_as_it_comes(run: Invoker, fake_ms: FakeModelScope) -> None:
    # Given the streamed chat event, a generation that takes a while
    fake_ms.task_duration = 1.0

    # When it is invoked
    outcome = run("function-url-chat-stream.json")

    # Then the head came first, then the SSE body in several writes, as the app wrote it: the
    # role chunk before the image, the usage chunk (include_usage), [DONE] last
    head = outcome.head()
    assert head["statusCode"] == 200
    assert head["headers"]["content-type"].startswith("text/event-stream")
    body_writes = outcome.writes[1:]
    assert len(body_writes) >= 3, outcome.writes
    assert b'"role":"assistant"' in body_writes[0]
    assert b"![" not in body_writes[0]
    frames = [f for f in outcome.body().decode().split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    payloads = [json.loads(f[6:]) for f in frames if f.startswith("data: {")]
    assert payloads[-1]["choices"] == [] and "usage" in payloads[-1]
    assert any("![" in (p["choices"][0]["delta"].get("content") or "") for p in payloads[:-1])


def test_edit_event_uploads_the_photo(run: Invoker, fake_ms: FakeModelScope) -> None:
    # Given the edit event, a photo attached as a data URI / When it is invoked
    outcome = run("function-url-edit.json")

    # Then the photo went to the stand-in bucket and ModelScope fetched it from the presigned
    # URL, and the answer is the edited image
    assert outcome.head()["statusCode"] == 200, outcome.output[-2000:]
    parts = _request_body("function-url-edit.json")["messages"][-1]["content"]
    uri = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    (task,) = fake_ms.tasks.values()
    assert task.inputs == [base64.b64decode(uri.split(",", 1)[1])]
    assert "![" in json.loads(outcome.body())["choices"][0]["message"]["content"]


def test_images_generations_event(run: Invoker) -> None:
    # Given the Images API event (b64_json, 64x64) / When it is invoked
    outcome = run("function-url-images-generations.json")

    # Then the answer is the image itself, the size asked for
    assert outcome.head()["statusCode"] == 200, outcome.output[-2000:]
    (item,) = json.loads(outcome.body())["data"]
    assert png_size(base64.b64decode(item["b64_json"])) == (64, 64)


def test_async_submission_event_starts_a_job(run: Invoker) -> None:
    # Given the REST API's async submission event / When it is invoked
    outcome = run("apigw-rest-images-async.json")

    # Then it is 202 with the queued job, at a Location under the stage and provider
    head = outcome.head()
    assert head["statusCode"] == 202, outcome.output[-2000:]
    job = json.loads(outcome.body())
    assert job["object"] == "image.job" and job["status"] == "queued"
    assert head["multiValueHeaders"]["location"] == [f"{REST_API}/modelscope/v1/jobs/{job['id']}"]

    # And the stand-in state machine has its execution, whose input holds the caller's key
    # sealed with the job key, never in plain text
    running = run.running
    sfn = running.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=running.state_machine_arn)["executions"]
    (execution,) = [e for e in executions if e["name"] == job["id"]]
    text = sfn.describe_execution(executionArn=execution["executionArn"])["input"]
    assert SAMPLE_TOKEN not in text
    sealed = JobInput.model_validate_json(text).key
    sealer = KeySealer(running.key_arn, running.region, running.client("kms"))
    assert sealer.open(sealed, job["id"]).get_secret_value() == SAMPLE_TOKEN


# ------------------------------------------------------------------------------ job functions


def test_submit_then_poll_events_advance_the_job(run: Invoker, fake_ms: FakeModelScope) -> None:
    # Given ModelScope gives the next task the id the Poll event names, done at once
    task_id = _event("job-poll.json")["progress"]["tasks"][0]["task_id"]
    fake_ms.next_task_ids = [task_id]
    fake_ms.task_duration = 0.0

    # When the Submit event is invoked (its key, sealed by `make events`, opens)
    submitted = run("job-submit.json")

    # Then the job's task started at ModelScope, with the key it was sealed with
    assert submitted.status == 0, submitted.log[-3000:]
    progress = submitted.result()
    assert progress["status"] == "running" and progress["polls"] == 0
    assert [t["task_id"] for t in progress["tasks"]] == [task_id]
    job = _event("job-submit.json")["job"]
    assert (
        fake_ms.submissions[0]["body"]
        == {"model": job["model"], "prompt": job["prompt"]} | (job["options"])
    )

    # When the Poll event is invoked
    polled = run("job-poll.json")

    # Then the job succeeded with the provider's image link, one poll counted
    assert polled.status == 0, polled.log[-3000:]
    progress = polled.result()
    assert progress["status"] == "succeeded" and progress["polls"] == 1
    (image,) = progress["tasks"][0]["images"]
    assert image["url"].startswith(fake_ms.base_url.removesuffix("/v1"))  # type: ignore[attr-defined]
    # and the key is in neither answer nor log
    for outcome in (submitted, polled):
        assert SAMPLE_TOKEN not in outcome.output.decode() + outcome.log


def test_store_event_stores_the_image(run: Invoker) -> None:
    # Given the Store event, its image still in the state / When it is invoked
    outcome = run("job-store.json")

    # Then the image is in the stand-in bucket under images/, and the output names it
    assert outcome.status == 0, outcome.log[-3000:]
    (image,) = outcome.result()["images"]
    assert image["url"] is None
    uri = _event("job-store.json")["progress"]["tasks"][0]["images"][0]["url"]
    assert _stored(run.running, f"/v1/files/{image['name']}") == base64.b64decode(
        uri.split(",", 1)[1]
    )


def _run_object(running: StandIns, batch: dict[str, Any], name: str) -> Any:
    """A batch run's JSON object in the stand-in bucket."""
    key = BatchStore.run_key(batch["owner"], batch["id"], name)
    return json.loads(
        running.client("s3").get_object(Bucket=running.bucket, Key=key)["Body"].read()
    )


def test_batch_validate_event_checks_the_input_file(run: Invoker) -> None:
    # Given the Validate event as it is, before any batch record is in the bucket
    batch = _event("batch-validate.json")["batch"]
    # When it is invoked / Then the batch fails with a clear reason, nothing to run
    alone = run("batch-validate.json")
    assert alone.status == 0, alone.log[-3000:]
    assert alone.result() == {"status": "failed", "total": 0}
    (error,) = _run_object(run.running, batch, "validated.json")["errors"]["data"]
    assert error["code"] == "batch_not_found" and batch["id"] in error["message"]

    # Given the batch's record and input file, as `POST /v1/files` and `/v1/batches` store them
    s3, owner = run.running.client("s3"), batch["owner"]
    file_id = "file-" + "4" * 24
    lines = [
        {"custom_id": f"cat-{i}", "method": "POST", "url": "/v1/images/generations",
         "body": {"model": "Qwen/Qwen-Image", "prompt": f"A golden cat, take {i}"}}
        for i in (1, 2)
    ]  # fmt: skip
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    s3.put_object(
        Bucket=run.running.bucket, Key=BatchStore.file_key(owner, file_id, "data"), Body=content
    )
    record = {
        "id": batch["id"], "owner": owner, "input_file_id": file_id,
        "endpoint": "/v1/images/generations", "provider": "modelscope",
    }  # fmt: skip
    key = BatchStore.run_key(owner, batch["id"], "batch.json")
    s3.put_object(Bucket=run.running.bucket, Key=key, Body=json.dumps(record).encode())

    # When it is invoked again
    checked = run("batch-validate.json")

    # Then the file passed: two items written for the map, each line's job planned
    assert checked.status == 0, checked.log[-3000:]
    assert checked.result() == {"status": "in_progress", "total": 2}
    items = _run_object(run.running, batch, "items.json")
    assert [(i["index"], i["custom_id"], i["job"]["prompt"]) for i in items] == [
        (0, "cat-1", "A golden cat, take 1"),
        (1, "cat-2", "A golden cat, take 2"),
    ]
    assert {i["job"]["provider"] for i in items} == {"modelscope"}


def test_batch_submit_event_submits_the_item_as_its_own_job(
    run: Invoker, fake_ms: FakeModelScope
) -> None:
    # Given the item's Submit event, its key sealed for the batch (`make events`)
    event = _event("batch-submit.json")

    # When it is invoked
    outcome = run("batch-submit.json")

    # Then the item's task started at ModelScope, as a job whose id is the item's own
    assert outcome.status == 0, outcome.log[-3000:]
    state = outcome.result()
    assert state["progress"]["status"] == "running"
    assert state["job"]["id"] == item_job_id(event["batch"]["id"], event["item"]["index"])
    assert state["item"] == {"index": 0, "custom_id": "cat-1"}
    (submitted,) = fake_ms.submissions
    assert submitted["body"]["prompt"] == event["item"]["job"]["prompt"]
    # and the key is sealed anew for that job: it is in neither answer nor log
    assert state["key"] != event["key"]
    assert SAMPLE_TOKEN not in outcome.output.decode() + outcome.log


def test_batch_store_event_stores_the_image_and_writes_the_line(run: Invoker) -> None:
    # Given an item whose task succeeded with an inline image / When its Store is invoked
    event = _event("batch-store.json")
    outcome = run("batch-store.json")

    # Then the item ended well, and its line answers the image's lasting link
    assert outcome.status == 0, outcome.log[-3000:]
    assert outcome.result() == {"index": 0, "ok": True}
    line = _run_object(run.running, event["batch"], result_name(0, ok=True))
    assert line["custom_id"] == "cat-1" and line["error"] is None
    assert line["response"]["status_code"] == 200
    (image,) = line["response"]["body"]["data"]
    assert image["url"].startswith(event["batch"]["base_url"] + "/v1/files/")
    uri = event["progress"]["tasks"][0]["images"][0]["url"]
    assert _stored(run.running, image["url"]) == base64.b64decode(uri.split(",", 1)[1])


def test_batch_events_record_an_item_and_end_the_batch(run: Invoker) -> None:
    # Given an item of a batch that failed at the provider / When Record, then Finalize run
    recorded = run("batch-record.json")
    assert recorded.status == 0, recorded.log[-3000:]
    assert recorded.result() == {"index": 3, "ok": False}
    ended = run("batch-finalize.json")
    assert ended.status == 0, ended.log[-3000:]
    assert ended.result() == {"status": "completed", "event": "batch.completed"}
    # Then the batch's end and its error file, with the provider's reason, are in the bucket
    batch = _event("batch-finalize.json")["batch"]
    s3 = run.running.client("s3")
    prefix = f"batches/runs/{batch['owner']}/{batch['id']}/"
    final = json.loads(
        s3.get_object(Bucket=run.running.bucket, Key=prefix + "final.json")["Body"].read()
    )
    assert final["request_counts"] == {"total": 4, "completed": 0, "failed": 1}
    assert final["output_file_id"] is None
    key = f"batches/files/{batch['owner']}/{final['error_file_id']}.data"
    (line,) = s3.get_object(Bucket=run.running.bucket, Key=key)["Body"].read().splitlines()
    error = json.loads(line)
    assert error["custom_id"] == "shot-4" and error["response"]["status_code"] == 500
    assert "content moderation" in error["response"]["body"]["error"]["message"]


def test_a_key_sealed_elsewhere_fails_the_job_not_the_function(
    run: Invoker, fake_ms: FakeModelScope, tmp_path: Path
) -> None:
    # Given the Submit event with a key the job key did not seal (another KMS key's)
    event = _event("job-submit.json")
    kms = run.running.client("kms")
    other = kms.create_key()["KeyMetadata"]["Arn"]
    event["key"] = KeySealer(other, "us-east-1", kms).seal(SecretStr(SAMPLE_TOKEN), "job-x")
    path = tmp_path / "job-submit.json"
    path.write_text(json.dumps(event))

    # When it is invoked
    spec = Request("JobSubmitFunction", path, run.build, runtime_cache=run.folder / "lambda-python")
    writes: list[bytes] = []
    notes: list[str] = []
    target = stand_in_target(Template(run.build), run.running)
    with (tmp_path / "log").open("wb") as log:
        status = invoke(spec, target, writes.append, notes.append, log)

    # Then the function answered a failed job naming the key, and nothing was submitted
    assert status == 0
    progress = json.loads(b"".join(writes))
    assert progress["status"] == "failed"
    assert json.loads(progress["cause"])["error"]["code"] == "job_key_unreadable"
    assert fake_ms.submissions == []


def test_notify_event_to_a_private_address_fails_the_attempt_for_the_retry(
    run: Invoker, tmp_path: Path
) -> None:
    # Given the Notify event, its webhook on loopback (not a public address: refused by the
    # guarded fetcher before any connection; ALLOW_PRIVATE_URLS is never set here)
    event = _event("job-notify.json")
    event["webhook"] = "https://127.0.0.1:9/hook"
    path = tmp_path / "job-notify.json"
    path.write_text(json.dumps(event))

    # When it is invoked
    spec = Request("JobNotifyFunction", path, run.build, runtime_cache=run.folder / "lambda-python")
    writes: list[bytes] = []
    notes: list[str] = []
    target = stand_in_target(Template(run.build), run.running)
    with (tmp_path / "log").open("wb") as log:
        invoke(spec, target, writes.append, notes.append, log)

    # Then the function failed the attempt with the error the state machine retries
    error = json.loads(b"".join(writes))
    assert error["errorType"] == "WebhookDeliveryError"
    assert json.loads(error["errorMessage"]) == {"attempts": 1, "last_status_code": None}
    # and it was the address the guarded fetcher refused (the stand-ins' webhook secret read)
    lines = [
        json.loads(line) for line in (tmp_path / "log").read_text().splitlines() if line[:1] == "{"
    ]
    (refused,) = [line for line in lines if line.get("message") == "webhook not delivered"]
    assert refused["error"] == "FetchError"
    assert not [line for line in lines if line.get("message") == "webhook secret unreadable"]


def test_make_events_keeps_current_keys_and_seals_copies(run: Invoker, tmp_path: Path) -> None:
    # Given the stand-ins' job key
    sealer = KeySealer(run.running.key_arn, run.running.region, run.running.client("kms"))

    # When make events runs on events/ (the sample token)
    written = seal(EVENTS, tmp_path / "same", sealer, SecretStr(SAMPLE_TOKEN), keep_current=True)

    # Then nothing is written: every job event's key already opens to the token for its job
    assert written == []

    # When a key of your own is sealed (into another folder)
    copies = seal(EVENTS, tmp_path / "own", sealer, SecretStr("ms-own"), keep_current=False)

    # Then the events with a key are copied with it sealed for their job (a batch item's: for
    # its batch, as `POST /v1/batches` seals it), the rest not
    assert sorted(p.name for p in copies) == [
        "batch-submit.json",
        "job-poll.json",
        "job-submit.json",
    ]
    for path in copies:
        event = json.loads(path.read_text())
        sealed_for = (event.get("job") or event["batch"])["id"]
        assert sealer.open(event["key"], sealed_for).get_secret_value() == "ms-own"
        assert {k: v for k, v in event.items() if k != "key"} == {
            k: v for k, v in _event(path.name).items() if k != "key"
        }
