"""Sharing a deployment (README "Sharing a deployment"): gateway keys, server-held provider
tokens with failover, daily quotas and usage, end to end against `make run`'s own server
(`python -m imagegw.frontends.local`) in each ACCESS_MODE, with moto's DynamoDB and Secrets
Manager beside its S3 and Step Functions, and the owner commands
(`python -m imagegw.frontends.admin`) run as the owner runs them. The provider is the fake
ModelScope on loopback; clients are the OpenAI SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest

from fakes.modelscope import FakeModelScope, model_forbidden_answer, model_quota_answer
from fakes.png import make_png
from fakes.server import ServerThread, SwappableApp
from imagegw.access.gatekeys import token_id
from local_run import serve_locally

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_TOKEN = "ms-test-token"
MODEL = "Qwen/Qwen-Image"
CHAT_MODEL = "Qwen/Qwen3-VL-30B-A3B-Instruct"  # a chat model: passed through
QUOTA_MESSAGE = "You have exceeded today's quota for model Qwen/Qwen-Image"
#: runs the owner commands given on stdin (a JSON list of arguments a line) in turn; stops at the
#: first that fails, with its status
ADMIN_EACH = """
import json, sys
from imagegw.frontends.admin import main
for line in sys.stdin:
    status = main(json.loads(line))
    if status:
        sys.exit(status)
"""


@dataclass
class Local:
    """One `make run` server, its stand-ins and the owner commands against it."""

    url: str
    log: Path
    access_file: Path | None
    #: the owner commands run as the owner runs them here (`admin`) at least once
    run_as_owner: set[str] = field(default_factory=set)

    def _run(
        self, command: list[str], given: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(REPO_ROOT / "layers" / "common"),
            "IMAGEGW_LOCAL_ACCESS_FILE": str(self.access_file or "/nonexistent"),
        }
        return subprocess.run(
            [sys.executable, *command],
            cwd=REPO_ROOT,
            env=env,
            input=given,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def admin(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """One owner command, run as the owner runs it."""
        done = self._run(["-m", "imagegw.frontends.admin", *args])
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    def admin_each(self, *commands: tuple[str, ...]) -> str:
        """Owner commands a test sets up with, one after the other in one process (each its
        module's `main`, as `python -m` calls it: one interpreter start, not one a command);
        each must succeed. What they printed."""
        done = self._run(["-c", ADMIN_EACH], "".join(json.dumps(c) + "\n" for c in commands))
        assert done.returncode == 0, done.stderr
        return done.stdout

    def key(self, name: str, *options: str) -> str:
        """A new gateway key: the command's last line."""
        return self.admin("key", name, *options).stdout.strip().splitlines()[-1]

    def pool(self, *tokens: str) -> None:
        """The ModelScope pool is `tokens` (in that order), no other. A command's first use
        on this server runs as the owner runs it; the rest in one process (`admin_each`)."""
        held = json.loads(self.secret_value())["tokens"].get("modelscope", [])
        commands = [("untoken", "modelscope", t) for t in held]
        commands += [("token", "modelscope", t) for t in tokens]
        while commands and commands[0][0] not in self.run_as_owner:
            self.run_as_owner.add(commands[0][0])
            self.admin(*commands.pop(0))
        if commands:
            self.admin_each(*commands)

    def aws(self, service: str) -> Any:
        assert self.access_file is not None
        env = json.loads(self.access_file.read_text())
        endpoint = {
            "dynamodb": env["AWS_ENDPOINT_URL_DYNAMODB"],
            "secretsmanager": env["AWS_ENDPOINT_URL_SECRETS_MANAGER"],
            "s3": env["S3_ENDPOINT_URL"],
            "stepfunctions": env["AWS_ENDPOINT_URL_SFN"],
        }[service]
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name=env["AWS_REGION"],
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def env(self) -> dict[str, str]:
        assert self.access_file is not None
        loaded: dict[str, str] = json.loads(self.access_file.read_text())
        return loaded

    def secret_value(self) -> str:
        value: str = self.aws("secretsmanager").get_secret_value(
            SecretId=self.env()["ACCESS_SECRET"]
        )["SecretString"]
        return value

    def counts(self) -> tuple[int, int]:
        """Objects in the bucket and executions of the state machine."""
        env = self.env()
        objects = self.aws("s3").list_objects_v2(Bucket=env["BUCKET"]).get("KeyCount", 0)
        executions = self.aws("stepfunctions").list_executions(
            stateMachineArn=env["JOB_STATE_MACHINE_ARN"]
        )["executions"]
        return objects, len(executions)


@pytest.fixture(scope="module")
def start_local(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[Callable[..., Local]]:
    """`make run`'s server in a given ACCESS_MODE (one per mode and share, started on first
    use); a revoked key is refused after KEY_CACHE_TTL=1 s; the secret is read afresh each
    time. A key spends the whole pool (KEY_POOL_SHARE=1) unless `share` says otherwise: the
    fail-over tests see every token, the share has its own test."""
    started: dict[tuple[str, str], Local] = {}
    with ExitStack() as running:

        def start(mode: str, share: str = "1") -> Local:
            if (mode, share) not in started:
                folder = tmp_path_factory.mktemp(f"keys-{mode}")
                url, log = running.enter_context(
                    serve_locally(
                        folder,
                        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
                        JOB_POLL_INTERVAL="0",
                        ACCESS_MODE=mode,
                        KEY_CACHE_TTL="1",
                        SECRET_CACHE_TTL="0",
                        KEY_POOL_SHARE=share,
                    )
                )
                access_file = folder / "access.json" if mode != "open" else None
                started[(mode, share)] = Local(url, log, access_file)
            return started[(mode, share)]

        yield start


def sdk(local: Local, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{local.url}/v1", api_key=key, max_retries=0, timeout=60)


def generate(local: Local, key: str, prompt: str = "a fox", model: str = MODEL) -> httpx.Response:
    return httpx.post(
        f"{local.url}/v1/images/generations",
        json={"model": model, "prompt": prompt},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


@pytest.fixture
def fake(fake_ms: FakeModelScope) -> FakeModelScope:
    """The fake ModelScope taking the client's own token and the pool tokens of the tests."""
    fake_ms.tokens |= {"ms-pool-a", "ms-pool-b", "ms-pool-c", "ms-pool-d", "ms-pool-t"}
    fake_ms.tokens |= {"ms-pool-u", "ms-pool-v"}
    return fake_ms


def test_open_mode_passes_every_bearer_through(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given `make run` in open mode
    local = start_local("open")

    # When a client brings its own ModelScope token through the OpenAI SDK
    made = sdk(local, CLIENT_TOKEN).images.generate(model=MODEL, prompt="a fox")

    # Then it makes the image with that token
    assert made.data and made.data[0].url
    assert [s["token"] for s in fake.submissions] == [CLIENT_TOKEN]
    # and a gateway key, whole or cut off, is refused here (none are issued), not passed on
    for bearer in ("gk-" + "x" * 32, "gk-abc"):
        with pytest.raises(openai.AuthenticationError) as refused:
            sdk(local, bearer).images.generate(model=MODEL, prompt="a fox")
        assert refused.value.code == "invalid_api_key"
    assert [s["token"] for s in fake.submissions] == [CLIENT_TOKEN]
    # and the owner commands say there is nothing to act on
    assert local.admin("keys", ok=False).returncode == 2


def test_mixed_mode_serves_gateway_keys_with_held_tokens_and_client_tokens_as_theirs(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given `make run` in mixed mode, one held ModelScope token and a key for alice
    local = start_local("mixed")
    local.pool("ms-pool-a")
    alice = local.key("alice-mixed")
    assert alice.startswith("gk-") and len(alice) >= 3 + 22

    # When alice generates with her key, and a stranger with their own token
    by_key = sdk(local, alice).images.generate(model=MODEL, prompt="by key")
    by_token = sdk(local, CLIENT_TOKEN).images.generate(model=MODEL, prompt="by token")

    # Then both get images: alice's made with the held token, the stranger's with theirs
    assert by_key.data and by_token.data
    assert [s["token"] for s in fake.submissions] == ["ms-pool-a", CLIENT_TOKEN]
    # and an unknown gateway key, or a cut-off one (a bad paste), is refused, not passed on,
    # for images and for chat alike
    chats = len(fake.chat_requests)
    for bearer in ("gk-" + "y" * 32, "gk-abc", alice[:12]):
        with pytest.raises(openai.AuthenticationError) as refused:
            sdk(local, bearer).images.generate(model=MODEL, prompt="a fox")
        assert refused.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            sdk(local, bearer).chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
    assert len(fake.submissions) == 2
    assert len(fake.chat_requests) == chats


def test_the_demo_placeholder_token_spends_none_of_the_owners_tokens(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given `make run` (the demo on) in mixed mode with a held ModelScope token, and in keys mode
    mixed, keys = start_local("mixed"), start_local("keys")
    mixed.pool("ms-pool-a")
    before = len(fake.submissions)

    # When a stranger sends the demo's placeholder `demo` as a token to a real provider
    passed_on = generate(mixed, "demo")
    refused = generate(keys, "demo")

    # Then in mixed mode it is passed on as the stranger's own token, which ModelScope refuses:
    # no held token was used
    assert passed_on.status_code == 401, passed_on.text
    assert [s["token"] for s in fake.submissions[before:]] == [None]
    # and in keys mode it is refused from its headers, nothing sent to the provider
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert len(fake.submissions) == before + 1


def test_keys_mode_serves_gateway_keys_only_and_a_wrong_key_changes_nothing(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given `make run` in keys mode with a held token and a key for bob
    local = start_local("keys")
    local.pool("ms-pool-a")
    bob = local.key("bob")

    # When bob uses chat completions and the Images API through the OpenAI SDK
    chat = sdk(local, bob).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a fox"}]
    )
    image = sdk(local, bob).images.generate(model=MODEL, prompt="a hare")

    # Then both make their image
    assert "![" in (chat.choices[0].message.content or "")
    assert image.data and image.data[0].url
    before = (local.counts(), len(fake.submissions))

    # When a client's own token, a wrong key and no key at all ask for an edit with an upload,
    # synchronously and as a job
    picture = make_png(8, 8)
    for bearer in (CLIENT_TOKEN, "gk-" + "z" * 32, bob[:-1] + ("A" if bob[-1] != "A" else "B")):
        for prefer in ({}, {"prefer": "respond-async"}):
            answer = httpx.post(
                f"{local.url}/v1/images/edits",
                files={"image": ("a.png", picture, "image/png")},
                data={"model": "Qwen/Qwen-Image-Edit", "prompt": "make it blue"},
                headers={"authorization": f"Bearer {bearer}", **prefer},
                timeout=30,
            )
            # Then each is a 401 invalid_api_key
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"]["code"] == "invalid_api_key"
            assert answer.headers["x-should-retry"] == "false"

    # and nothing was written to the bucket, no execution started, no provider call made
    assert (local.counts(), len(fake.submissions)) == before


def test_the_table_never_holds_a_key(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given keys issued and used
    local = start_local("keys")
    local.pool("ms-pool-a")
    keys = [local.key(f"scan-{i}", "--quota", "3") for i in range(3)]
    for key in keys:
        assert generate(local, key).status_code == 200

    # When the whole table is scanned
    items = local.aws("dynamodb").scan(TableName=local.env()["ACCESS_TABLE"])["Items"]
    text = json.dumps(items)

    # Then no key, nor any 12 characters of one, is in it
    assert items
    for key in keys:
        secret = key.removeprefix("gk-")
        assert not any(secret[i : i + 12] in text for i in range(len(secret) - 11))
    # and `make keys` lists the keys by name with a prefix of their hash and today's usage
    listing = local.admin("keys").stdout
    for i, key in enumerate(keys):
        line = next(row for row in listing.splitlines() if row.startswith(f"scan-{i} "))
        assert line.split()[2:4] == ["3", "1"]
        assert key not in listing


def test_quota_race_gives_exactly_the_quota(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a key with a daily quota of 5 images
    local = start_local("keys")
    local.pool("ms-pool-a")
    carol = local.key("carol", "--quota", "5")

    # When 50 one-image requests arrive at once (moto's DynamoDB serializes its writes as
    # DynamoDB does: `imagegw.frontends.local.serialize_dynamodb_writes`)
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: generate(local, carol, f"race {i}"), range(50)))

    # Then exactly 5 make an image and 45 are refused as over quota, not to be retried
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 45
    refused = [a for a in answers if a.status_code == 429]
    assert {a.json()["error"]["code"] for a in refused} == {"quota_exceeded"}
    assert {a.headers["x-should-retry"] for a in refused} == {"false"}
    assert "resets at" in refused[0].json()["error"]["message"]
    assert len(fake.submissions) == 5
    # and the key's usage says 5 images today, all of the model
    usage = httpx.get(
        f"{local.url}/v1/usage", headers={"authorization": f"Bearer {carol}"}, timeout=10
    ).json()
    assert usage["today"]["images"] == 5 and usage["today"]["by_model"] == {MODEL: 5}
    assert usage["month"]["images"] == 5 and usage["daily_quota"] == 5


def test_a_refused_generation_gives_its_quota_back(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a key with a quota of 1 and a provider that fails the task
    local = start_local("keys")
    local.pool("ms-pool-a")
    dave = local.key("dave", "--quota", "1")
    fake.fail_reason = "flagged"

    # When a generation fails, and then another one succeeds (the same request again within
    # two minutes would get the failure again: frontends/replays.py)
    assert generate(local, dave).status_code == 502
    fake.fail_reason = None
    made = generate(local, dave, "another fox")

    # Then the failed one did not count
    assert made.status_code == 200, made.text


def test_pool_fails_over_past_an_exhausted_token_until_its_reset(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given two held tokens, the first out of its daily quota
    local = start_local("keys")
    local.pool("ms-pool-b", "ms-pool-c")
    erin = local.key("erin")
    fake.token_answers["ms-pool-b"] = (429, {"errors": {"message": QUOTA_MESSAGE}}, {})

    # When erin generates three times
    made = [generate(local, erin, f"fail over {i}") for i in range(3)]

    # Then each makes its image
    assert [m.status_code for m in made] == [200, 200, 200], made[0].text
    # with the exhausted token tried once only: the next ones went to the second token at once
    used = [(s["body"]["prompt"], s["token"], s["status"]) for s in fake.submissions]
    assert [t for _, t, _ in used].count("ms-pool-b") <= 1
    accepted = [p for p, _, status in used if status == 200]
    # and nothing was submitted twice
    assert sorted(accepted) == [f"fail over {i}" for i in range(3)]
    # and the set-aside record (shared by instances) names its return at the provider's reset
    aside = local.aws("dynamodb").get_item(
        TableName=local.env()["ACCESS_TABLE"], Key={"pk": {"S": "aside#modelscope"}}
    )["Item"]
    (until,) = [int(v["N"]) for k, v in aside.items() if k.startswith("t:")]
    assert until > time.time() and until % 86400 == 16 * 3600  # 00:00 Beijing time


def test_every_token_set_aside_is_a_429_naming_the_earliest_return(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given one held token the provider refuses
    local = start_local("mixed")
    local.pool("ms-pool-d")
    frank = local.key("frank")
    fake.token_answers["ms-pool-d"] = (401, {"errors": {"message": "Authentication failed"}}, {})

    # When frank generates twice
    first, second = generate(local, frank), generate(local, frank)

    # Then both are 429s naming when a token comes back; the second never reached the provider
    for answer in (first, second):
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"]["code"] == "provider_tokens_exhausted"
        assert "comes back at" in answer.json()["error"]["message"]
    assert len(fake.submissions) == 1


def test_chat_pass_through_with_a_key_fails_over_and_counts_in_usage(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given two held tokens, the first out of its daily quota for chat too
    local = start_local("keys")
    local.pool("ms-pool-b", "ms-pool-c")
    ivy = local.key("ivy", "--quota", "1")
    fake.chat_token_answers["ms-pool-b"] = (429, {"errors": {"message": QUOTA_MESSAGE}}, {})
    client = sdk(local, ivy)
    messages: Any = [{"role": "user", "content": "hello"}]

    # When ivy asks a chat model, once as JSON and once streamed
    answer = client.chat.completions.create(model=CHAT_MODEL, messages=messages)
    streamed = client.chat.completions.create(model=CHAT_MODEL, messages=messages, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)

    # Then both are the provider's answers, made with the second token
    assert "fake ModelScope" in (answer.choices[0].message.content or "")
    assert "fake ModelScope" in text
    tokens = [sent["token"] for sent in fake.chat_requests]
    assert tokens.count("ms-pool-c") == 2 and tokens.count("ms-pool-b") <= 1
    # and they count in ivy's usage as chats, not on her image quota
    usage = httpx.get(
        f"{local.url}/v1/usage", headers={"authorization": f"Bearer {ivy}"}, timeout=10
    ).json()
    assert usage["today"]["chats"] == 2 and usage["today"]["chats_by_model"] == {CHAT_MODEL: 2}
    assert usage["month"]["chats"] == 2 and usage["today"]["images"] == 0
    assert generate(local, ivy).status_code == 200


def test_a_revoked_key_is_refused_within_the_cache_time(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a key in use
    local = start_local("keys")
    local.pool("ms-pool-a")
    gina = local.key("gina")
    assert generate(local, gina).status_code == 200

    # When the owner revokes it and KEY_CACHE_TTL (1 s here) passes
    local.admin("revoke", "gina")
    time.sleep(1.2)

    # Then it is refused
    refused = generate(local, gina)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_jobs_are_readable_only_by_the_key_that_made_them_and_hold_no_token(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given two keys
    local = start_local("keys")
    local.pool("ms-pool-a")
    hana, ivan = local.key("hana"), local.key("ivan")

    # When hana starts a job
    accepted = httpx.post(
        f"{local.url}/v1/images/generations",
        json={"model": MODEL, "prompt": "a job"},
        headers={"authorization": f"Bearer {hana}", "prefer": "respond-async"},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]

    # Then hana reads it to its end; ivan gets the 404 of an unknown job
    deadline = time.monotonic() + 30
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(location, headers={"authorization": f"Bearer {hana}"}, timeout=10).json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    other = httpx.get(location, headers={"authorization": f"Bearer {ivan}"}, timeout=10)
    assert other.status_code == 404
    # and the execution carries a reference to the held token, never the token nor the key
    sfn = local.aws("stepfunctions")
    arn = local.env()["JOB_STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:")
    execution = f"{arn}:{job['id']}"
    history = json.dumps(sfn.get_execution_history(executionArn=execution)["events"], default=str)
    described = json.dumps(sfn.describe_execution(executionArn=execution), default=str)
    for text in (history, described):
        assert "pool:modelscope:" in text
        assert "ms-pool-a" not in text and hana not in text


def test_a_chat_job_of_a_gateway_key_counts_on_its_quota_and_is_its_own(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a key with a quota of 1 and another key
    local = start_local("keys")
    local.pool("ms-pool-a")
    jill, kim = local.key("jill", "--quota", "1"), local.key("kim")

    def chat_job(key: str) -> httpx.Response:
        return httpx.post(
            f"{local.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "a fox --ar 16:9"}]},
            headers={"authorization": f"Bearer {key}", "prefer": "respond-async"},
            timeout=30,
        )

    # When jill starts a chat completion as a job
    accepted = chat_job(jill)
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]

    # Then it runs on the held token to its end, readable by jill only
    deadline = time.monotonic() + 30
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(location, headers={"authorization": f"Bearer {jill}"}, timeout=10).json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    other = httpx.get(location, headers={"authorization": f"Bearer {kim}"}, timeout=10)
    assert other.status_code == 404
    # and it counted: jill's next job is over the quota
    refused = chat_job(jill)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded"
    usage = httpx.get(
        f"{local.url}/v1/usage", headers={"authorization": f"Bearer {jill}"}, timeout=10
    ).json()
    assert usage["today"]["by_model"] == {MODEL: 1}
    assert len(fake.submissions) == 1


def start_job(local: Local, key: str, prompt: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{local.url}/v1/images/generations",
        json={"model": MODEL, "prompt": prompt},
        headers={"authorization": f"Bearer {key}", "prefer": "respond-async", **headers},
        timeout=30,
    )


def finished(local: Local, key: str, accepted: httpx.Response) -> dict[str, Any]:
    """The job a 202 started, read until it ends."""
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(
            accepted.headers["location"], headers={"authorization": f"Bearer {key}"}, timeout=10
        ).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job still running: {job}")


def usage(local: Local, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(
        f"{local.url}/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=10
    ).json()
    return answer


def test_a_job_fails_over_past_an_exhausted_token_and_polls_with_the_next(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given two held tokens, the first out of its daily quota, and a key
    local = start_local("mixed")
    fake.tokens |= {"ms-pool-e", "ms-pool-f"}
    local.pool("ms-pool-e", "ms-pool-f")
    lena = local.key("lena")
    fake.token_answers["ms-pool-e"] = (429, {"errors": {"message": QUOTA_MESSAGE}}, {})

    # When lena runs three jobs, one after the other (the pool is used in turn: one of the
    # first two starts on the exhausted token)
    jobs = [finished(local, lena, start_job(local, lena, f"job fail over {i}")) for i in range(3)]

    # Then all succeed
    assert [job["status"] for job in jobs] == ["succeeded"] * 3, jobs
    # the exhausted token was tried once: that job failed over to the second token, and the
    # jobs after it went to the second token at once
    used = [(s["body"]["prompt"], s["token"], s["status"]) for s in fake.submissions]
    assert [(t, status) for _, t, status in used].count(("ms-pool-e", 429)) == 1
    assert len(used) == 4
    refused_at = next(i for i, (_, t, _) in enumerate(used) if t == "ms-pool-e")
    assert refused_at < 2 and used[refused_at + 1][:2] == (used[refused_at][0], "ms-pool-f")
    # and each job was accepted once (nothing submitted twice)
    accepted = [(p, t) for p, t, status in used if status == 200]
    assert accepted == [(f"job fail over {i}", "ms-pool-f") for i in range(3)]
    # and the tasks were polled with the token that started them
    assert fake.poll_tokens and set(fake.poll_tokens) == {"ms-pool-f"}
    # and the token is set aside in the table (shared with other instances) until the reset
    aside = local.aws("dynamodb").get_item(
        TableName=local.env()["ACCESS_TABLE"], Key={"pk": {"S": "aside#modelscope"}}
    )["Item"]
    backs = [int(v["N"]) for k, v in aside.items() if k.startswith("t:")]
    assert any(until > time.time() and until % 86400 == 16 * 3600 for until in backs)
    # and the server's log names the tokens by reference only
    log = local.log.read_text(errors="replace")
    assert "provider token set aside" in log
    assert "ms-pool-e" not in log and "ms-pool-f" not in log


def test_a_job_that_fails_at_the_provider_counts_nothing_and_one_that_succeeds_counts(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a key with a quota of 2
    local = start_local("keys")
    fake.tokens |= {"ms-pool-g"}
    local.pool("ms-pool-g")
    mona = local.key("mona", "--quota", "2")

    # When a job fails at the provider
    fake.fail_reason = "flagged"
    failed = finished(local, mona, start_job(local, mona, "a job that fails"))

    # Then it failed, and today's usage is back at 0 (nothing made, nothing counted)
    assert failed["status"] == "failed" and failed["error"]["code"] == "generation_failed"
    assert usage(local, mona)["today"]["images"] == 0
    assert usage(local, mona)["month"]["images"] == 0

    # When a job succeeds
    fake.fail_reason = None
    made = finished(local, mona, start_job(local, mona, "a job that succeeds"))

    # Then it counts in today's usage and in the month's
    assert made["status"] == "succeeded", made
    counted = usage(local, mona)
    assert counted["today"]["by_model"] == {MODEL: 1}
    assert counted["month"]["by_model"] == {MODEL: 1}


def test_a_replayed_job_submission_counts_once(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a key with a quota of 1
    local = start_local("keys")
    fake.tokens |= {"ms-pool-h"}
    local.pool("ms-pool-h")
    nina = local.key("nina", "--quota", "1")

    # When a job is submitted with an Idempotency-Key, then replayed three times
    answers = [start_job(local, nina, "once", **{"idempotency-key": "nina-1"}) for _ in range(4)]

    # Then each answer is the 202 of the same job (no 429 for the replays)
    assert [a.status_code for a in answers] == [202] * 4, answers[-1].text
    assert len({a.json()["id"] for a in answers}) == 1
    job = finished(local, nina, answers[0])
    assert job["status"] == "succeeded", job
    # and the job was submitted to the provider once, and counted once
    assert [s["body"]["prompt"] for s in fake.submissions] == ["once"]
    assert usage(local, nina)["today"]["images"] == 1
    assert usage(local, nina)["month"]["images"] == 1
    # and a new job is over the quota: refused before its upload reaches the bucket
    before = local.counts()
    refused = httpx.post(
        f"{local.url}/v1/images/edits",
        files={"image": ("a.png", make_png(8, 8), "image/png")},
        data={"model": "Qwen/Qwen-Image-Edit", "prompt": "make it blue"},
        headers={"authorization": f"Bearer {nina}", "prefer": "respond-async"},
        timeout=30,
    )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    assert local.counts() == before


def test_a_job_whose_every_token_is_set_aside_fails_naming_the_return(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given one held token the provider refuses as revoked, and a key
    local = start_local("keys")
    fake.tokens |= {"ms-pool-i"}
    local.pool("ms-pool-i")
    olga = local.key("olga", "--quota", "3")
    fake.token_answers["ms-pool-i"] = (401, {"errors": {"message": "Authentication failed"}}, {})

    # When olga runs a job
    job = finished(local, olga, start_job(local, olga, "no token left"))

    # Then it fails as the pool's 429, naming when a token comes back
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "provider_tokens_exhausted"
    assert "comes back at" in job["error"]["message"]
    # after one submission; and nothing counts on the key
    assert len(fake.submissions) == 1
    assert usage(local, olga)["today"]["images"] == 0


def test_secrets_are_in_no_log_line_nor_listing(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given the servers used by the tests above, and one more refused token that echoes itself
    local = start_local("keys")
    local.pool("ms-pool-a")
    echo = local.key("echo")
    fake.token_answers["ms-pool-a"] = (403, {"errors": {"message": "token ms-pool-a banned"}}, {})
    refused = generate(local, echo)

    # Then neither the answer, nor `make tokens`, nor any server's log holds a token or a key
    assert refused.status_code == 429 and "ms-pool-a" not in refused.text
    listing = local.admin("tokens").stdout
    assert "ms..." in listing and "ms-pool-a" not in listing
    # and the listing says the refused token is set aside until the owner changes it
    assert "set aside until you change it" in listing
    for mode in ("open", "mixed", "keys"):
        log = start_local(mode).log.read_text(errors="replace")
        for secret in (*(f"ms-pool-{c}" for c in "abcdefghi"), echo):
            assert secret not in log, mode


OTHER_MODEL = "Tongyi-MAI/Z-Image-Turbo"


def test_one_keys_per_model_quota_refusal_leaves_other_keys_and_models_working(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given one held token shared by two keys, out of its per-model quota for one model only
    local = start_local("keys")
    local.pool("ms-pool-t")
    olga, piet = local.key("olga-models"), local.key("piet-models")
    fake.model_answers[("ms-pool-t", MODEL)] = model_quota_answer(MODEL)

    # When olga asks for that model, then piet for another, then olga for the other too
    refused = generate(local, olga, "olga's", MODEL)
    piets = generate(local, piet, "piet's", OTHER_MODEL)
    olgas = generate(local, olga, "olga's other", OTHER_MODEL)

    # Then olga's first is a 429 naming the model; the token still serves every other model
    assert refused.status_code == 429, refused.text
    assert piets.status_code == 200, piets.text
    assert olgas.status_code == 200, olgas.text
    # and piet asking for the spent model is refused at once, without a call to the provider
    again = generate(local, piet, "piet's spent", MODEL)
    assert again.status_code == 429
    assert again.json()["error"]["code"] == "provider_tokens_exhausted"
    assert MODEL in again.json()["error"]["message"]
    prompts = [s["body"]["prompt"] for s in fake.submissions]
    assert prompts == ["olga's", "piet's", "olga's other"]
    # and the set-aside record is for the token and that model, until the provider's reset
    aside = local.aws("dynamodb").get_item(
        TableName=local.env()["ACCESS_TABLE"], Key={"pk": {"S": "aside#modelscope"}}
    )["Item"]
    name = f"t:{token_id('ms-pool-t')}"
    mine = {k: int(v["N"]) for k, v in aside.items() if k.startswith(name)}
    assert list(mine) == [f"{name}@{MODEL}"]  # the token itself is not set aside
    assert all(until % 86400 == 16 * 3600 for until in mine.values())


def test_a_403_for_one_model_does_not_remove_the_token(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given one held token that may not use one model
    local = start_local("keys")
    local.pool("ms-pool-u")
    quinn = local.key("quinn-models")
    fake.model_answers[("ms-pool-u", MODEL)] = model_forbidden_answer(MODEL)

    # When quinn asks for that model, then another
    refused = generate(local, quinn, "forbidden", MODEL)
    made = generate(local, quinn, "allowed", OTHER_MODEL)

    # Then the first is refused, and the token still makes the other model's image
    assert refused.status_code in (403, 429), refused.text
    assert made.status_code == 200, made.text


def keys_by_half(local: Local, name: str) -> tuple[str, str]:
    """Two new keys whose halves of a two-token pool differ (a key's half is given by its
    hash): the one spending the first token, then the one spending the second."""
    table = local.aws("dynamodb")
    halves: dict[int, str] = {}
    for start in range(0, 40, 4):  # four keys at a time (one process, one scan)
        names = [f"{name}-{i}" for i in range(start, start + 4)]
        printed = local.admin_each(*[("key", n) for n in names]).splitlines()
        keys = dict(zip(names, printed[1::2], strict=True))  # each: a heading, then the key
        assert all(key.startswith("gk-") for key in keys.values()), printed
        hashes = {
            item["name"]["S"]: item["pk"]["S"][4:]
            for item in table.scan(TableName=local.env()["ACCESS_TABLE"])["Items"]
            if item.get("name", {}).get("S") in keys
        }
        for n in names:
            halves.setdefault(int(hashes[n][:8], 16) % 2, keys[n])
        if len(halves) == 2:
            return halves[0], halves[1]
    raise AssertionError("no two keys with different halves in 40")


def test_one_key_cannot_spend_the_whole_pool(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a pool of two tokens, each key spending half of it (the default share), and two
    # keys whose halves differ (a key's half is given by its hash)
    local = start_local("keys", "0.5")
    local.pool("ms-pool-v", "ms-pool-a")
    # the first key's token (position 0) is the one the provider will refuse for its quota
    greedy, other = keys_by_half(local, "share")
    fake.token_answers["ms-pool-v"] = (
        429,
        {"errors": {"message": "Your daily quota of API calls is exhausted."}},
        {},
    )

    # When the greedy key spends its token's daily quota and asks again
    spent = [generate(local, greedy, f"greedy {i}") for i in range(2)]

    # Then it is refused without moving on to the other key's token
    assert [a.status_code for a in spent] == [429, 429], spent[0].text
    assert all(s["token"] == "ms-pool-v" for s in fake.submissions)
    assert len(fake.submissions) == 1
    # and the other key still generates, with the token left to it
    made = generate(local, other, "other")
    assert made.status_code == 200, made.text
    assert fake.submissions[-1]["token"] == "ms-pool-a"


def test_one_keys_job_cannot_fail_over_to_a_token_outside_its_share(
    start_local: Callable[..., Local], fake: FakeModelScope
) -> None:
    # Given a pool of two tokens, each key spending half of it, and two keys with different
    # halves; the provider refuses the first key's token for its spent daily quota (the
    # gateway learns it only when the job submits)
    local = start_local("keys", "0.5")
    fake.tokens |= {"ms-pool-w", "ms-pool-x"}
    local.pool("ms-pool-w", "ms-pool-x")
    greedy, other = keys_by_half(local, "job-share")
    fake.token_answers["ms-pool-w"] = (
        429,
        {"errors": {"message": "Your daily quota of API calls is exhausted."}},
        {},
    )

    # When the first key runs a job (accepted on its token, not yet known to be spent)
    job = finished(local, greedy, start_job(local, greedy, "greedy job"))

    # Then it fails as the pool's 429 naming the return of the key's own token, and the
    # other key's token was never spent on it
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "provider_tokens_exhausted"
    assert [s["token"] for s in fake.submissions] == ["ms-pool-w"]
    assert usage(local, greedy)["today"]["images"] == 0
    # and the other key still generates, with the token left to it
    made = finished(local, other, start_job(local, other, "other job"))
    assert made["status"] == "succeeded", made
    assert fake.submissions[-1]["token"] == "ms-pool-x"
